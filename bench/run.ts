/**
 * `npm run bench`: runs the benchmark questions (one `bench/<question>.ts` each), merges
 * their named figures into bench/results.json and prints a table of figure, value,
 * target and whether it holds.
 *
 * A question module that is not in the build yet is skipped with a note; one that
 * throws or overruns its time budget is reported as failed and the others still run.
 * `--only core,store` runs a subset and merges it into the existing results.json (the
 * other modules' figures stay, with their own timestamps under `modules`); a full run
 * replaces the file. The process exits 1 when a module failed (and, with `--strict`,
 * when a target is missed or its figure is missing), so CI can gate on it.
 *
 * Usage: npm run bench -- [--only core,store] [--timeout 300] [--strict] [--no-write]
 */
import { readFile, writeFile } from 'node:fs/promises';
import { cpus, loadavg, totalmem } from 'node:os';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

type Figures = Record<string, number>;

interface Question {
  name: string;
  /** Compiled module, relative to this file. */
  file: string;
  /** The exported function that runs the question and resolves to its figures. */
  fn: string;
  /** Targets for this module's figures; a module may add its own with `export const targets`. */
  targets: Record<string, string>;
}

const QUESTIONS: readonly Question[] = [
  {
    name: 'core',
    file: './core.js',
    fn: 'benchCore',
    targets: { worker_vs_raw: '>= 0.8', isolate_vs_raw_pipe: '>= 0.6', credit_window_vs_unbounded: '>= 0.95', first_chunk_p50_ms: '< 1' },
  },
  { name: 'store', file: './store.js', fn: 'benchStore', targets: {} },
  { name: 'operators', file: './operators.js', fn: 'benchOperators', targets: { operator_overhead: '<= 1.3' } },
  { name: 'ws', file: './ws.js', fn: 'benchWs', targets: {} },
  { name: 'durable', file: './durable.js', fn: 'benchDurable', targets: { checkpoint_vs_none: '>= 0.95', log_vs_none: '>= 0.5' } },
  { name: 'pipeline', file: './pipeline.js', fn: 'benchPipeline', targets: {} },
  { name: 'limits', file: './limits.js', fn: 'benchLimits', targets: {} },
];

const DEFAULT_TIMEOUT_S = 300;
const RESULTS_PATH = fileURLToPath(new URL('../../bench/results.json', import.meta.url));
const TARGET_PATTERN = /^(>=|<=|>|<)\s*(-?\d+(?:\.\d+)?)$/;

interface ModuleReport {
  status: 'ok' | 'failed' | 'skipped';
  generatedAt: string;
  durationMs: number;
  /** Names of the figures this module reported in that run. */
  figures: string[];
  error?: string;
}

interface Results {
  generatedAt: string;
  node: string;
  machine: { cpus: number; model: string; memory: number; loadavg: number[] };
  figures: Figures;
  targets: Record<string, string>;
  pass: Record<string, boolean>;
  /** Figures with a target that no module reported, and why. */
  missing: Record<string, string>;
  modules: Record<string, ModuleReport>;
}

function parseCli(): { only: Set<string> | undefined; timeoutMs: number; strict: boolean; write: boolean } {
  const { values } = parseArgs({
    options: {
      only: { type: 'string' },
      timeout: { type: 'string', default: String(DEFAULT_TIMEOUT_S) },
      strict: { type: 'boolean', default: false },
      'no-write': { type: 'boolean', default: false },
    },
    strict: true,
  });
  let only: Set<string> | undefined;
  if (values.only !== undefined) {
    only = new Set(values.only.split(',').map((s) => s.trim()).filter((s) => s !== ''));
    const unknown = [...only].filter((n) => !QUESTIONS.some((q) => q.name === n));
    if (unknown.length > 0) throw new Error(`Expected \`--only\` to name modules among ${QUESTIONS.map((q) => q.name).join(', ')}, got \`${unknown.join(',')}\``);
  }
  const timeout = Number(values.timeout);
  if (!Number.isFinite(timeout) || timeout <= 0) throw new Error(`Expected \`--timeout\` to be a positive number of seconds, got \`${values.timeout}\``);
  return { only, timeoutMs: timeout * 1000, strict: values.strict === true, write: values['no-write'] !== true };
}

