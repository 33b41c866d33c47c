/**
 * The sandbox process of the isolate sandbox: forked by host/sandbox/isolate-pool.ts,
 * it hosts one isolated-vm isolate per stream. On Node 20 with isolated-vm 5 a single
 * hostile allocation can abort this whole process; the host then kills and replaces it
 * and only the streams in here fail. So nothing here trusts the isolates, and the host
 * trusts nothing here beyond the message envelope.
 *
 * Rules this file keeps:
 * - Never call into an isolate synchronously. Every call is an async `apply`, so this
 *   thread stays free to watch `cpuTime` and heap usage and to `dispose()` a violator.
 * - Plugin code never sees ivm: the isolate gets two Callbacks as arguments of the
 *   bundle's wrapper function (runtime.ts keeps them in a closure), and the Reference to
 *   its `dispatch` stays on this side.
 * - Everything out of an isolate is parsed (`parseFromSandbox`) and its chunks copied
 *   again (`copyChunk`) here, outside the plugin's realm; a bad message ends that
 *   stream with a coded error, never the process.
 *
 * Two channels share the IPC pipe, tagged by `t`: comlink for the control plane
 * (describe, ping, stats) and plain messages keyed by stream id for the data path.
 */
import { writeSync } from 'node:fs';
import { Socket } from 'node:net';
import ivm from 'isolated-vm';
import * as Comlink from 'comlink';
import { UNPACKED, copyChunk, type ChunkData, type ChunkRules } from '../../protocol/chunk.js';
import { CreditLedger } from '../../protocol/credit.js';
import { SluiceError, toWireError, type ErrorCode, type WireError } from '../../protocol/errors.js';
import {
  batchCount,
  parseFromSandbox,
  parseStartSpec,
  parseToSandbox,
  parseWireError,
  type ActionKind,
  type FromSandbox,
  type StartSpec,
  type ToSandbox,
} from '../../protocol/messages.js';
import type { DescribeResult, DispatchOp } from './runtime.js';
import { DATA_FD, encodeFrame, type OutItem } from './frames.js';

export type { OutItem } from './frames.js';

// ---- IPC shapes (the host imports these as types only) ----------------------------

export interface PluginScript {
  id: string;
  name: string;
  script: string;
}

export type HostToProcess =
  | { t: 'c'; d: unknown }
  | { t: 'start'; s: string; plugin: PluginScript; spec: StartSpec }
  | { t: 'to'; s: string; m: ToSandbox }
  | { t: 'kill'; s: string; e: WireError };

/** Over IPC; stream items go over the data pipe (frames.ts). */
export type ProcessToHost = { t: 'c'; d: unknown } | { t: 'ready'; pid: number };

export interface DescribeOptions {
  memoryMb: number;
  timeoutMs: number;
}

export type DescribeOutcome =
  | { ok: true; manifest: unknown; actions: Record<string, ActionKind> }
  | { ok: false; error: WireError };

export interface ProcessStats {
  pid: number;
  /** Stream isolates alive now. */
  isolates: number;
  /** Sum of the latest heap samples (used + external) of those isolates, in bytes. */
  heapUsed: number;
  rss: number;
}

/** The comlink API of a sandbox process. */
export interface ProcessApi {
  ping(): number;
  describe(script: string, options: DescribeOptions): Promise<DescribeOutcome>;
  stats(): ProcessStats;
}

// ---- tuning ------------------------------------------------------------------------

