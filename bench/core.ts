/**
 * Question: what does the host's data path cost over the bare transport it rides on?
 *
 * Every figure is a ratio against a raw baseline measured in the same run, because the
 * machine is shared and absolute rates swing by 2x with its load. Throughput runs are
 * explicit end-to-end races: ROUNDS rounds, each running every contender once in a
 * rotating order, the ratio taken per round and the median reported.
 *
 * - `worker_vs_raw`: CHUNKS fresh 1 KiB Uint8Array chunks from the fixture plugin
 *   (bench/fixtures/plugins/chunks.ts, `bytes`) through `host.stream(..., { sandbox:
 *   'worker' })`, read with `for await`, vs a bare Piscina task
 *   (bench/fixtures/raw-worker.ts) producing the same chunks and posting them in
 *   batches of RAW_BATCH over a MessagePort to a `message` handler on the main thread:
 *   no credits, no validation or copy, no `{ seq, data }`, no async iteration.
 * - `worker_vs_raw_same_plugin` (no target, beside it): the same, against the bare task
 *   running the plugin's own `bytes` generator with `for await` instead of a plain loop.
 *   The plugin's code is then the same on both sides, so this is what sluice itself
 *   costs; `worker_vs_raw` also charges it for the async generator the contract asks for.
 * - `isolate_vs_raw_pipe`: the same stream with `{ sandbox: 'isolate' }` vs the faster
 *   of two bare cross-process pipes from a forked child (bench/fixtures/raw-child.ts):
 *   `serialization: 'advanced'` IPC (what the isolate sandbox's processes use) and
 *   length-prefixed frames on stdout. Which one won is printed and reported as
 *   `raw_pipe_is_stdout` (1) or not (0).
 * - `credit_window_vs_unbounded`: the worker stream with a 256-chunk window (the issue's; the default is 1024 chunks / 1 MiB since session 5, `credit_window_default_vs_unbounded`)
 *   vs a window so large it never binds (MAX_WINDOW_CHUNKS / MAX_WINDOW_BYTES).
 * - `first_chunk_*_ms`: tinybench, 200 iterations from a warm pool (plugin bundled and
 *   loaded on every thread, threads started): the time from `host.stream()` to the
 *   first chunk reaching the consumer, as `overriddenDuration`; the rest of the stream
 *   (its end, the thread going free) is outside the sample.
 * - `worker_rss_growth_mb` / `unbounded_rss_growth_mb`: the host's peak RSS during a
 *   windowed / unbounded worker run over its RSS at the run's start (after a forced GC),
 *   sampled every 25 ms, the largest over the rounds. Every contender run starts after a
 *   forced GC, so nobody pays for the previous run's garbage.
 *
 * Run through the runner (`npm run bench -- --only core`) or `await benchCore()`.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';
import { MessageChannel } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { Bench, type Task } from 'tinybench';
import { bundleForWorker } from '../host/bundle.js';
import { Sluice } from '../host/host.js';
import { DEFAULT_WINDOW, MAX_WINDOW_BYTES, MAX_WINDOW_CHUNKS, type Window } from '../protocol/credit.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import { MAX_BATCH_BYTES, MAX_BATCH_CHUNKS } from '../sandbox/driver.js';
import type { RawStreamTask } from './fixtures/raw-worker.js';
import { type Contender, median, medianRatio, perS, race, ratios, round3 } from './harness.js';

const CHUNK_BYTES = 1024;
const CHUNKS = 200_000;
/** The isolate path is ~5x slower; fewer chunks keep a round near a second. */
const ISOLATE_CHUNKS = 50_000;
/**
 * Single rounds here swing from 0.65 to 1.05 of their baseline, in two clusters (one
 * round's contenders meet the VM's other load or not); with 7 rounds the median of one
 * run moved by 0.1-0.15 between runs. 15 rounds cost ~20 s more.
 */
const ROUNDS = 15;
const FIRST_CHUNK_RUNS = 200;
const FIRST_CHUNK_WARMUP = 20;
const RSS_SAMPLE_MS = 25;
/** The batch the driver sends when credit does not bind: its chunk or byte cap, whichever comes first. */
const RAW_BATCH = Math.min(MAX_BATCH_CHUNKS, Math.floor(MAX_BATCH_BYTES / CHUNK_BYTES));
/** The issue's `credit_window_vs_unbounded` is "window 256 vs no flow control"; the default is larger (DEFAULT_WINDOW). */
const WINDOW_256: Window = { ...DEFAULT_WINDOW, chunks: 256 };
const WINDOWED: Window = DEFAULT_WINDOW;
const UNBOUNDED: Window = { chunks: MAX_WINDOW_CHUNKS, bytes: MAX_WINDOW_BYTES };
const ISOLATE_PROBE_TIMEOUT_MS = 30_000;
const MB = 1024 * 1024;

