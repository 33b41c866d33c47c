/**
 * The `worker` sandbox: Piscina worker threads, one stream per thread at a time.
 *
 * Limits seen from outside the plugin's thread:
 * - cpuMs: the thread's event-loop utilisation (`worker.performance.eventLoopUtilization`),
 *   readable from here even while the plugin spins; active loop time of a thread
 *   that runs one stream is that stream's CPU time (blocking syscalls aside).
 * - memoryMb: the thread's heap plus its external memory (ArrayBuffer backing stores),
 *   sampled through the inspector every check interval (heap-watch.ts says why and what
 *   is not counted), with V8 `resourceLimits` at about three times the limit as the heap's
 *   backstop (one Piscina pool per distinct limit). External memory has no backstop: a
 *   plugin allocating buffers in a tight loop overshoots by what it allocates in one
 *   interval. One heap allocation past the backstop still aborts the process on Node 20:
 *   worker code is trusted, untrusted plugins belong in `isolate`.
 * A hard stop terminates the thread; Piscina replaces it and no other stream notices.
 */
import { MessageChannel, type MessagePort, type Worker } from 'node:worker_threads';
import { fileURLToPath } from 'node:url';
import { Piscina } from 'piscina';
import { SluiceError, fromWireError } from '../../protocol/errors.js';
import { parseFromSandbox, parseWireError, type StartSpec, type ToSandbox } from '../../protocol/messages.js';
import type { DescribeResult, DescribeTask, StreamTask, WorkerHello } from '../../sandbox/worker.js';
import type { BundledPlugin, PluginDescription, PoolStats, SandboxEvents, SandboxHandle, SandboxPool } from './types.js';
import { WorkerHeapWatch, type MemorySample } from './heap-watch.js';

export interface WorkerPoolOptions {
  /** Threads per memory class; also the most streams that run at once in this pool. */
  maxThreads: number;
  /** Threads kept warm so a stream starts without spawning one. */
  minThreads: number;
  /** How often CPU limits are checked; a violator is stopped within limit + this. */
  checkIntervalMs: number;
}

export const WORKER_POOL_DEFAULTS: Readonly<WorkerPoolOptions> = Object.freeze({
  maxThreads: 8,
  minThreads: 2,
  checkIntervalMs: 50,
});

/** What Piscina starts: a CommonJS entry, see sandbox/worker-entry.cts for why. */
export const WORKER_ENTRY = fileURLToPath(new URL('../../sandbox/worker-entry.cjs', import.meta.url));
/** Young generation is kept small; the limit a user sets is the old generation. */
const YOUNG_GENERATION_MB = 16;
const MIB = 1024 * 1024;
const total = (sample: MemorySample): number => sample.heap + (sample.external ?? 0);

/**
 * V8's own limit for a thread whose stream may use `memoryMb`: far enough above it that
 * the heap sample sees the stream pass `memoryMb` (and stops it) before a doubling
 * allocation meets V8's limit, which would abort the process. At twice the limit a Map
 * whose table has just reached `memoryMb` met it at its next doubling (old table and new
 * together): the sample had only that table's filling, ~30-60 ms, to land in, and missed
 * in about 1 run of 12 of test/worker-memory.test.ts. At three times it also has the
 * next table's filling, twice as long.
 */
const v8HeapLimitMb = (memoryMb: number): number => memoryMb * 3 + 64;
const DESCRIBE_TIMEOUT_MS = 10_000;
/** The describe thread goes away when no plugin has been loaded for this long. */
const DESCRIBE_IDLE_MS = 5_000;
// Process-only flags (isolated-vm's --no-node-snapshot, --expose-gc) make new Worker() throw.
const PROCESS_ONLY_FLAGS = new Set(['--no-node-snapshot', '--expose-gc', '--expose_gc']);
const WORKER_EXEC_ARGV = process.execArgv.filter((a) => !PROCESS_ONLY_FLAGS.has(a));