/** How often the watchdog reads each isolate's CPU time: well inside the 250 ms slack. */
const WATCH_INTERVAL_MS = 25;
/** Heap samples are async tasks on the isolate; every few watchdog ticks is enough. */
const HEAP_SAMPLE_EVERY = 4;
const MIB = 1024 * 1024;
const HARD_LIMIT_FACTOR = 1.5;
const HARD_LIMIT_MIN_HEADROOM_MB = 32;
const NS_PER_MS = 1_000_000n;
const CHUNK_DEPTH = 64;
/** Compiled-code caches kept, by plugin id. */
const CODE_CACHE_SIZE = 32;
/** Log lines a stream may send in a burst, and refilled per second after it. */
const LOG_BURST = 200;
const LOG_PER_SECOND = 100;
/** Sandbox errors a plugin may cause; any other code from an isolate is reported as ERR_PLUGIN_THREW. */
const PLUGIN_ERROR_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ERR_PLUGIN_THREW',
  'ERR_PARAMS_INVALID',
  'ERR_ACTION_NOT_FOUND',
  'ERR_CHUNK_INVALID',
  'ERR_LIMIT_CHUNK_BYTES',
  'ERR_CANCELLED',
  'ERR_INVALID_ARGUMENT',
  'ERR_PLUGIN_LOAD',
]);

// ---- outbox: one data frame per turn of the event loop ------------------------------

class Outbox {
  private items: OutItem[] = [];
  /** Index in `items` of each stream's latest item, to coalesce checkpoints. */
  private latest = new Map<string, number>();
  private scheduled = false;
  constructor(private readonly send: (items: OutItem[]) => void) {}

  push(item: OutItem): void {
    // Checkpoints need no credit, so a plugin can send them in a loop; only the newest
    // one matters, so one replaces another with nothing of its stream in between.
    if ('m' in item && item.m.type === 'checkpoint') {
      const at = this.latest.get(item.s);
      const prev = at === undefined ? undefined : this.items[at];
      if (at !== undefined && prev !== undefined && 'm' in prev && prev.m.type === 'checkpoint') {
        this.items[at] = item;
        return;
      }
    }
    this.latest.set(item.s, this.items.length);
    this.items.push(item);
    // A batch is what the host is waiting for (it cannot grant credit before it has it):
    // send it now, with whatever small messages queued before it.
    if ('m' in item && item.m.type === 'batch') {
      this.flush();
      return;
    }
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.flush();
    });
  }

  flush(): void {
    if (this.items.length === 0) return;
    const items = this.items;
    this.items = [];
    this.latest.clear();
    this.send(items);
  }
}

// ---- one stream, one isolate ------------------------------------------------------

type Dispatch = ivm.Reference<(op: DispatchOp, arg?: unknown) => unknown>;

class IsolateStream {
  private isolate: ivm.Isolate | undefined;
  private dispatch: Dispatch | undefined;
  private ended = false;
  /** Host messages that arrived before the plugin was loaded. */
  private early: ToSandbox[] = [];
  private wakeTimer: { timeout: NodeJS.Timeout } | { immediate: NodeJS.Immediate } | undefined;
  private wakeDue = Infinity;
  private nextSeq: number;
  private checkpointSeq = 0;
  private readonly ledger: CreditLedger;
  private readonly rules: ChunkRules;
  private readonly cpuLimitNs: bigint;
  private readonly memoryLimitBytes: number;
  private heapSamplePending = false;
  private emitted = false;
  private logTokens = LOG_BURST;
  private logRefilledAt = Date.now();
  private logsDropped = 0;
  heapUsed = 0;

  constructor(
    readonly id: string,
    private readonly spec: StartSpec,
    private readonly owner: SandboxProcess,
  ) {
    this.nextSeq = spec.resume?.seq ?? 0;
    this.ledger = new CreditLedger(spec.window);
    this.rules = { maxDepth: CHUNK_DEPTH, maxChunkBytes: spec.limits.maxChunkBytes };
    this.cpuLimitNs = BigInt(spec.limits.cpuMs) * NS_PER_MS;
    this.memoryLimitBytes = spec.limits.memoryMb * MIB;
  }