/** A module missing from the build is ERR_MODULE_NOT_FOUND for that very file; anything else is a failure. */
function isMissing(err: unknown, url: string): boolean {
  const e = err as { code?: unknown; url?: unknown; message?: unknown };
  return e?.code === 'ERR_MODULE_NOT_FOUND' && (e.url === url || (typeof e.message === 'string' && e.message.includes(fileURLToPath(url))));
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function checkFigures(figures: unknown, module: string): Figures {
  if (figures === null || typeof figures !== 'object') throw new Error(`${module} resolved to ${String(figures)}, not an object of figures`);
  const out: Figures = {};
  for (const [name, value] of Object.entries(figures)) {
    if (typeof value !== 'number' || !Number.isFinite(value)) throw new Error(`${module} reported figure ${name} = ${String(value)}, not a finite number`);
    out[name] = value;
  }
  return out;
}

async function runQuestion(q: Question, timeoutMs: number, targets: Record<string, string>): Promise<{ report: ModuleReport; figures: Figures }> {
  const started = performance.now();
  const report = (status: ModuleReport['status'], figures: Figures, error?: string): { report: ModuleReport; figures: Figures } => ({
    report: { status, generatedAt: new Date().toISOString(), durationMs: Math.round(performance.now() - started), figures: Object.keys(figures), ...(error === undefined ? {} : { error }) },
    figures,
  });
  const url = new URL(q.file, import.meta.url).href;
  let mod: Record<string, unknown>;
  try {
    mod = (await import(url)) as Record<string, unknown>;
  } catch (err) {
    if (isMissing(err, url)) {
      console.log(`-- ${q.name}: skipped, bench/${q.name}.ts is not in this build yet`);
      return report('skipped', {}, 'module not present');
    }
    console.log(`-- ${q.name}: FAILED to load: ${describe(err)}`);
    return report('failed', {}, `load: ${describe(err)}`);
  }
  const fn = mod[q.fn];
  if (typeof fn !== 'function') {
    console.log(`-- ${q.name}: FAILED, it exports no ${q.fn}()`);
    return report('failed', {}, `no export ${q.fn}`);
  }
  if (mod.targets !== null && typeof mod.targets === 'object') {
    for (const [name, target] of Object.entries(mod.targets as Record<string, unknown>)) if (typeof target === 'string') targets[name] = target;
  }
  console.log(`-- ${q.name}: running ${q.fn}()`);
  try {
    const figures = checkFigures(await withTimeout(Promise.resolve((fn as () => unknown)()), timeoutMs, `${q.fn}()`), q.name);
    const result = report('ok', figures);
    console.log(`-- ${q.name}: ${result.report.figures.length} figures in ${(result.report.durationMs / 1000).toFixed(1)} s`);
    return result;
  } catch (err) {
    console.log(`-- ${q.name}: FAILED: ${describe(err)}`);
    return report('failed', {}, describe(err));
  }
}

function describe(err: unknown): string {
  if (err instanceof Error) return `${(err as { code?: string }).code ?? err.name}: ${err.message}`;
  return String(err);
}

function meets(value: number, target: string): boolean {
  const m = TARGET_PATTERN.exec(target.trim());
  if (m === null) throw new Error(`Target \`${target}\` is not of the form '>= 0.8'`);
  const bound = Number(m[2]);
  switch (m[1]) {
    case '>=':
      return value >= bound;
    case '<=':
      return value <= bound;
    case '>':
      return value > bound;
    default:
      return value < bound;
  }
}

async function readPrevious(): Promise<Results | undefined> {
  try {
    return JSON.parse(await readFile(RESULTS_PATH, 'utf8')) as Results;
  } catch (err) {
    if ((err as { code?: string }).code === 'ENOENT') return undefined;
    console.log(`(previous ${RESULTS_PATH} unreadable, starting afresh: ${describe(err)})`);
    return undefined;
  }
}

function formatValue(v: number | undefined): string {
  if (v === undefined) return 'missing';
  if (Number.isInteger(v)) return String(v);
  return String(Math.round(v * 1000) / 1000);
}

function printTable(results: Results): void {
  const rows = Object.keys(results.figures)
    .concat(Object.keys(results.missing))
    .map((name) => {
      const target = results.targets[name];
      const pass = results.pass[name];
      const module = Object.entries(results.modules).find(([, m]) => m.figures.includes(name))?.[0] ?? '';
      return [name, formatValue(results.figures[name]), target ?? '', pass === undefined ? '' : pass ? 'ok' : 'MISS', module];
    });
  const header = ['figure', 'value', 'target', 'ok', 'module'];
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]): string => cells.map((c, i) => (i === 1 ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join('  ').trimEnd();
  console.log(`\n${line(header)}\n${widths.map((w) => '-'.repeat(w)).join('  ')}`);
  for (const r of rows) console.log(line(r));
}

async function main(): Promise<number> {
  const { only, timeoutMs, strict, write } = parseCli();
  const selected = QUESTIONS.filter((q) => only === undefined || only.has(q.name));
  const previous = only === undefined ? undefined : await readPrevious();
  const results: Results = {
    generatedAt: new Date().toISOString(),
    node: process.version,
    machine: { cpus: cpus().length, model: cpus()[0]?.model ?? 'unknown', memory: totalmem(), loadavg: loadavg().map((l) => Math.round(l * 100) / 100) },
    figures: {},
    targets: {},
    pass: {},
    missing: {},
    modules: { ...previous?.modules },
  };
  // Keep the figures of modules not run this time (a partial run), drop those of modules that are.
  for (const [name, m] of Object.entries(previous?.modules ?? {})) {
    if (selected.some((q) => q.name === name)) continue;
    for (const f of m.figures) if (previous?.figures[f] !== undefined) results.figures[f] = previous.figures[f];
  }
  console.log(`sluice bench: ${selected.map((q) => q.name).join(', ')} on node ${process.version}, ${results.machine.cpus} cpus, load ${results.machine.loadavg.join(' ')}`);

  const targets: Record<string, string> = { ...previous?.targets };
  for (const q of QUESTIONS) Object.assign(targets, q.targets);
  let failed = false;
  for (const q of selected) {
    const { report, figures } = await runQuestion(q, timeoutMs, targets);
    results.modules[q.name] = report;
    if (report.status === 'failed') failed = true;
    Object.assign(results.figures, figures);
  }

  // A target whose module ran (now or in a kept partial run) but did not report its figure is missing, not passed.
  const owners = new Map<string, string>();
  for (const q of QUESTIONS) for (const f of Object.keys(q.targets)) owners.set(f, q.name);
  for (const [name, target] of Object.entries(targets)) {
    const value = results.figures[name];
    const owner = owners.get(name) ?? [...Object.entries(results.modules)].find(([, m]) => m.figures.includes(name))?.[0];
    const ran = owner !== undefined && results.modules[owner] !== undefined && results.modules[owner].status !== 'skipped';
    if (value === undefined && !ran) continue;
    results.targets[name] = target;
    if (value === undefined) {
      const m = owner === undefined ? undefined : results.modules[owner];
      results.missing[name] = m?.status === 'failed' ? `${owner} failed: ${m.error ?? ''}` : `${owner ?? 'its module'} did not report it (see its output)`;
      results.pass[name] = false;
    } else {
      results.pass[name] = meets(value, target);
    }
  }

  printTable(results);
  const missed = Object.entries(results.pass).filter(([, ok]) => !ok).map(([n]) => n);
  console.log(missed.length === 0 ? '\nall targets met' : `\ntargets missed or missing: ${missed.join(', ')}`);
  for (const [name, m] of Object.entries(results.modules)) if (m.status !== 'ok') console.log(`${name}: ${m.status} (${m.error ?? ''})`);
  if (write) {
    await writeFile(RESULTS_PATH, `${JSON.stringify(results, null, 2)}\n`);
    console.log(`wrote ${RESULTS_PATH}`);
  }
  return failed || (strict && missed.length > 0) ? 1 : 0;
}

main().then(
  // Exit explicitly: a module that timed out may still hold handles (threads, children, sockets).
  (code) => process.exit(code),
  (err: unknown) => {
    console.error(describe(err));
    process.exit(2);
  },
);