const PLUGIN = fileURLToPath(new URL('../../bench/fixtures/plugins/chunks.ts', import.meta.url));
const RAW_WORKER = fileURLToPath(new URL('./fixtures/raw-worker.js', import.meta.url));
const RAW_CHILD = fileURLToPath(new URL('./fixtures/raw-child.js', import.meta.url));

/** The consumer's check that it got the chunks the producer made: count, order, payload. */
class Tally {
  n = 0;
  add(data: unknown): void {
    const b = data as Uint8Array;
    if (b.byteLength !== CHUNK_BYTES || b[0] !== (this.n & 0xff)) throw new Error(`chunk ${this.n}: unexpected payload`);
    this.n++;
  }
  expect(count: number, who: string): void {
    if (this.n !== count) throw new Error(`${who}: got ${this.n} chunks, expected ${count}`);
  }
}

/**
 * RSS growth of the host during a run: peak RSS sampled every RSS_SAMPLE_MS over the RSS
 * at the run's start (just after a forced GC), the largest over all runs measured.
 * Garbage not yet collected counts: it is memory the host holds.
 */
class RssGrowth {
  #timer: NodeJS.Timeout | undefined;
  #base = 0;
  #peak = 0;
  growth = 0;
  start(): void {
    this.#base = this.#peak = process.memoryUsage.rss();
    this.#timer = setInterval(() => {
      this.#peak = Math.max(this.#peak, process.memoryUsage.rss());
    }, RSS_SAMPLE_MS);
  }
  stop(): void {
    clearInterval(this.#timer);
    this.#peak = Math.max(this.#peak, process.memoryUsage.rss());
    this.growth = Math.max(this.growth, this.#peak - this.#base);
  }
}

async function hostRun(host: Sluice, sandbox: SandboxKind, count: number, window: Window, rss?: RssGrowth): Promise<number> {
  const tally = new Tally();
  rss?.start();
  const start = performance.now();
  try {
    for await (const c of host.stream(PLUGIN, 'bytes', { count, size: CHUNK_BYTES }, { sandbox, window })) {
      if (c.seq !== tally.n) throw new Error(`seq ${c.seq}, expected ${tally.n}`);
      tally.add(c.data);
    }
  } finally {
    rss?.stop();
  }
  const ms = performance.now() - start;
  tally.expect(count, `${sandbox} stream`);
  return ms;
}

async function rawWorkerRun(pool: Piscina, count: number, modulePath?: string): Promise<number> {
  const { port1, port2 } = new MessageChannel();
  const tally = new Tally();
  const start = performance.now();
  const done = new Promise<void>((resolve, reject) => {
    port1.on('message', (batch: Uint8Array[] | null) => {
      if (batch === null) return resolve();
      try {
        for (const chunk of batch) tally.add(chunk);
      } catch (err) {
        reject(err as Error);
      }
    });
  });
  const task: RawStreamTask = { port: port2, count, size: CHUNK_BYTES, batch: RAW_BATCH, ...(modulePath === undefined ? {} : { modulePath }) };
  await Promise.all([pool.run(task, { transferList: [port2] }), done]);
  const ms = performance.now() - start;
  port1.close();
  tally.expect(count, 'raw worker');
  return ms;
}

/** A forked child streaming batches over `serialization: 'advanced'` IPC, one run per request. */
class RawIpcChild {
  readonly #child: ChildProcess;
  private constructor(child: ChildProcess) {
    this.#child = child;
  }
  static async start(count: number): Promise<RawIpcChild> {
    const child = fork(RAW_CHILD, ['ipc', String(count), String(CHUNK_BYTES), String(RAW_BATCH)], { serialization: 'advanced', stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: [] });
    const [first] = (await once(child, 'message')) as [unknown];
    if (first !== 'ready') throw new Error(`raw ipc child said ${String(first)}`);
    return new RawIpcChild(child);
  }
  async run(count: number): Promise<number> {
    const tally = new Tally();
    const start = performance.now();
    await new Promise<void>((resolve, reject) => {
      const onMessage = (batch: Uint8Array[] | null): void => {
        if (batch === null) {
          this.#child.off('message', onMessage);
          resolve();
          return;
        }
        try {
          for (const chunk of batch) tally.add(chunk);
        } catch (err) {
          this.#child.off('message', onMessage);
          reject(err as Error);
        }
      };
      this.#child.on('message', onMessage);
      this.#child.send({ run: true });
    });
    const ms = performance.now() - start;
    tally.expect(count, 'raw ipc child');
    return ms;
  }
  async close(): Promise<void> {
    const exited = once(this.#child, 'exit');
    this.#child.send({ exit: true });
    await exited;
  }
}

/** A forked child writing length-prefixed batch frames to stdout, one run per line on stdin. */
class RawStdoutChild {
  readonly #child: ChildProcess;
  #buffered: Buffer[] = [];
  #bufferedBytes = 0;
  #onFrame: ((frame: Buffer) => void) | undefined;
  private constructor(child: ChildProcess) {
    this.#child = child;
    child.stdout!.on('data', (data: Buffer) => this.#onData(data));
  }
  static start(count: number): RawStdoutChild {
    return new RawStdoutChild(fork(RAW_CHILD, ['stdout', String(count), String(CHUNK_BYTES), String(RAW_BATCH)], { stdio: ['pipe', 'pipe', 'inherit', 'ipc'], execArgv: [] }));
  }
  /** Reassemble frames: u32 chunk count, then per chunk u32 length and its bytes. */
  #onData(data: Buffer): void {
    this.#buffered.push(data);
    this.#bufferedBytes += data.length;
    for (;;) {
      if (this.#bufferedBytes < 4) return;
      if (this.#buffered.length > 1) this.#buffered = [Buffer.concat(this.#buffered, this.#bufferedBytes)];
      const buf = this.#buffered[0]!;
      const n = buf.readUInt32LE(0);
      let off = 4;
      for (let k = 0; k < n; k++) {
        if (off + 4 > buf.length) return;
        off += 4 + buf.readUInt32LE(off);
        if (off > buf.length) return;
      }
      this.#onFrame?.(buf.subarray(0, off));
      const rest = buf.subarray(off);
      this.#buffered = rest.length > 0 ? [rest] : [];
      this.#bufferedBytes = rest.length;
    }
  }
  async run(count: number): Promise<number> {
    const tally = new Tally();
    const start = performance.now();
    await new Promise<void>((resolve, reject) => {
      this.#onFrame = (frame) => {
        const n = frame.readUInt32LE(0);
        if (n === 0) {
          this.#onFrame = undefined;
          resolve();
          return;
        }
        try {
          let off = 4;
          for (let k = 0; k < n; k++) {
            const len = frame.readUInt32LE(off);
            // A consumer gets each chunk as its own Uint8Array, as from the other contenders.
            tally.add(new Uint8Array(frame.buffer, frame.byteOffset + off + 4, len));
            off += 4 + len;
          }
        } catch (err) {
          this.#onFrame = undefined;
          reject(err as Error);
        }
      };
      this.#child.stdin!.write('run\n');
    });
    const ms = performance.now() - start;
    tally.expect(count, 'raw stdout child');
    return ms;
  }
  async close(): Promise<void> {
    const exited = once(this.#child, 'exit');
    this.#child.stdin!.end();
    this.#child.disconnect();
    await exited;
  }
}

/** tinybench: from `host.stream()` to the first chunk, the stream's end outside the sample. */
async function firstChunk(host: Sluice, sandbox: SandboxKind): Promise<{ p50: number; p99: number; mean: number }> {
  const bench = new Bench({ iterations: FIRST_CHUNK_RUNS, time: 0, warmupIterations: FIRST_CHUNK_WARMUP, warmupTime: 0, throws: true });
  bench.add(`first chunk (${sandbox})`, async () => {
    const start = bench.now();
    const stream = host.stream(PLUGIN, 'one', {}, { sandbox });
    const it = stream[Symbol.asyncIterator]();
    const first = await it.next();
    const overriddenDuration = bench.now() - start;
    if (first.done === true || first.value.data !== 1) throw new Error('first chunk missing');
    if ((await it.next()).done !== true) throw new Error('stream did not end after one chunk');
    const result = await stream.result;
    if (result.status !== 'done') throw new Error(`stream ${result.status}: ${result.error?.message ?? ''}`);
    return { overriddenDuration };
  });
  await bench.run();
  return latency(bench.tasks[0]);
}

function latency(task: Task | undefined): { p50: number; p99: number; mean: number } {
  const result = task?.result;
  if (result === undefined || !('latency' in result)) {
    throw new Error(`bench task ${task?.name ?? '?'} has no result${result && 'error' in result ? `: ${String(result.error)}` : ''}`);
  }
  return { p50: result.latency.p50, p99: result.latency.p99, mean: result.latency.mean };
}

/** Whether the isolate sandbox runs a stream in this build; prints why not. */
async function isolateWorks(host: Sluice): Promise<boolean> {
  const signal = AbortSignal.timeout(ISOLATE_PROBE_TIMEOUT_MS);
  try {
    const chunks = await host.call(PLUGIN, 'bytes', { count: 3, size: CHUNK_BYTES }, { sandbox: 'isolate', signal });
    if (!Array.isArray(chunks) || chunks.length !== 3 || !(chunks[0] instanceof Uint8Array)) throw new Error(`unexpected result ${JSON.stringify(chunks)}`);
    return true;
  } catch (err) {
    const e = err as { code?: string; message?: string };
    console.log(`  isolate sandbox unavailable (${e.code ?? 'error'}: ${e.message ?? String(err)}); isolate figures are missing`);
    return false;
  }
}

function log(line: string): void {
  console.log(`  ${line}`);
}

/** Run the core data-path benchmark (about a minute) and return its figures. */
export async function benchCore(): Promise<Record<string, number>> {
  const figures: Record<string, number> = {};
  const host = await Sluice.open({ logger: false, workers: { maxThreads: 2, minThreads: 2 }, isolates: { processes: 1 } });
  const rawPool = new Piscina({ filename: RAW_WORKER, minThreads: 1, maxThreads: 1 });
  const rawCache = await mkdtemp(join(tmpdir(), 'sluice-bench-raw-'));
  try {
    // Warm: bundle and load the plugin on both threads, JIT both paths.
    await Promise.all([hostRun(host, 'worker', 20_000, WINDOWED), hostRun(host, 'worker', 20_000, WINDOWED)]);
    // The raw task imports the plugin as the worker sandbox does: bundled to one ES module.
    const { modulePath } = await bundleForWorker(PLUGIN, rawCache);
    await rawWorkerRun(rawPool, 20_000);
    await rawWorkerRun(rawPool, 20_000, modulePath);
    log(`worker: ${CHUNKS} chunks of ${CHUNK_BYTES} B, raw batch ${RAW_BATCH}, window ${WINDOWED.chunks} chunks / ${WINDOWED.bytes} B, ${ROUNDS} rounds`);

    const rss = new RssGrowth();
    const worker: Contender = { name: 'worker', ms: [], run: () => hostRun(host, 'worker', CHUNKS, WINDOWED, rss) };
    const raw: Contender = { name: 'raw', ms: [], run: () => rawWorkerRun(rawPool, CHUNKS) };
    const rawPlugin: Contender = { name: 'raw same plugin', ms: [], run: () => rawWorkerRun(rawPool, CHUNKS, modulePath) };
    await race([worker, raw, rawPlugin], ROUNDS);
    figures.worker_chunks_per_s = perS(CHUNKS, worker.ms);
    figures.raw_chunks_per_s = perS(CHUNKS, raw.ms);
    figures.raw_same_plugin_chunks_per_s = perS(CHUNKS, rawPlugin.ms);
    figures.worker_vs_raw = round3(medianRatio(worker.ms, raw.ms));
    figures.worker_vs_raw_same_plugin = round3(medianRatio(worker.ms, rawPlugin.ms));
    log(`worker ${figures.worker_chunks_per_s}/s, raw MessagePort ${figures.raw_chunks_per_s}/s (ratio per round: ${ratios(worker.ms, raw.ms)})`);
    log(`raw task running the plugin's own generator ${figures.raw_same_plugin_chunks_per_s}/s (worker ratio per round: ${ratios(worker.ms, rawPlugin.ms)})`);

    const window256: Contender = { name: 'window 256', ms: [], run: () => hostRun(host, 'worker', CHUNKS, WINDOW_256) };
    const windowed: Contender = { name: `window ${WINDOWED.chunks}`, ms: [], run: () => hostRun(host, 'worker', CHUNKS, WINDOWED) };
    const unboundedRss = new RssGrowth();
    const unbounded: Contender = { name: 'unbounded', ms: [], run: () => hostRun(host, 'worker', CHUNKS, UNBOUNDED, unboundedRss) };
    await race([window256, windowed, unbounded], ROUNDS);
    figures.credit_window_vs_unbounded = round3(medianRatio(window256.ms, unbounded.ms));
    figures.credit_window_default_vs_unbounded = round3(medianRatio(windowed.ms, unbounded.ms));
    figures.unbounded_chunks_per_s = perS(CHUNKS, unbounded.ms);
    figures.worker_rss_growth_mb = round3(rss.growth / MB);
    figures.unbounded_rss_growth_mb = round3(unboundedRss.growth / MB);
    log(`window 256 ${perS(CHUNKS, window256.ms)}/s vs unbounded ${figures.unbounded_chunks_per_s}/s (ratio per round: ${ratios(window256.ms, unbounded.ms)})`);
    log(`window ${WINDOWED.chunks} (the default) ${perS(CHUNKS, windowed.ms)}/s (ratio to unbounded per round: ${ratios(windowed.ms, unbounded.ms)}); RSS growth ${figures.worker_rss_growth_mb} MB windowed, ${figures.unbounded_rss_growth_mb} MB unbounded`);

    const workerFirst = await firstChunk(host, 'worker');
    figures.first_chunk_p50_ms = round3(workerFirst.p50);
    figures.first_chunk_p99_ms = round3(workerFirst.p99);
    log(`first chunk (worker, ${FIRST_CHUNK_RUNS} runs): p50 ${workerFirst.p50.toFixed(3)} ms, p99 ${workerFirst.p99.toFixed(3)} ms, mean ${workerFirst.mean.toFixed(3)} ms`);

    if (await isolateWorks(host)) {
      await hostRun(host, 'isolate', 10_000, WINDOWED);
      const ipc = await RawIpcChild.start(ISOLATE_CHUNKS);
      const stdout = RawStdoutChild.start(ISOLATE_CHUNKS);
      try {
        await ipc.run(ISOLATE_CHUNKS);
        await stdout.run(ISOLATE_CHUNKS);
        const isolate: Contender = { name: 'isolate', ms: [], run: () => hostRun(host, 'isolate', ISOLATE_CHUNKS, WINDOWED) };
        const rawIpc: Contender = { name: 'raw ipc', ms: [], run: () => ipc.run(ISOLATE_CHUNKS) };
        const rawStdout: Contender = { name: 'raw stdout', ms: [], run: () => stdout.run(ISOLATE_CHUNKS) };
        await race([isolate, rawIpc, rawStdout], ROUNDS);
        const stdoutFaster = median(rawStdout.ms) < median(rawIpc.ms);
        const baseline = stdoutFaster ? rawStdout : rawIpc;
        figures.isolate_chunks_per_s = perS(ISOLATE_CHUNKS, isolate.ms);
        figures.raw_ipc_chunks_per_s = perS(ISOLATE_CHUNKS, rawIpc.ms);
        figures.raw_stdout_chunks_per_s = perS(ISOLATE_CHUNKS, rawStdout.ms);
        figures.raw_pipe_is_stdout = stdoutFaster ? 1 : 0;
        figures.isolate_vs_raw_pipe = round3(medianRatio(isolate.ms, baseline.ms));
        log(`isolate ${figures.isolate_chunks_per_s}/s vs raw ipc ${figures.raw_ipc_chunks_per_s}/s, raw stdout ${figures.raw_stdout_chunks_per_s}/s (baseline: ${baseline.name}, ${ISOLATE_CHUNKS} chunks; ratio per round: ${ratios(isolate.ms, baseline.ms)})`);
      } finally {
        await Promise.all([ipc.close(), stdout.close()]);
      }
      const isolateFirst = await firstChunk(host, 'isolate');
      figures.first_chunk_isolate_p50_ms = round3(isolateFirst.p50);
      figures.first_chunk_isolate_p99_ms = round3(isolateFirst.p99);
      log(`first chunk (isolate, ${FIRST_CHUNK_RUNS} runs): p50 ${isolateFirst.p50.toFixed(3)} ms, p99 ${isolateFirst.p99.toFixed(3)} ms`);
    }
    return figures;
  } finally {
    await rawPool.destroy();
    await host.close();
    await rm(rawCache, { recursive: true, force: true });
  }
}