  async start(plugin: PluginScript): Promise<void> {
    try {
      const fresh = this.owner.freshIsolate(this.id, hardMemoryLimitMb(this.spec.limits.memoryMb));
      const isolate = fresh.isolate;
      this.isolate = isolate;
      const context = await fresh.context;
      const script = await this.owner.compile(isolate, plugin);
      if (this.ended) return;
      const wrapper = (await script.run(context, { reference: true })) as ivm.Reference<(...args: unknown[]) => unknown>;
      const emit = new ivm.Callback((msg: unknown, packedBytes: unknown) => this.onEmit(msg, packedBytes), { ignored: true });
      const wake = new ivm.Callback((delayMs: unknown) => this.onWake(delayMs), { ignored: true });
      // Runs the plugin's top level; a plugin that spins here meets the watchdog.
      const dispatch = (await wrapper.apply(undefined, [emit, wake], { result: { reference: true } })) as Dispatch;
      wrapper.release();
      if (this.ended) return;
      this.dispatch = dispatch;
      // The runtime keeps a Reference to its own dispatch for 0 ms ticks (see runtime.ts);
      // calls run in order, so it has it before the plugin starts.
      dispatch.applyIgnored(undefined, ['bind', dispatch]);
      dispatch.apply(undefined, ['start', this.spec], { arguments: { copy: true } }).catch((err: unknown) => this.callFailed(err));
      for (const msg of this.early) this.call('to', msg);
      this.early = [];
    } catch (err) {
      if (this.ended) return;
      if (this.isolate?.isDisposed === true) this.fail(this.disposedError(err));
      else this.fail(toWireError(new SluiceError('ERR_PLUGIN_LOAD', `Plugin failed to load in its isolate: ${describe(err)}`), false));
    }
  }

  /** A message from the host for this stream. */
  deliver(msg: ToSandbox): void {
    if (this.ended) return;
    if (msg.type === 'credit') {
      // The ledger mirrors what the host granted: consume() then flush() adds it to the outstanding credit.
      this.ledger.consume(msg.chunks, msg.bytes);
      this.ledger.flush();
    }
    if (this.dispatch === undefined) this.early.push(msg);
    else this.call('to', msg);
  }

  /** Called by the watchdog every WATCH_INTERVAL_MS. */
  watch(sampleHeap: boolean): void {
    const isolate = this.isolate;
    if (this.ended || isolate === undefined) return;
    if (isolate.isDisposed) {
      // Calls into the isolate do not wait for an outcome (see call()), so this is where
      // ivm's own memoryLimit disposing it mid-task is noticed.
      this.fail(this.disposedError(new Error('isolate disposed')));
      return;
    }
    if (this.cpuLimitNs > 0n && isolate.cpuTime > this.cpuLimitNs) {
      this.fail(limitError('ERR_LIMIT_CPU', `Stream used more than its ${this.spec.limits.cpuMs} ms of CPU time`, { cpuMs: this.spec.limits.cpuMs }));
      return;
    }
    if (!sampleHeap || this.heapSamplePending) return;
    // An async sample waits for the isolate to go idle; a spinning allocator meets ivm's
    // own memoryLimit instead (and is reported as ERR_LIMIT_MEMORY in disposedError()).
    this.heapSamplePending = true;
    isolate.getHeapStatistics().then(
      (h) => {
        this.heapSamplePending = false;
        this.heapUsed = h.used_heap_size + h.externally_allocated_size;
        if (!this.ended && this.heapUsed > this.memoryLimitBytes) {
          this.fail(
            limitError('ERR_LIMIT_MEMORY', `Stream used ${Math.round(this.heapUsed / MIB)} MiB, over its ${this.spec.limits.memoryMb} MiB memory limit`, {
              memoryMb: this.spec.limits.memoryMb,
            }),
          );
        }
      },
      () => {
        // The isolate was disposed meanwhile; its stream already has its outcome.
        this.heapSamplePending = false;
      },
    );
  }

  /** End the stream with `error` (a limit, a kill, bad output) and free the isolate. */
  fail(error: WireError): void {
    if (this.ended) return;
    this.ended = true;
    this.owner.out({ s: this.id, x: error });
    this.release();
  }

