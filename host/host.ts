/**
 * `Sluice`, the host: runs plugin actions in sandboxes and hands back their streams.
 *
 * @example
 * import { Sluice } from 'sluice';
 * await using host = await Sluice.open({ plugins: './plugins' });
 * for await (const { seq, data } of host.stream('records', 'transform', { rows: 3 })) {
 *   console.log(seq, data);
 * }
 */
import { randomUUID } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Logger } from 'pino';
import { copyChunk } from '../protocol/chunk.js';
import type { Window } from '../protocol/credit.js';
import { SluiceError, isSluiceError, toWireError } from '../protocol/errors.js';
import { assertInteger, assertOneOf, assertString, fail } from '../protocol/assert.js';
import { parsePartialLimits, resolveLimits, type Limits } from '../protocol/limits.js';
import type { StartSpec } from '../protocol/messages.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import { HostMetrics } from './metrics.js';
import { DEFAULTS, parseWindowOverride, resolveSettings, type RetryPolicy, type SluiceOptions } from './options.js';

export type { SluiceOptions } from './options.js';
import { parsePipeline } from '../protocol/pipeline.js';
import { buildPipeline } from './operators/pipeline.js';
import { PluginRegistry, type PluginProblem, type PluginRecord, type IsolateBundler } from './registry.js';
import { PRIORITIES, Scheduler, type Ticket } from './scheduler.js';
import { HostStream, type StreamEngineHooks } from './stream.js';
import { DurableStream, type StartPoint } from './durable.js';
import { WorkerPool } from './sandbox/worker-pool.js';
import type { SandboxPool } from './sandbox/types.js';
import type { PluginInfo, ReadEvent, SluiceStream, StreamInfo, StreamOptions, StreamResult, StreamStatus } from './types.js';
import { Store, isFinished, type StreamRecord } from './store/store.js';
import type { ChunkData } from '../protocol/chunk.js';

interface Engine {
  options: SluiceOptions;
  logger: Logger;
  registry: PluginRegistry;
  pools: Partial<Record<SandboxKind, SandboxPool>>;
  scheduler: Scheduler;
  metrics: HostMetrics;
  defaults: Limits;
  policy: Limits;
  window: Window;
  store: Store | undefined;
  retries: RetryPolicy;
}

function asSluiceError(err: unknown, fallback: 'ERR_PLUGIN_LOAD' | 'ERR_SANDBOX_CRASHED' = 'ERR_PLUGIN_LOAD'): SluiceError {
  if (isSluiceError(err)) return err;
  const wire = toWireError(err, false, fallback);
  return new SluiceError(wire.code, wire.message, { cause: err });
}

/** call()'s collection caps: they bound only what nothing else bounds. */
type CollectCaps = Pick<Limits, 'maxBytes' | 'maxChunks'>;

export class Sluice implements AsyncDisposable {
  readonly #e: Engine;
  readonly #live = new Map<string, HostStream>();
  readonly #tickets = new Map<HostStream, Ticket>();
  readonly #slots = new Map<HostStream, Ticket>();
  readonly #clocked = new Set<HostStream>();
  readonly #durable = new Map<HostStream, DurableStream>();
  /** Checkpoint and status writes of ended durable streams, still in flight. */
  readonly #storing = new Set<Promise<unknown>>();
  /** How to start a durable stream again (set once it is admitted). */
  readonly #restarts = new Map<HostStream, (from: StartPoint) => Promise<void>>();
  #watchdog: NodeJS.Timeout | undefined;
  #closing: Promise<void> | undefined;
  readonly #hooks: StreamEngineHooks;

