/**
 * Question: how long past its limit does a stream run? Issue 2 promises that each
 * violation ends the stream with its code within the limit plus 250 ms, enforced from
 * outside the plugin's thread. Measured from the consumer: for each limit and sandbox,
 * RUNS streams of bench/fixtures/plugins/limits.ts break the limit and the overshoot is
 * the time the consumer saw the error minus when the limit was due:
 * - wallMs: from the stream's `running` status event, where its clock starts
 *   (protocol/limits.ts: bundling and loading do not count against wallMs);
 * - idleMs: from the last chunk the consumer got, or `running` when none arrived;
 * - cpuMs (a busy loop; a getter spinning while its chunk is read): from the first chunk,
 *   when the spinning starts, or `running` when none arrived (a conservative origin:
 *   CPU time ≤ wall time).
 * Until session 4 wallMs was measured from `host.stream()`, so the first stream's cold
 * start (bundle, describe, load: ~200-320 ms here) counted as overshoot; it is reported
 * on its own now, `limit_start_ms_max`: `host.stream()` to `running`, worst case.
 * memoryMb has no start time to measure from, and the hard stop of a `finally` that
 * spins after a cancel is invisible to the consumer (its stream ends at `cancel()`);
 * both are left to the conformance tests.
 * Reported: `limit_overshoot_ms_max` (worst case over everything, target < 250) and per
 * case `limit_<case>_<sandbox>_ms` (the median).
 */
import { fileURLToPath } from 'node:url';
import { Sluice } from '../host/host.js';
import { isSluiceError, type ErrorCode } from '../protocol/errors.js';
import type { Limits } from '../protocol/limits.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import { median, round3 } from './harness.js';

const PLUGIN = fileURLToPath(new URL('../../bench/fixtures/plugins/limits.ts', import.meta.url));
const RUNS = 5;
const LIMIT_MS = 300;

export const targets = { limit_overshoot_ms_max: '< 250' };

interface Case {
  name: string;
  action: string;
  limits: Partial<Limits>;
  code: ErrorCode;
  /** When the limit fell due, from the run's timestamps (`running`: the status event). */
  due: (t: { running: number; first: number; last: number }) => number;
}

const CASES: Case[] = [
  { name: 'wall', action: 'steady', limits: { wallMs: LIMIT_MS }, code: 'ERR_LIMIT_WALL', due: (t) => t.running + LIMIT_MS },
  { name: 'idle', action: 'idle', limits: { idleMs: LIMIT_MS }, code: 'ERR_LIMIT_IDLE', due: (t) => (Number.isNaN(t.last) ? t.running : t.last) + LIMIT_MS },
  { name: 'cpu', action: 'spin', limits: { cpuMs: LIMIT_MS }, code: 'ERR_LIMIT_CPU', due: (t) => (Number.isNaN(t.first) ? t.running : t.first) + LIMIT_MS },
  { name: 'cpu_getter', action: 'getter', limits: { cpuMs: LIMIT_MS }, code: 'ERR_LIMIT_CPU', due: (t) => (Number.isNaN(t.first) ? t.running : t.first) + LIMIT_MS },
];

/** Overshoot past the limit, and `host.stream()` to `running`. */
async function once(host: Sluice, sandbox: SandboxKind, c: Case): Promise<{ overshoot: number; start: number }> {
  const start = performance.now();
  const t = { running: NaN, first: NaN, last: NaN };
  const stream = host.stream(PLUGIN, c.action, {}, { sandbox, limits: c.limits });
  stream.on('status', (status: string) => {
    if (status === 'running') t.running = performance.now();
  });
  let error: unknown;
  try {
    for await (const _ of stream) {
      const now = performance.now();
      if (Number.isNaN(t.first)) t.first = now;
      t.last = now;
    }
  } catch (err) {
    error = err;
  }
  const end = performance.now();
  const result = await stream.result;
  const code = isSluiceError(error) ? error.code : result.error?.code;
  if (code !== c.code) throw new Error(`${c.name} (${sandbox}): expected ${c.code}, got ${code ?? `status ${result.status}`}`);
  if (Number.isNaN(t.running)) throw new Error(`${c.name} (${sandbox}): no running status event`);
  return { overshoot: end - c.due(t), start: t.running - start };
}

export async function benchLimits(log: (line: string) => void = console.log): Promise<Record<string, number>> {
  const host = await Sluice.open({ logger: false, workers: { maxThreads: 2, minThreads: 1 }, isolates: { processes: 1 } });
  const figures: Record<string, number> = {};
  let worst = -Infinity;
  let slowestStart = 0;
  try {
    log(`limits: ${LIMIT_MS} ms limits, ${RUNS} runs per case`);
    for (const sandbox of ['worker', 'isolate'] as const) {
      for (const c of CASES) {
        const overshoot: number[] = [];
        const starts: number[] = [];
        for (let i = 0; i < RUNS; i++) {
          const r = await once(host, sandbox, c);
          overshoot.push(r.overshoot);
          starts.push(r.start);
        }
        const max = Math.max(...overshoot);
        worst = Math.max(worst, max);
        slowestStart = Math.max(slowestStart, ...starts);
        figures[`limit_${c.name}_${sandbox}_ms`] = round3(median(overshoot));
        log(`${sandbox} ${c.name}: overshoot median ${median(overshoot).toFixed(1)} ms, max ${max.toFixed(1)} ms; host.stream() to running: max ${Math.max(...starts).toFixed(1)} ms`);
      }
    }
    figures.limit_overshoot_ms_max = round3(worst);
    figures.limit_start_ms_max = round3(slowestStart);
    return figures;
  } finally {
    await host.close();
  }
}