  /**
   * Fire and forget: waiting for the outcome would cost a thread hop back per call (one
   * per credit grant). The runtime reports its own failures as the stream's error, and
   * the watchdog notices an isolate ivm disposed.
   */
  private call(op: 'to' | 'tick', arg?: unknown): void {
    const dispatch = this.dispatch;
    if (dispatch === undefined || this.ended) return;
    try {
      dispatch.applyIgnored(undefined, [op, arg], { arguments: { copy: true } });
    } catch (err) {
      // Disposed by ivm since the last call.
      this.callFailed(err);
    }
  }

  private callFailed(err: unknown): void {
    if (this.ended) return;
    if (this.isolate?.isDisposed === true) this.fail(this.disposedError(err));
    else this.fail(toWireError(new SluiceError('ERR_PLUGIN_THREW', `Isolate runtime failed: ${describe(err)}`), false));
  }

  /** We dispose only after marking the stream ended, so any other disposal is ivm's memoryLimit. */
  private disposedError(err: unknown): WireError {
    return limitError('ERR_LIMIT_MEMORY', `Stream exceeded its ${this.spec.limits.memoryMb} MiB memory limit (${describe(err)})`, {
      memoryMb: this.spec.limits.memoryMb,
    });
  }

  private onWake(delayMs: unknown): void {
    if (this.ended || typeof delayMs !== 'number' || !(delayMs >= 0)) return;
    const due = Date.now() + delayMs;
    if (this.wakeTimer !== undefined && due >= this.wakeDue) return;
    this.clearWake();
    this.wakeDue = due;
    const fire = (): void => {
      this.wakeTimer = undefined;
      this.wakeDue = Infinity;
      this.call('tick');
    };
    this.wakeTimer = delayMs < 1 ? { immediate: setImmediate(fire) } : { timeout: setTimeout(fire, delayMs) };
  }

  private clearWake(): void {
    const t = this.wakeTimer;
    if (t === undefined) return;
    if ('timeout' in t) clearTimeout(t.timeout);
    else clearImmediate(t.immediate);
    this.wakeTimer = undefined;
    this.wakeDue = Infinity;
  }

  /** A message from the plugin's realm: untrusted. A batch's packed bytes come apart from it (see runtime.ts). */
  private onEmit(raw: unknown, packedBytes: unknown): void {
    if (this.ended) return;
    let msg: FromSandbox;
    try {
      if (packedBytes !== undefined) {
        // ivm made both copies for this call; whatever their shape, parseFromSandbox judges the result.
        const packed = (raw as { packed?: unknown } | null)?.packed;
        if (packed === null || typeof packed !== 'object') throw new SluiceError('ERR_PROTOCOL', 'Packed bytes came with a message that has no `packed`');
        (packed as { buffer?: unknown }).buffer = packedBytes;
      }
      // Packed bytes stay packed on their way to the host: one buffer per batch over IPC.
      msg = this.check(parseFromSandbox(raw, { keepPacked: true }));
    } catch (err) {
      this.fail(toWireError(err, false, 'ERR_PROTOCOL'));
      return;
    }
    if (msg.type === 'log' && !this.allowLog()) return;
    this.owner.out({ s: this.id, m: msg });
    if (!this.emitted) {
      this.emitted = true;
      // Its first message is on its way: a good moment to make the next stream's isolate.
      this.owner.prepareSpare(hardMemoryLimitMb(this.spec.limits.memoryMb));
    }
    if (msg.type === 'end' || msg.type === 'error') {
      this.ended = true;
      this.release();
    }
  }