interface Running {
  port: MessagePort;
  events: SandboxEvents;
  cpuMs: number;
  memoryMb: number;
  /** A memory sample is on its way. */
  sampling: boolean;
  /** When this stream's thread was last made to collect its garbage (performance.now()). */
  collectedAt: number;
  worker: Worker | undefined;
  eluStart: ReturnType<Worker['performance']['eventLoopUtilization']> | undefined;
  /** Set once the stream's outcome is known; later messages are dropped. */
  exited: boolean;
  /** An end/error message arrived; the task settling is then not a failure. */
  ended: boolean;
  stopReason: SluiceError | undefined;
  /** Fallback for a task that finished without its final message. */
  finalTimer: NodeJS.Timeout | undefined;
}

/**
 * The least time between two forced collections of one stream's thread. A stream over
 * its limit only by garbage-to-be would otherwise be paused at every check; one that is
 * over for real is stopped within this much more.
 */
const COLLECT_GAP_MS = 250;

/** How long a finished task's final message may lag behind the task's own result. */
const FINAL_MESSAGE_GRACE_MS = 1000;

export class WorkerPool implements SandboxPool {
  readonly kind = 'worker' as const;
  readonly #options: WorkerPoolOptions;
  /** One Piscina per memory limit (resourceLimits are fixed per thread). */
  readonly #pools = new Map<number, Piscina>();
  readonly #running = new Set<Running>();
  #describePool: Piscina | undefined;
  #timer: NodeJS.Timeout | undefined;
  #heap: WorkerHeapWatch | undefined;
  #replaced = 0;
  #closed = false;