  private constructor(engine: Engine) {
    this.#e = engine;
    this.#hooks = {
      cancelGraceMs: engine.options.cancelGraceMs ?? DEFAULTS.cancelGraceMs,
      running: (s) => {
        const kind = this.#slots.get(s)?.kind ?? 'unknown';
        engine.metrics.running.inc({ sandbox: kind });
        engine.metrics.streamsStarted.inc({ sandbox: kind });
        if (s.watchesClock) this.#watch(s);
        this.#durable.get(s)?.running();
      },
      batch: (_s, chunks, bytes) => {
        engine.metrics.chunks.inc(chunks);
        engine.metrics.bytes.inc(bytes);
      },
      finished: (s, result) => this.#finished(s, result),
      retry: (s, error) => this.#retry(s, error),
      dequeue: (s) => {
        if (this.#durable.get(s)?.cancelRetry() === true) {
          s.exit(undefined);
          return;
        }
        const ticket = this.#tickets.get(s);
        if (ticket !== undefined && engine.scheduler.remove(ticket)) {
          this.#tickets.delete(s);
          engine.metrics.queued.set(engine.scheduler.queued);
          s.exit(undefined);
        }
        // Not queued yet (still resolving its plugin): #prepare sees it ended and finishes it.
        // Admitted and starting: attach() stops it.
      },
    };
  }

  /** Open a host: start the sandbox pools and discover the plugins folders. */
  static async open(options: SluiceOptions = {}): Promise<Sluice> {
    const settings = resolveSettings(options);
    const { logger, maxQueued, defaults, policy, window, retries } = settings;
    // Acquire in order, releasing what was acquired if a later step fails.
    const acquired: { close(): Promise<unknown> }[] = [];
    const release = (): Promise<unknown> => Promise.allSettled(acquired.reverse().map((r) => r.close()));
    let store: Store | undefined;
    let workers: WorkerPool;
    const pools: Partial<Record<SandboxKind, SandboxPool>> = {};
    let bundleForIsolate: IsolateBundler | undefined;
    let isolateConcurrency = 0;
    try {
      if (settings.dataDir !== undefined) {
        const so = options.store ?? {};
        store = await Store.open({
          path: settings.dataDir,
          exclusive: true,
          ...(so.encryptionKey !== undefined ? { encryptionKey: so.encryptionKey } : {}),
          ...(so.maintenanceIntervalMs !== undefined ? { maintenanceIntervalMs: so.maintenanceIntervalMs } : {}),
          ...(so.finishedRetentionMs !== undefined ? { finishedRetentionMs: so.finishedRetentionMs } : {}),
          onMaintenanceError: (err: unknown) => logger.error({ err }, 'store upkeep failed'),
        });
        acquired.push(store);
      }
      workers = new WorkerPool(options.workers);
      acquired.push({ close: () => workers.destroy() });
      workers.warm(defaults.memoryMb);
      pools.worker = workers;
      if (options.isolates !== false) {
        const iso = await loadIsolateSandbox(options.isolates ?? {});
        if (iso !== undefined) {
          acquired.push({ close: () => iso.pool.destroy() });
          pools.isolate = iso.pool;
          bundleForIsolate = iso.bundle;
          const maxStreams = options.isolates?.maxStreams ?? DEFAULTS.isolateStreams;
          // 0 or a fraction would leave every isolate stream queued forever.
          assertInteger(maxStreams, 'options.isolates.maxStreams', 'ERR_INVALID_ARGUMENT', 1);
          isolateConcurrency = maxStreams;
        }
      }
    } catch (err) {
      await release();
      throw err;
    }
    const cacheDir = resolve(options.cacheDir ?? join(tmpdir(), `sluice-cache-${process.getuid?.() ?? 'user'}`));
    const registry = new PluginRegistry({ cacheDir, pools, bundleForIsolate });
    const scheduler = new Scheduler({
      concurrency: { worker: workers.maxThreads, isolate: isolateConcurrency },
      memoryBudgetMb: { worker: options.memoryBudgetMb?.worker ?? 0, isolate: options.memoryBudgetMb?.isolate ?? 0 },
      maxQueued,
    });
    const host = new Sluice({ options, logger, registry, pools, scheduler, metrics: new HostMetrics(), defaults, policy, window, store, retries });
    try {
      const dirs = options.plugins === undefined ? [] : Array.isArray(options.plugins) ? options.plugins : [options.plugins];
      await registry.discover(dirs.map((d) => resolve(d)));
      for (const p of registry.problems()) logger.warn({ path: p.path, code: p.error.code }, p.error.message);
      if (options.strictPlugins === true && registry.problems().length > 0) throw registry.problems()[0]!.error;
      if (options.resume === 'auto' && store !== undefined) {
        for (const rec of store.listStreams({ status: ['queued', 'running'] })) {
          if (rec.durability !== 'log') continue;
          const stream = host.resume(rec.id);
          logger.info({ stream: rec.id, plugin: rec.plugin }, 'resumed durable stream');
          void stream.result;
        }
      }
    } catch (err) {
      await host.destroy();
      throw err;
    }
    return host;
  }

  /** Plugins discovered or loaded so far. */
  plugins(): PluginInfo[] {
    return this.#e.registry.list();
  }

  /** Plugins in the folders that failed to load, with their coded errors. */
  pluginProblems(): PluginProblem[] {
    return this.#e.registry.problems();
  }

  /** The host's prom-client registry (its own, never the global one). */
  get metricsRegistry(): HostMetrics['registry'] {
    return this.#e.metrics.registry;
  }

  get logger(): Logger {
    return this.#e.logger;
  }

  /** A live (queued or running) stream by id. */
  getStream(id: string): SluiceStream | undefined {
    return this.#live.get(id);
  }

  /** Live streams. */
  streams(): SluiceStream[] {
    return [...this.#live.values()];
  }

  /**
   * Start `action` of `plugin` (a name from the plugins folders, or a path) and return
   * its stream at once; failures to start surface when the stream is read.
   */
  stream(plugin: string, action: string, params?: unknown, options: StreamOptions = {}): SluiceStream {
    return this.#launch(plugin, action, params, options, undefined, undefined);
  }

  /**
   * Start a durable stream again after a crash or restart: the action runs with
   * `ctx.resume` = its last checkpoint, and (in `log` mode) chunks it produces again up
   * to the log's tail are dropped, so readers see every seq exactly once.
   */
  resume(id: string): SluiceStream {
    this.#assertOpen();
    assertString(id, 'id', 'ERR_INVALID_ARGUMENT', 128);
    const live = this.#live.get(id);
    if (live !== undefined) return live;
    const store = this.#requireStore('resume a stream');
    const rec = store.getStream(id);
    if (rec === undefined) throw new SluiceError('ERR_STREAM_NOT_FOUND', `No durable stream \`${id}\``, { details: { id } });
    if (isFinished(rec.status)) throw new SluiceError('ERR_RESUME_FAILED', `Stream \`${id}\` already ended (${rec.status}); nothing to resume`, { details: { id, status: rec.status } });
    const saved = rec.options as { sandbox?: StreamOptions['sandbox']; limits?: StreamOptions['limits']; window?: StreamOptions['window']; priority?: StreamOptions['priority'] };
    const options: StreamOptions = { id, durability: rec.durability };
    if (saved.sandbox !== undefined) options.sandbox = saved.sandbox;
    if (saved.limits !== undefined) options.limits = saved.limits;
    if (saved.window !== undefined) options.window = saved.window;
    if (saved.priority !== undefined) options.priority = saved.priority;
    return this.#launch(rec.plugin, rec.action, rec.params, options, rec, undefined);
  }

  /**
   * Read a durable stream from any position: exactly the chunks after `fromSeq`, live
   * ones included, or an explicit `gap` / `reset` event, then `end`.
   */
  read(id: string, options: { fromSeq?: number; epoch?: string; signal?: AbortSignal } = {}): AsyncIterable<ReadEvent> {
    const store = this.#e.store;
    if (store === undefined) throw new SluiceError('ERR_STREAM_NOT_FOUND', `No durable stream \`${id}\` (this host has no data folder)`);
    const live = this.#live.get(id) as HostStream | undefined;
    const recorded = live === undefined ? undefined : this.#durable.get(live)?.recorded;
    if (recorded === undefined) return store.read(id, options);
    // Just started: its record is on its way to the store.
    return (async function* () {
      await recorded;
      yield* store.read(id, options);
    })();
  }

  /** A stream's state: live ones from memory, durable ones from the store. */
  async streamInfo(id: string): Promise<StreamInfo | undefined> {
    const live = this.#live.get(id) as HostStream | undefined;
    const rec = this.#e.store?.getStream(id);
    if (live !== undefined) {
      return { id, plugin: live.plugin, action: live.action, status: live.status, durability: rec?.durability ?? 'none', chunks: live.chunks, ...(live.progress !== undefined ? { progress: live.progress } : {}) };
    }
    if (rec === undefined) return undefined;
    const info: StreamInfo = { id, plugin: rec.plugin, action: rec.action, status: rec.status, durability: rec.durability, chunks: this.#e.store!.logTail(id), createdAt: rec.createdAt, updatedAt: rec.updatedAt };
    if (rec.error !== undefined) info.error = rec.error;
    const cp = this.#e.store!.getCheckpoint(id);
    if (cp !== undefined) info.checkpoint = { seq: cp.seq, time: cp.time };
    return info;
  }

  /** Streams may take `options.input` (stream-consuming actions). */
  readonly acceptsInput = true;

  /**
   * Run a declarative pipeline (see `protocol/pipeline.ts`): plugin streams, operators
   * between them, plugin steps fed the upstream as their input. Backpressure holds end
   * to end, and returning the result cancels every plugin in it.
   */
  pipeline(description: unknown, options: Omit<StreamOptions, 'input' | 'id' | 'durability'> = {}): AsyncIterable<unknown> {
    const p = parsePipeline(description);
    return buildPipeline(
      p,
      { stream: (plugin, action, params, input) => this.stream(plugin, action, params, input === undefined ? options : { ...options, input }) },
      options.signal === undefined ? {} : { signal: options.signal },
    );
  }

  /** Durable streams the store holds. */
  durableStreams(filter: { status?: StreamStatus | StreamStatus[] } = {}): StreamRecord[] {
    return this.#e.store?.listStreams(filter) ?? [];
  }

  /** Forget a durable stream: its record, log and checkpoint. A live one is cancelled first. */
  async removeStream(id: string): Promise<boolean> {
    const live = this.#live.get(id);
    if (live !== undefined) await live.cancel('removed');
    return this.#e.store?.removeStream(id) ?? false;
  }

  /** The store's epoch ('' without a data folder): changes when the store is re-created. */
  get epoch(): string {
    return this.#e.store?.epoch ?? '';
  }

  #requireStore(what: string): Store {
    const store = this.#e.store;
    if (store === undefined) throw new SluiceError('ERR_INVALID_ARGUMENT', `Cannot ${what}: this host has no data folder (open it with \`dataDir\`)`);
    return store;
  }

  #launch(plugin: string, action: string, params: unknown, options: StreamOptions, resuming: StreamRecord | undefined, caps: CollectCaps | undefined): SluiceStream {
    this.#assertOpen();
    assertString(plugin, 'plugin', 'ERR_INVALID_ARGUMENT');
    assertString(action, 'action', 'ERR_INVALID_ARGUMENT', 256);
    if (typeof options !== 'object' || options === null) fail('ERR_INVALID_ARGUMENT', 'options', 'an object', options);
    if (options.sandbox !== undefined) assertOneOf(options.sandbox, ['worker', 'isolate'] as const, 'options.sandbox', 'ERR_INVALID_ARGUMENT');
    if (options.priority !== undefined) assertOneOf(options.priority, PRIORITIES, 'options.priority', 'ERR_INVALID_ARGUMENT');
    if (options.durability !== undefined) assertOneOf(options.durability, ['none', 'checkpoint', 'log'] as const, 'options.durability', 'ERR_INVALID_ARGUMENT');
    const limits = parsePartialLimits(options.limits, 'options.limits', 'ERR_INVALID_ARGUMENT');
    const window = parseWindowOverride(options.window, 'options.window');
    if (options.id !== undefined) assertString(options.id, 'options.id', 'ERR_INVALID_ARGUMENT', 128);
    const durability = options.durability ?? 'none';
    const inputWindow = parseWindowOverride(options.inputWindow, 'options.inputWindow');
    if (options.input !== undefined) {
      const input = options.input as { [Symbol.asyncIterator]?: unknown } | null;
      if (typeof input !== 'object' || input === null || typeof input[Symbol.asyncIterator] !== 'function') fail('ERR_INVALID_ARGUMENT', 'options.input', 'an async iterable', options.input);
      // An input cannot be replayed, so a stream that consumes one cannot resume.
      if (durability !== 'none') fail('ERR_INVALID_ARGUMENT', 'options.durability', "'none' for a stream with an input", durability);
    }
    const store = durability === 'none' ? undefined : this.#requireStore('start a durable stream');
    const id = options.id ?? randomUUID();
    if (this.#live.has(id)) fail('ERR_INVALID_ARGUMENT', 'options.id', 'an id no live stream uses', id);
    if (resuming === undefined && store?.getStream(id) !== undefined) fail('ERR_INVALID_ARGUMENT', 'options.id', 'an id no stored stream uses', id);
    // A path is stored absolute, so a resume from another working directory finds the same plugin.
    const ref = plugin.includes('/') || plugin.includes('\\') ? resolve(plugin) : plugin;

    const stream = new HostStream(id, ref, action, this.#hooks);
    this.#live.set(id, stream);
    if (options.input !== undefined) stream.useInput(options.input, { ...this.#e.window, ...inputWindow });
    if (store !== undefined && durability !== 'none') this.#durable.set(stream, new DurableStream(store, stream, durability, this.#e.logger, resuming !== undefined));
    const signal = options.signal;
    if (signal !== undefined) {
      if (signal.aborted) void stream.cancel(reasonText(signal.reason));
      else {
        const onAbort = (): void => void stream.cancel(reasonText(signal.reason));
        signal.addEventListener('abort', onAbort, { once: true });
        void stream.result.then(() => signal.removeEventListener('abort', onAbort));
      }
    }
    void this.#prepare(stream, params, options, limits, window, resuming, caps);
    return stream;
  }

  /**
   * Run an action for its result: a unary action's value, or a streaming action's
   * chunks collected into an array (bounded by maxChunks/maxBytes, which default to
   * 1M chunks and 64 MiB here). Rejects with the stream's coded error.
   */
  async call(plugin: string, action: string, params?: unknown, options: StreamOptions = {}): Promise<unknown> {
    const stream = this.#launch(plugin, action, params, options, undefined, { maxBytes: DEFAULTS.callMaxBytes, maxChunks: DEFAULTS.callMaxChunks }) as HostStream;
    const out: unknown[] = [];
    for await (const chunk of stream) out.push(chunk.data);
    return stream.kind === 'unary' ? out[0] : out;
  }

  async #prepare(
    stream: HostStream,
    params: unknown,
    options: StreamOptions,
    limits: Partial<Limits>,
    window: Partial<Window>,
    resuming: StreamRecord | undefined,
    caps: CollectCaps | undefined,
  ): Promise<void> {
    const e = this.#e;
    try {
      const record = await e.registry.resolve(stream.plugin);
      if (!Object.prototype.hasOwnProperty.call(record.actions, stream.action)) {
        throw new SluiceError('ERR_ACTION_NOT_FOUND', `Plugin \`${record.name}\` has no action \`${stream.action}\` (actions: ${Object.keys(record.actions).join(', ')})`, {
          details: { plugin: record.name, action: stream.action },
        });
      }
      const input = params === undefined ? {} : params;
      if (options.input !== undefined && (typeof input !== 'object' || input === null || Array.isArray(input) || 'input' in input)) {
        throw new SluiceError('ERR_PARAMS_INVALID', 'A stream-consuming action takes an object of params without an `input` key (the input stream goes there)');
      }
      try {
        copyChunk(input);
      } catch (err) {
        throw new SluiceError('ERR_PARAMS_INVALID', `Params must be JSON data: ${(err as Error).message}`);
      }
      record.params.check(stream.action, input);
      const kind = options.sandbox ?? record.manifest.sandbox;
      if (e.pools[kind] === undefined) throw new SluiceError('ERR_INVALID_ARGUMENT', `This host runs no ${kind} sandbox`);
      const effective = resolveLimits(e.policy, e.defaults, record.manifest.limits ?? {}, limits);
      // A manifest's or caller's limit stays; call()'s caps fill in only where there is none.
      if (caps !== undefined) {
        effective.maxBytes ||= caps.maxBytes;
        effective.maxChunks ||= caps.maxChunks;
      }
      const spec: StartSpec = {
        streamId: stream.id,
        action: stream.action,
        params: input,
        window: { ...(options.durability === 'log' ? logWindow(e.window) : e.window), ...window },
        limits: { maxChunkBytes: effective.maxChunkBytes, memoryMb: effective.memoryMb, cpuMs: effective.cpuMs },
      };
      if (options.input !== undefined) spec.input = { window: { ...e.window, ...parseWindowOverride(options.inputWindow, 'options.inputWindow') } };
      const d = this.#durable.get(stream);
      if (d === undefined) stream.setup({ limits: effective, window: spec.window, startSeq: 0 });
      else {
        if (resuming === undefined) {
          const saved: { [key: string]: ChunkData } = { limits: limits as ChunkData, window: window as ChunkData };
          if (options.sandbox !== undefined) saved.sandbox = options.sandbox;
          if (options.priority !== undefined) saved.priority = options.priority;
          await d.create(input as ChunkData, saved, options.retention ?? e.options.store?.retention);
        }
        const from = await d.startPoint();
        if (from.resume !== undefined) spec.resume = from.resume;
        stream.setup({ limits: effective, window: spec.window, startSeq: from.startSeq, tail: from.tail });
        this.#restarts.set(stream, async (retryFrom) => {
          const retrySpec: StartSpec = { ...spec };
          if (retryFrom.resume === undefined) delete retrySpec.resume;
          else retrySpec.resume = retryFrom.resume;
          stream.setup({ limits: effective, window: spec.window, startSeq: retryFrom.startSeq, tail: stream.tail });
          setByteBudget(retrySpec, stream);
          const bundle = await record.bundle(kind);
          stream.attach(await e.pools[kind]!.start(bundle, retrySpec, stream));
        });
      }
      setByteBudget(spec, stream);
      if (stream.ended) {
        stream.exit(undefined);
        return;
      }
      const ticket: Ticket = {
        kind,
        priority: options.priority ?? 'normal',
        memoryMb: effective.memoryMb,
        demanded: () => stream.demanded,
        start: () => void this.#start(stream, record, ticket, spec),
      };
      stream.once('demand', () => e.scheduler.demandChanged(kind));
      this.#tickets.set(stream, ticket);
      e.scheduler.submit(ticket);
      e.metrics.queued.set(e.scheduler.queued);
    } catch (err) {
      this.#tickets.delete(stream);
      stream.failBeforeStart(asSluiceError(err));
    }
  }

  async #start(stream: HostStream, record: PluginRecord, ticket: Ticket, spec: StartSpec): Promise<void> {
    const kind = ticket.kind;
    this.#tickets.delete(stream);
    this.#slots.set(stream, ticket);
    this.#e.metrics.queued.set(this.#e.scheduler.queued);
    try {
      if (stream.ended) throw new SluiceError('ERR_CANCELLED', 'Stream ended before it started');
      const bundle = await record.bundle(kind);
      const handle = await this.#e.pools[kind]!.start(bundle, spec, stream);
      stream.attach(handle);
    } catch (err) {
      stream.failBeforeStart(asSluiceError(err));
    }
  }

  #finished(stream: HostStream, result: StreamResult): void {
    const e = this.#e;
    const storing = this.#durable.get(stream)?.finished(result, this.#closing !== undefined);
    if (storing !== undefined) {
      // close() waits for these before it closes the store.
      this.#storing.add(storing);
      void storing.finally(() => this.#storing.delete(storing));
    }
    this.#durable.delete(stream);
    this.#restarts.delete(stream);
    this.#live.delete(stream.id);
    this.#clocked.delete(stream);
    this.#tickets.delete(stream);
    const slot = this.#slots.get(stream);
    if (slot !== undefined) {
      this.#slots.delete(stream);
      if (stream.started) e.metrics.running.dec({ sandbox: slot.kind });
      e.scheduler.release(slot);
      e.metrics.queued.set(e.scheduler.queued);
    }
    e.metrics.streamsEnded.inc({ status: result.status, code: result.error?.code ?? '' });
    if (result.error !== undefined && result.status === 'failed') {
      e.logger.info({ stream: stream.id, plugin: stream.plugin, action: stream.action, code: result.error.code }, result.error.message);
    }
  }

  /**
   * A durable stream's sandbox died (retriable): start it again after a jittered,
   * growing delay, resuming from its last checkpoint, keeping its slot and its consumers.
   */
  #retry(stream: HostStream, error: SluiceError): boolean {
    const d = this.#durable.get(stream);
    const restart = this.#restarts.get(stream);
    if (d === undefined || restart === undefined || this.#closing !== undefined) return false;
    return d.retry(error, this.#e.retries, restart);
  }

  /** One timer for all wall/idle clocks, running only while some stream has one. */
  #watch(stream: HostStream): void {
    this.#clocked.add(stream);
    if (this.#watchdog !== undefined) return;
    this.#watchdog = setInterval(() => {
      const now = performance.now();
      for (const s of this.#clocked) s.checkClock(now);
      if (this.#clocked.size === 0) {
        clearInterval(this.#watchdog);
        this.#watchdog = undefined;
      }
    }, DEFAULTS.watchdogMs);
    this.#watchdog.unref();
  }

  #assertOpen(): void {
    if (this.#closing !== undefined) throw new SluiceError('ERR_HOST_CLOSED', 'Host is closed');
  }

  /**
   * Stop accepting streams, end the live ones (ERR_HOST_CLOSED, cooperatively, then hard
   * after the grace period), wait for them up to `closeTimeoutMs`, then stop the sandboxes.
   * Idempotent.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    const e = this.#e;
    const error = new SluiceError('ERR_HOST_CLOSED', 'Host closed while the stream was live');
    const results = [...this.#live.values()].map((s) => s.stop(error));
    const timeout = e.options.closeTimeoutMs ?? DEFAULTS.closeTimeoutMs;
    await withTimeout(Promise.all(results), timeout).catch(() => undefined);
    // A pool that does not close in time is destroyed: close() is bounded whatever a sandbox does.
    await Promise.all(Object.values(e.pools).map((p) => withTimeout(p.close(timeout), timeout + POOL_CLOSE_SLACK_MS).catch(() => p.destroy())));
    this.#stopWatchdog();
    await withTimeout(Promise.all(this.#storing), timeout).catch(() => undefined);
    await e.store?.close();
  }

  /** Kill every sandbox now; live streams fail with ERR_HOST_CLOSED. Idempotent. */
  async destroy(): Promise<void> {
    const error = new SluiceError('ERR_HOST_CLOSED', 'Host destroyed');
    this.#closing ??= Promise.resolve();
    for (const s of [...this.#live.values()]) s.kill(error);
    await Promise.all(Object.values(this.#e.pools).map((p) => p.destroy()));
    this.#stopWatchdog();
    await this.#e.store?.close();
  }

  #stopWatchdog(): void {
    clearInterval(this.#watchdog);
    this.#watchdog = undefined;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

const POOL_CLOSE_SLACK_MS = 1000;

/**
 * A `log` stream's credit returns when its batches commit, and every commit waits for a
 * disk sync (~1-2 ms). A window that fits in one batch leaves a single append in flight,
 * so the plugin idles through every sync; a few batches' worth keeps it producing while
 * earlier ones commit. Memory stays bounded by the window either way.
 */
const LOG_WINDOW: Readonly<Window> = Object.freeze({ chunks: 4096, bytes: 4 * 1024 * 1024 });

function logWindow(window: Window): Window {
  return { chunks: Math.max(window.chunks, LOG_WINDOW.chunks), bytes: Math.max(window.bytes, LOG_WINDOW.bytes) };
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new SluiceError('ERR_HOST_CLOSED', `Timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

function reasonText(reason: unknown): string {
  if (reason instanceof Error) return reason.message;
  return typeof reason === 'string' ? reason : 'aborted';
}

/** Hand the sandbox what is left of the stream's maxBytes, so it stops the plugin at the limit itself (after `stream.setup`). */
function setByteBudget(spec: StartSpec, stream: HostStream): void {
  const budget = stream.byteBudget();
  if (budget === undefined) delete spec.byteBudget;
  else spec.byteBudget = budget;
}

/** The isolate sandbox, when its modules are present in this build. */
async function loadIsolateSandbox(options: { processes?: number }): Promise<{ pool: SandboxPool; bundle: IsolateBundler } | undefined> {
  let poolMod: Record<string, unknown>;
  let bundleMod: Record<string, unknown>;
  try {
    poolMod = (await import(new URL('./sandbox/isolate-pool.js', import.meta.url).href)) as Record<string, unknown>;
    bundleMod = (await import(new URL('../sandbox/isolate/bundle.js', import.meta.url).href)) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  const Pool = poolMod.IsolatePool as new (o: object) => SandboxPool;
  const bundle = bundleMod.bundleForIsolate as IsolateBundler;
  return { pool: new Pool({ processes: options.processes ?? DEFAULTS.isolateProcesses }), bundle: (entry, o) => bundle(entry, o) };
}