  private check(msg: FromSandbox): FromSandbox {
    switch (msg.type) {
      case 'batch': {
        if (msg.firstSeq !== this.nextSeq) {
          throw new SluiceError('ERR_PROTOCOL', `Batch starts at seq ${msg.firstSeq}, expected ${this.nextSeq}`);
        }
        const sizes = msg.packed?.sizes;
        const count = batchCount(msg);
        // Copies of the chunks that are not packed, in order, as the batch carries them.
        const values: ChunkData[] = [];
        let bytes = 0;
        let largest = 0;
        for (let i = 0; i < count; i++) {
          const size = sizes === undefined ? UNPACKED : sizes[i]!;
          if (size !== UNPACKED) {
            // Packed bytes arrived in a buffer ivm copied out of the isolate: already ours, and any bytes are valid.
            if (this.rules.maxChunkBytes > 0 && size > this.rules.maxChunkBytes) {
              throw new SluiceError('ERR_LIMIT_CHUNK_BYTES', `Chunk is larger than maxChunkBytes (${this.rules.maxChunkBytes}) at chunk`, {
                details: { limit: 'maxChunkBytes', max: this.rules.maxChunkBytes, path: 'chunk' },
              });
            }
            bytes += size;
            if (size > largest) largest = size;
            continue;
          }
          const copy = copyChunk(msg.chunks[values.length], this.rules);
          values.push(copy.data);
          bytes += copy.bytes;
          if (copy.bytes > largest) largest = copy.bytes;
        }
        if (!this.ledger.receive(count, bytes, largest)) {
          throw new SluiceError('ERR_PROTOCOL', `Sandbox sent ${count} chunks (${bytes} bytes) beyond its credit`);
        }
        this.nextSeq += count;
        const batch: FromSandbox = { type: 'batch', firstSeq: msg.firstSeq, chunks: values, bytes, largest };
        if (msg.packed !== undefined) batch.packed = msg.packed;
        return batch;
      }
      case 'checkpoint':
        // A checkpoint travels after its batch, which may also hold chunks yielded after it:
        // never ahead of the chunks sent, never behind the previous checkpoint.
        if (msg.seq > this.nextSeq || msg.seq < this.checkpointSeq) {
          throw new SluiceError('ERR_PROTOCOL', `Checkpoint at seq ${msg.seq}, expected ${this.checkpointSeq}..${this.nextSeq}`);
        }
        this.checkpointSeq = msg.seq;
        return { type: 'checkpoint', seq: msg.seq, state: copyChunk(msg.state, this.rules, 'checkpoint state').data };
      case 'error': {
        const e = msg.error;
        if (PLUGIN_ERROR_CODES.has(e.code)) return { type: 'error', error: { code: e.code, message: e.message, ...(e.stack === undefined ? {} : { stack: e.stack }), ...(e.details === undefined ? {} : { details: e.details }) } };
        // A plugin cannot claim a host-side outcome (a retriable crash, a limit).
        return { type: 'error', error: { code: 'ERR_PLUGIN_THREW', message: `${e.code}: ${e.message}` } };
      }
      case 'progress':
      case 'log':
      case 'end':
      case 'input-credit':
        return msg;
    }
  }

  private allowLog(): boolean {
    const now = Date.now();
    this.logTokens = Math.min(LOG_BURST, this.logTokens + ((now - this.logRefilledAt) * LOG_PER_SECOND) / 1000);
    this.logRefilledAt = now;
    if (this.logTokens < 1) {
      this.logsDropped++;
      return false;
    }
    this.logTokens -= 1;
    if (this.logsDropped > 0) {
      this.owner.out({ s: this.id, m: { type: 'log', level: 'warn', message: `${this.logsDropped} log lines dropped (more than ${LOG_PER_SECOND}/s)` } });
      this.logsDropped = 0;
    }
    return true;
  }

  /** Dispose the isolate; the stream's outcome has been queued already. */
  private release(): void {
    this.clearWake();
    this.early = [];
    const isolate = this.isolate;
    this.isolate = undefined;
    this.dispatch = undefined;
    if (isolate !== undefined) disposeQuietly(isolate);
    this.owner.forget(this.id);
  }
}

/**
 * Two memory guards that never race: the heap poll enforces `memoryMb` itself (heap plus
 * external memory, reporting how much was used), and isolated-vm's own limit sits above
 * it as the backstop for growth too fast for a 100 ms poll to see in time.
 */
function hardMemoryLimitMb(memoryMb: number): number {
  return Math.max(Math.ceil(memoryMb * HARD_LIMIT_FACTOR), memoryMb + HARD_LIMIT_MIN_HEADROOM_MB);
}