  constructor(options: Partial<WorkerPoolOptions> = {}) {
    this.#options = { ...WORKER_POOL_DEFAULTS, ...options };
    const o = this.#options;
    for (const key of ['maxThreads', 'minThreads', 'checkIntervalMs'] as const) {
      if (!Number.isInteger(o[key]) || o[key] < (key === 'minThreads' ? 0 : 1)) {
        throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`workers.${key}\` to be a ${key === 'minThreads' ? 'non-negative' : 'positive'} integer, got \`${String(o[key])}\``);
      }
    }
    if (o.minThreads > o.maxThreads) o.minThreads = o.maxThreads;
  }

  /** How many streams may run at once (one per thread). */
  get maxThreads(): number {
    return this.#options.maxThreads;
  }

  /** Start the default memory class now, so the first stream finds warm threads. */
  warm(memoryMb: number): void {
    this.#pool(memoryMb);
  }

  #pool(memoryMb: number): Piscina {
    let pool = this.#pools.get(memoryMb);
    if (pool === undefined) {
      pool = new Piscina({
        filename: WORKER_ENTRY,
        minThreads: this.#pools.size === 0 ? this.#options.minThreads : 0,
        maxThreads: this.#options.maxThreads,
        // A stream owns its thread; piscina's own queue stays empty because the host admits at most maxThreads.
        concurrentTasksPerWorker: 1,
        idleTimeout: 30_000,
        resourceLimits: { maxOldGenerationSizeMb: v8HeapLimitMb(memoryMb), maxYoungGenerationSizeMb: YOUNG_GENERATION_MB },
        execArgv: WORKER_EXEC_ARGV,
      });
      this.#pools.set(memoryMb, pool);
    }
    return pool;
  }

  async describe(plugin: BundledPlugin, signal?: AbortSignal): Promise<PluginDescription> {
    this.#assertOpen();
    const timeout = AbortSignal.timeout(DESCRIBE_TIMEOUT_MS);
    const task: DescribeTask = { kind: 'describe', modulePath: plugin.modulePath };
    let result: DescribeResult;
    try {
      result = (await this.#describer().run(task, { signal: signal === undefined ? timeout : AbortSignal.any([signal, timeout]) })) as DescribeResult;
    } catch (err) {
      throw new SluiceError('ERR_PLUGIN_LOAD', `Loading plugin ${plugin.name} failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
    if (!result.ok) throw fromWireError(parseWireError(result.error));
    return result.description;
  }

  /**
   * Loading a plugin gets a thread of its own: stream threads are held for a stream's
   * whole life, so sharing them would make a describe wait behind running streams (with
   * one thread, a pipeline whose second plugin is not loaded yet would never start).
   */
  #describer(): Piscina {
    this.#describePool ??= new Piscina({
      filename: WORKER_ENTRY,
      minThreads: 0,
      maxThreads: 1,
      idleTimeout: DESCRIBE_IDLE_MS,
      resourceLimits: { maxOldGenerationSizeMb: v8HeapLimitMb(this.#defaultMemory()), maxYoungGenerationSizeMb: YOUNG_GENERATION_MB },
      execArgv: WORKER_EXEC_ARGV,
    });
    return this.#describePool;
  }

  #defaultMemory(): number {
    const first = this.#pools.keys().next();
    return first.done === true ? 128 : first.value;
  }

  async start(plugin: BundledPlugin, spec: StartSpec, events: SandboxEvents): Promise<SandboxHandle> {
    this.#assertOpen();
    const pool = this.#pool(spec.limits.memoryMb);
    this.#heap ??= new WorkerHeapWatch();
    const { port1, port2 } = new MessageChannel();
    const run: Running = {
      port: port1,
      events,
      cpuMs: spec.limits.cpuMs,
      memoryMb: spec.limits.memoryMb,
      sampling: false,
      collectedAt: -Infinity,
      worker: undefined,
      eluStart: undefined,
      exited: false,
      ended: false,
      stopReason: undefined,
      finalTimer: undefined,
    };
    this.#running.add(run);

    port1.on('message', (data: unknown) => this.#onMessage(run, pool, data));

    const task: StreamTask = { kind: 'stream', modulePath: plugin.modulePath, spec, port: port2 };
    pool.run(task, { transferList: [port2] }).then(
      () => {
        // Task results and port messages travel separately: the final message may still be on its way.
        if (run.exited || run.ended) return;
        run.finalTimer = setTimeout(() => this.#exit(run, run.stopReason ?? new SluiceError('ERR_PROTOCOL', 'Worker finished the stream without an end or error message')), FINAL_MESSAGE_GRACE_MS);
      },
      (err: unknown) => this.#exit(run, this.#taskError(run, err)),
    );

    return {
      send: (msg: ToSandbox) => {
        if (!run.exited) port1.postMessage(msg, msg.type === 'credit' && msg.buffers !== undefined ? msg.buffers : undefined);
      },
      terminate: (reason: SluiceError) => this.#terminate(run, reason),
      movesBuffers: true,
    };
  }

  #onMessage(run: Running, pool: Piscina, data: unknown): void {
    if (run.exited) return;
    if ((data as WorkerHello)?.type === 'hello') {
      const id = (data as WorkerHello).threadId;
      run.worker = pool.threads.find((w) => w.threadId === id);
      run.eluStart = run.worker?.performance.eventLoopUtilization();
      this.#startTimer();
      if (run.stopReason !== undefined) this.#terminate(run, run.stopReason);
      return;
    }
    let msg;
    try {
      // Packed byte chunks stay packed: HostStream copies each out as its consumer takes it.
      msg = parseFromSandbox(data, { keepPacked: true });
    } catch (err) {
      this.#terminate(run, err as SluiceError);
      return;
    }
    run.events.message(msg);
    // The final message is the stream's end; the thread is free a moment later.
    if (msg.type === 'end' || msg.type === 'error') {
      run.ended = true;
      this.#exit(run, undefined);
    }
  }

  #taskError(run: Running, err: unknown): SluiceError | undefined {
    if (run.stopReason !== undefined) return run.stopReason;
    if (run.ended) return undefined;
    const code = (err as { code?: unknown })?.code;
    if (code === 'ERR_WORKER_OUT_OF_MEMORY') {
      return new SluiceError('ERR_LIMIT_MEMORY', 'Stream exceeded its memory limit (worker resourceLimits)', { cause: err });
    }
    this.#replaced++;
    return new SluiceError('ERR_SANDBOX_CRASHED', `Worker thread failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
  }

  #terminate(run: Running, reason: SluiceError): void {
    if (run.exited) return;
    run.stopReason ??= reason;
    // Before the hello we do not know the thread yet; #onMessage terminates on arrival.
    if (run.worker === undefined) return;
    void run.worker.terminate();
  }

  #exit(run: Running, error: SluiceError | undefined): void {
    if (run.exited) return;
    run.exited = true;
    clearTimeout(run.finalTimer);
    this.#running.delete(run);
    run.port.close();
    run.events.exit(error);
  }

  #startTimer(): void {
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(() => this.#checkLimits(), this.#options.checkIntervalMs);
    this.#timer.unref();
  }

  #checkLimits(): void {
    let watched = 0;
    for (const run of this.#running) {
      if (run.worker === undefined || run.eluStart === undefined || run.stopReason !== undefined) continue;
      watched++;
      if (run.cpuMs > 0) {
        const used = run.worker.performance.eventLoopUtilization(run.eluStart).active;
        if (used > run.cpuMs) {
          this.#terminate(run, new SluiceError('ERR_LIMIT_CPU', `Stream used ${Math.round(used)} ms of CPU, over its limit of ${run.cpuMs} ms`, { details: { limit: 'cpuMs', max: run.cpuMs, used: Math.round(used) } }));
          continue;
        }
      }
      if (!run.sampling && this.#heap !== undefined) this.#sampleMemory(run, this.#heap, run.worker.threadId);
    }
    if (watched === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  #sampleMemory(run: Running, watch: WorkerHeapWatch, threadId: number): void {
    run.sampling = true;
    void this.#overLimit(run, watch, threadId).then((over) => {
      run.sampling = false;
      if (over === undefined || run.exited) return;
      const used = Math.round(total(over) / MIB);
      const parts = over.external === undefined ? 'of heap' : `(heap ${Math.round(over.heap / MIB)}, external ${Math.round(over.external / MIB)})`;
      this.#terminate(run, new SluiceError('ERR_LIMIT_MEMORY', `Stream used ${used} MiB ${parts}, over its memoryMb limit of ${run.memoryMb}`, { details: { limit: 'memoryMb', max: run.memoryMb, used } }));
    });
  }

  /** The sample that shows `run` over its memoryMb, or undefined while it is within it. */
  async #overLimit(run: Running, watch: WorkerHeapWatch, threadId: number): Promise<MemorySample | undefined> {
    const limit = run.memoryMb * MIB;
    const first = await watch.sample(threadId);
    if (first === undefined || total(first) <= limit) return undefined;
    // The heap alone over: no waiting, a growing heap is what V8's fatal limit is near.
    if (first.heap > limit) return first;
    // Over only with external memory, which may be buffers the plugin already dropped (a
    // stream churning 64 KiB-1 MiB buffers while holding 20 MiB passed 64 MiB): count
    // what survives a collection, as isolated-vm does before it fails an allocation.
    // A forced collection pauses the plugin for ~45-250 ms: at most one per COLLECT_GAP_MS,
    // and in between an over-by-external-memory sample waits for the next one.
    const now = performance.now();
    if (now - run.collectedAt < COLLECT_GAP_MS) return undefined;
    run.collectedAt = now;
    const collected = await watch.collectGarbage(threadId);
    if (run.exited || run.stopReason !== undefined) return undefined;
    if (!collected) return first;
    const second = await watch.sample(threadId);
    return second !== undefined && total(second) > limit ? second : undefined;
  }

  stats(): PoolStats {
    let sandboxes = 0;
    for (const pool of this.#pools.values()) sandboxes += pool.threads.length;
    return { kind: 'worker', running: this.#running.size, sandboxes, replaced: this.#replaced };
  }

  #assertOpen(): void {
    if (this.#closed) throw new SluiceError('ERR_HOST_CLOSED', 'Worker pool is closed');
  }

  async close(timeoutMs = 5_000): Promise<void> {
    if (this.#closed) return this.destroy();
    this.#closed = true;
    const drained = Promise.all([...this.#pools.values(), ...(this.#describePool === undefined ? [] : [this.#describePool])].map((p) => p.close()));
    let timer: NodeJS.Timeout | undefined;
    const timedOut = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, timeoutMs);
    });
    await Promise.race([drained, timedOut]);
    clearTimeout(timer);
    await this.destroy();
  }

  async destroy(): Promise<void> {
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    this.#heap?.close();
    this.#heap = undefined;
    const stop = new SluiceError('ERR_HOST_CLOSED', 'Host closed while the stream ran');
    for (const run of [...this.#running]) {
      run.stopReason ??= stop;
    }
    const pools = [...this.#pools.values(), ...(this.#describePool === undefined ? [] : [this.#describePool])];
    this.#pools.clear();
    this.#describePool = undefined;
    await Promise.all(pools.map((p) => p.destroy()));
    for (const run of [...this.#running]) this.#exit(run, stop);
  }
}