function limitError(code: ErrorCode, message: string, details: Record<string, unknown>): WireError {
  return toWireError(new SluiceError(code, message, { details }), false);
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

function disposeQuietly(isolate: ivm.Isolate): void {
  try {
    if (!isolate.isDisposed) isolate.dispose();
  } catch {
    // Disposed by ivm between the check and the call.
  }
}

// ---- the process ------------------------------------------------------------------

/** An isolate with an empty context, made before its stream asked (SandboxProcess.freshIsolate). */
interface FreshIsolate {
  isolate: ivm.Isolate;
  context: Promise<ivm.Context>;
  memoryLimitMb: number;
  /** The stream it serves, for onCatastrophicError. */
  owner: { id: string };
}

class SandboxProcess {
  private readonly streams = new Map<string, IsolateStream>();
  private readonly codeCache = new Map<string, ivm.ExternalCopy<ArrayBuffer>>();
  private readonly outbox: Outbox;
  private watchTimer: NodeJS.Timeout | undefined;
  private watchTicks = 0;
  private spare: FreshIsolate | undefined;
  private spareTimer: NodeJS.Immediate | undefined;
  private closing = false;

  constructor(sendItems: (items: OutItem[]) => void) {
    this.outbox = new Outbox(sendItems);
  }

  out(item: OutItem): void {
    this.outbox.push(item);
  }

  forget(id: string): void {
    this.streams.delete(id);
    if (this.streams.size === 0 && this.watchTimer !== undefined) {
      clearInterval(this.watchTimer);
      this.watchTimer = undefined;
    }
  }

  onHostMessage(msg: HostToProcess): void {
    switch (msg.t) {
      case 'start': {
        let spec: StartSpec;
        try {
          spec = parseStartSpec(msg.spec);
        } catch (err) {
          this.out({ s: String(msg.s), x: toWireError(err, false, 'ERR_PROTOCOL') });
          return;
        }
        if (this.streams.has(spec.streamId)) {
          this.out({ s: spec.streamId, x: toWireError(new SluiceError('ERR_PROTOCOL', `Stream ${spec.streamId} is already running here`), false) });
          return;
        }
        const stream = new IsolateStream(spec.streamId, spec, this);
        this.streams.set(spec.streamId, stream);
        this.watchTimer ??= setInterval(() => this.watch(), WATCH_INTERVAL_MS);
        void stream.start(msg.plugin);
        return;
      }
      case 'to': {
        const stream = this.streams.get(msg.s);
        if (stream === undefined) return;
        let m: ToSandbox;
        try {
          m = parseToSandbox(msg.m);
        } catch (err) {
          stream.fail(toWireError(err, false, 'ERR_PROTOCOL'));
          return;
        }
        stream.deliver(m);
        return;
      }
      case 'kill': {
        let error: WireError;
        try {
          error = parseWireError(msg.e);
        } catch {
          error = toWireError(new SluiceError('ERR_CANCELLED', 'Stream was terminated'), false);
        }
        const stream = this.streams.get(msg.s);
        // Always answer, even for a stream that already ended: the host waits for this.
        if (stream === undefined) this.out({ s: msg.s, x: error });
        else stream.fail(error);
        return;
      }
      case 'c':
        return;
    }
  }

  private watch(): void {
    const sampleHeap = ++this.watchTicks % HEAP_SAMPLE_EVERY === 0;
    for (const stream of this.streams.values()) stream.watch(sampleHeap);
  }

  async compile(isolate: ivm.Isolate, plugin: PluginScript): Promise<ivm.Script> {
    // isolated-vm sets these on a compiled Script, but its typings leave them out.
    type CachingScript = ivm.Script & { cachedData?: ivm.ExternalCopy<ArrayBuffer>; cachedDataRejected?: boolean };
    const cached = this.codeCache.get(plugin.id);
    const filename = `file:///sluice-plugin/${encodeURIComponent(plugin.name)}.js`;
    if (cached !== undefined) {
      const script: CachingScript = await isolate.compileScript(plugin.script, { filename, cachedData: cached });
      if (script.cachedDataRejected !== true) {
        // Refresh its LRU position.
        this.codeCache.delete(plugin.id);
        this.codeCache.set(plugin.id, cached);
        return script;
      }
      this.codeCache.delete(plugin.id);
    }
    const script: CachingScript = await isolate.compileScript(plugin.script, { filename, produceCachedData: true });
    if (script.cachedData !== undefined) {
      this.codeCache.set(plugin.id, script.cachedData);
      for (const key of this.codeCache.keys()) {
        if (this.codeCache.size <= CODE_CACHE_SIZE) break;
        this.codeCache.delete(key);
      }
    }
    return script;
  }

  /**
   * A new isolate with an empty context for stream `id`. Making one takes 1-3 ms, most of
   * a stream's time to first chunk, so a spare is made ahead (prepareSpare) and taken
   * here when its memory limit fits. It is bare: no plugin code has run in it, and every
   * stream still gets an isolate of its own.
   */
  freshIsolate(id: string, memoryLimitMb: number): FreshIsolate {
    let fresh = this.spare;
    this.spare = undefined;
    if (fresh !== undefined && (fresh.memoryLimitMb !== memoryLimitMb || fresh.isolate.isDisposed)) {
      disposeQuietly(fresh.isolate);
      fresh = undefined;
    }
    fresh ??= this.makeIsolate(memoryLimitMb);
    fresh.owner.id = id;
    return fresh;
  }

  /** Make a spare for the next stream, soon and off the current one's path (`new ivm.Isolate` blocks this thread). */
  prepareSpare(memoryLimitMb: number): void {
    if (this.spare !== undefined || this.spareTimer !== undefined || this.closing) return;
    this.spareTimer = setImmediate(() => {
      this.spareTimer = undefined;
      if (this.spare === undefined && !this.closing) this.spare = this.makeIsolate(memoryLimitMb);
    });
  }

  private makeIsolate(memoryLimitMb: number): FreshIsolate {
    const owner = { id: '(spare isolate)' };
    const isolate = new ivm.Isolate({ memoryLimit: memoryLimitMb, onCatastrophicError: (message) => this.catastrophe(owner.id, message) });
    const context = isolate.createContext();
    // A spare disposed before use rejects; the stream that awaits it sees that, nobody else.
    context.catch(() => undefined);
    return { isolate, context, memoryLimitMb, owner };
  }

  /** Report which stream took the process down, then let it die (ivm: state is unrecoverable). */
  catastrophe(streamId: string, message: string): void {
    try {
      writeSync(2, `sluice isolate process ${process.pid}: catastrophic V8 error in stream ${streamId}: ${message}\n`);
    } finally {
      process.abort();
    }
  }

  /** Load the bundle in a throwaway isolate and read its manifest and actions. */
  async describe(script: string, options: DescribeOptions): Promise<DescribeOutcome> {
    const isolate = new ivm.Isolate({ memoryLimit: options.memoryMb, onCatastrophicError: (m) => this.catastrophe('(describe)', m) });
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      isolate.dispose();
    }, options.timeoutMs);
    try {
      const context = await isolate.createContext();
      const compiled = await isolate.compileScript(script, { filename: 'file:///sluice-plugin/describe.js' });
      const wrapper = (await compiled.run(context, { reference: true })) as ivm.Reference<(...args: unknown[]) => unknown>;
      const ignore = new ivm.Callback(() => undefined, { ignored: true });
      const dispatch = (await wrapper.apply(undefined, [ignore, ignore], { result: { reference: true } })) as Dispatch;
      const result = (await dispatch.apply(undefined, ['describe'], { result: { copy: true } })) as DescribeResult;
      return parseDescribe(result);
    } catch (err) {
      const why = timedOut
        ? `did not load within ${options.timeoutMs} ms`
        : isolate.isDisposed
          ? `exceeded ${options.memoryMb} MiB while loading (${describe(err)})`
          : `threw while loading: ${describe(err)}`;
      return { ok: false, error: toWireError(new SluiceError('ERR_PLUGIN_LOAD', `Plugin ${why}`), false) };
    } finally {
      clearTimeout(timer);
      if (!isolate.isDisposed) isolate.dispose();
    }
  }

  stats(): ProcessStats {
    let heapUsed = 0;
    for (const s of this.streams.values()) heapUsed += s.heapUsed;
    return { pid: process.pid, isolates: this.streams.size, heapUsed, rss: process.memoryUsage.rss() };
  }

  disposeAll(): void {
    this.closing = true;
    if (this.spareTimer !== undefined) clearImmediate(this.spareTimer);
    if (this.spare !== undefined) disposeQuietly(this.spare.isolate);
    this.spare = undefined;
    for (const s of [...this.streams.values()]) s.fail(toWireError(new SluiceError('ERR_HOST_CLOSED', 'Sandbox process is shutting down'), false));
  }
}

function parseDescribe(result: unknown): DescribeOutcome {
  const r = result as Partial<Record<string, unknown>> | null;
  if (r === null || typeof r !== 'object') throw new SluiceError('ERR_PLUGIN_LOAD', 'describe returned no object');
  if (r.ok === false) return { ok: false, error: parseWireError(r.error) };
  const actions: Record<string, ActionKind> = {};
  const raw = r.actions as Record<string, unknown> | null;
  if (raw === null || typeof raw !== 'object') throw new SluiceError('ERR_PLUGIN_LOAD', 'describe returned no actions');
  for (const [name, kind] of Object.entries(raw)) {
    if (kind !== 'unary' && kind !== 'stream') throw new SluiceError('ERR_PLUGIN_LOAD', `describe returned kind ${String(kind)} for action ${name}`);
    actions[name] = kind;
  }
  return { ok: true, manifest: r.manifest, actions };
}

// ---- comlink over the IPC channel -------------------------------------------------

type Listener = (ev: { data: unknown }) => void;

function ipcEndpoint(post: (msg: ProcessToHost) => void, listeners: Set<Listener>): Comlink.Endpoint {
  return {
    postMessage: (d: unknown) => post({ t: 'c', d }),
    addEventListener: (_type: string, l: unknown) => void listeners.add(l as Listener),
    removeEventListener: (_type: string, l: unknown) => void listeners.delete(l as Listener),
  } as Comlink.Endpoint;
}

function main(): void {
  const send = process.send?.bind(process);
  if (send === undefined) throw new Error('sluice isolate process must be started with an IPC channel (child_process.fork)');
  const post = (msg: ProcessToHost): void => {
    send(msg);
  };
  const data = new Socket({ fd: DATA_FD, readable: false, writable: true });
  // Without its data pipe the process cannot serve; the host sees it exit.
  data.on('error', () => process.exit(1));
  const sandbox = new SandboxProcess((items) => {
    // Corked, the frame's parts go out in one writev; the packed bytes are not copied.
    data.cork();
    for (const part of encodeFrame(items)) data.write(part);
    data.uncork();
  });
  const comlinkListeners = new Set<Listener>();
  const api: ProcessApi = {
    ping: () => Date.now(),
    describe: (script, options) => sandbox.describe(script, options),
    stats: () => sandbox.stats(),
  };
  Comlink.expose(api, ipcEndpoint(post, comlinkListeners));
  process.on('message', (raw: unknown) => {
    const msg = raw as HostToProcess;
    if (msg === null || typeof msg !== 'object') return;
    if (msg.t === 'c') {
      for (const l of comlinkListeners) l({ data: msg.d });
      return;
    }
    sandbox.onHostMessage(msg);
  });
  // The host went away (closed the channel, or died): nothing left to serve.
  process.on('disconnect', () => {
    sandbox.disposeAll();
    process.exit(0);
  });
  post({ t: 'ready', pid: process.pid });
}

// Only run as the forked entry, so the host can import this module's types freely.
if (typeof process.send === 'function' && process.env.SLUICE_ISOLATE_PROCESS === '1') main();
