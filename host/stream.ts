/**
 * One plugin stream as the host sees it: the consumer's async iterator on one side,
 * the sandbox's batches and the credit it is owed on the other.
 *
 * Memory is bounded by credit: the sandbox may only send what it was granted, the
 * host grants back only what the consumer took, and a sandbox that overspends is
 * stopped (ERR_PROTOCOL). So the queue here never holds more than one window.
 *
 * Ending has two sides that settle separately. The *outcome* (done, failed,
 * cancelled) is what the consumer sees, after the chunks before it. The *exit* is
 * the sandbox being gone, cooperatively or by a hard stop after the grace period;
 * `result` settles then, and the host frees the stream's slot.
 */
import { EventEmitter } from 'node:events';
import type { ChunkData } from '../protocol/chunk.js';
import { CreditBalance, CreditLedger, DEFAULT_WINDOW, type Window } from '../protocol/credit.js';
import { UNPACKED, copyChunk, packedLength, unpackChunks, type PackedBytes } from '../protocol/chunk.js';
import { SluiceError, fromWireError, toWireError } from '../protocol/errors.js';
import { LIMIT_ERROR, type Limits } from '../protocol/limits.js';
import { MAX_RECYCLED_BUFFERS, batchCount, type ActionKind, type ByteBudget, type FromSandbox, type ToSandbox } from '../protocol/messages.js';
import { LogConsumer } from './log-consumer.js';
import type { SandboxEvents, SandboxHandle } from './sandbox/types.js';
import type { Chunk, Progress, ReadEvent, SluiceStream, StreamEvents, StreamResult, StreamStatus } from './types.js';

interface Batch {
  firstSeq: number;
  /** How many chunks the batch holds. */
  count: number;
  /** Every chunk, or with `packed` only those not packed, in order (PackedBytes). */
  chunks: unknown[];
  /** Next of `chunks` to hand out: chunks are taken in order, packed or not. */
  nextValue: number;
  bytes: number;
  /** Next chunk index to hand out. */
  pos: number;
  /** Bytes of this batch already returned as credit. */
  returned: number;
  /**
   * The batch's packed byte chunks, in the one buffer they crossed in. Consumers get
   * views, not a buffer each: a fresh ArrayBuffer costs about 1 us here, ten times a
   * view, which was a third of the host's CPU per 1 KiB chunk. A buffer the sandbox
   * wants back (`movesBuffers`) is first copied whole, once, into `own`; so a chunk a
   * consumer keeps holds at most its batch's packed bytes (MAX_BATCH_BYTES and one
   * chunk), as a pooled Node Buffer holds its slab.
   */
  packed: { bytes: Uint8Array<ArrayBuffer>; sizes: Int32Array; offset: number; own: Uint8Array<ArrayBuffer> | undefined } | undefined;
}

interface Outcome {
  status: 'done' | 'failed' | 'cancelled';
  error?: SluiceError;
}

type Waiter = { resolve: (r: IteratorResult<Chunk>) => void; reject: (e: unknown) => void };

export interface StreamEngineHooks {
  cancelGraceMs: number;
  /** The stream started running (admitted and attached to a sandbox). */
  running(stream: HostStream): void;
  /** A batch was accepted: for metrics. */
  batch(stream: HostStream, chunks: number, bytes: number): void;
  /** The sandbox is gone (or the stream never got one): free its slot. Called once. */
  finished(stream: HostStream, result: StreamResult): void;
  /** Called when a queued (or retrying) stream is cancelled, to take it out of the queue. */
  dequeue(stream: HostStream): void;
  /**
   * The sandbox died with a retriable error. Return true to keep the stream alive:
   * the host will `setup` and `attach` it again (resuming from its checkpoint).
   */
  retry(stream: HostStream, error: SluiceError): boolean;
}

/** Where a durable stream in `log` mode puts its chunks, and how its readers get them back. */
export interface DurableLog {
  /** Append in order; resolves once committed. */
  append(firstSeq: number, chunks: unknown[]): Promise<unknown>;
  /** Committed chunks from `fromSeq`, live ones included, then the end (see Store.read). */
  read(fromSeq: number, signal: AbortSignal): AsyncIterable<ReadEvent>;
}

export interface StreamSetup {
  limits: Limits;
  window: Window;
  /** First seq the sandbox will produce (non-zero on resume). */
  startSeq: number;
  /**
   * First seq the stream's consumers have not had yet (default `startSeq`). A resumed
   * plugin re-produces chunks from its checkpoint; those below the tail are dropped.
   */
  tail?: number;
}

export class HostStream extends EventEmitter implements SluiceStream, SandboxEvents {
  #status: StreamStatus = 'queued';
  #progress: Progress | undefined;
  #limits: Limits | undefined;
  #ledger: CreditLedger | undefined;
  #handle: SandboxHandle | undefined;
  /** Packed buffers of consumed batches, for the next credit to a sandbox that reuses them. */
  #spare: ArrayBuffer[] = [];
  /** Batches waiting for the consumer; `#bi` is the first not fully consumed. */
  #batches: Batch[] = [];
  #bi = 0;
  #expectedSeq = 0;
  /** Next seq to hand to consumers; repeats below it (after a resume) are dropped. */
  #tail = 0;
  #log: DurableLog | undefined;
  /** Pending log commits, in order; end and error wait behind them. Undefined when idle. */
  #chain: Promise<void> | undefined;
  #chainDepth = 0;
  /** Aborts the log reader of this stream's own iterator when the stream ends unpersisted. */
  readonly #readAbort = new AbortController();
  /** Resolves once `setup` ran (or the stream failed before it): a log reader then knows where to start. */
  #setupDone!: () => void;
  readonly #ready = new Promise<void>((resolve) => {
    this.#setupDone = resolve;
  });
  /** Tail when this run was set up: this stream's own consumer reads the log from here. */
  #firstTail = 0;
  /** The seq after the last committed chunk of this run's appends. */
  #logCommitted = 0;
  /** This stream's own consumer in `log` mode, handed each batch once committed. */
  #consumer: LogConsumer | undefined;
  /** A stream-consuming action's upstream, pumped into the sandbox against input credit. */
  #input: { source: AsyncIterable<unknown>; window: Window; credit: CreditBalance; wake: (() => void) | undefined; iterator: AsyncIterator<unknown> | undefined } | undefined;
  #chunks = 0;
  #bytes = 0;
  #kind: ActionKind | undefined;
  #outcome: Outcome | undefined;
  #waiter: Waiter | undefined;
  #iterating = false;
  #demanded = false;
  #started = false;
  #errorDelivered = false;
  #startedAt = 0;
  /** When the idle clock last restarted: a chunk arrived, or the sandbox got credit back. */
  #idleSince = 0;
  #graceTimer: NodeJS.Timeout | undefined;
  #stopping: SluiceError | undefined;
  #exited = false;
  #pendingCancel: string | undefined;
  readonly result: Promise<StreamResult>;
  #resolveResult!: (r: StreamResult) => void;

  constructor(
    readonly id: string,
    readonly plugin: string,
    readonly action: string,
    private readonly hooks: StreamEngineHooks,
  ) {
    super();
    this.result = new Promise((resolve) => {
      this.#resolveResult = resolve;
    });
  }

  get status(): StreamStatus {
    return this.#status;
  }

  get progress(): Progress | undefined {
    return this.#progress;
  }

  get chunks(): number {
    return this.#chunks;
  }

  get kind(): ActionKind | undefined {
    return this.#kind;
  }

  /** A consumer has asked for a chunk: admission prefers streams somebody waits for. */
  get demanded(): boolean {
    return this.#demanded;
  }

  /** It reached a sandbox. */
  get started(): boolean {
    return this.#started;
  }

  /** True once the outcome is known, even if the sandbox is still stopping. */
  get ended(): boolean {
    return this.#outcome !== undefined;
  }

  // ---- lifecycle, driven by the host ----------------------------------------------

  /** Admitted: the spec the sandbox will get. */
  setup(setup: StreamSetup): void {
    this.#limits = setup.limits;
    this.#ledger = new CreditLedger(setup.window);
    this.#expectedSeq = setup.startSeq;
    this.#tail = setup.tail ?? setup.startSeq;
    if (!this.#started) this.#firstTail = this.#tail;
    this.#setupDone();
  }

  /**
   * Feed `source` to the action as `params.input`. Items of a host stream (`{ seq, data }`)
   * are unwrapped to their data; anything else is sent as it is (JSON data or bytes).
   */
  useInput(source: AsyncIterable<unknown>, window: Window): void {
    this.#input = { source, window, credit: new CreditBalance(window), wake: undefined, iterator: undefined };
  }

  /**
   * Pull from the upstream only while the sandbox has input credit, a tick's worth of
   * items per message; the upstream is returned (cancelled) when this stream ends.
   */
  async #pumpInput(): Promise<void> {
    const input = this.#input!;
    const unwrap = input.source instanceof HostStream;
    const it = (input.iterator = input.source[Symbol.asyncIterator]());
    let batch: unknown[] = [];
    let bytes = 0;
    let seq = 0;
    let flushQueued = false;
    const flush = (): void => {
      if (batch.length === 0) return;
      this.#handle?.send({ type: 'input', firstSeq: seq, chunks: batch, bytes });
      seq += batch.length;
      batch = [];
      bytes = 0;
    };
    try {
      for (;;) {
        if (this.#outcome !== undefined) return;
        if (!input.credit.available) {
          flush();
          await new Promise<void>((resolve) => (input.wake = resolve));
          continue;
        }
        const step = await it.next();
        if (this.#outcome !== undefined) return;
        if (step.done === true) break;
        const value = unwrap ? (step.value as Chunk).data : step.value;
        const copy = copyChunk(value, undefined, 'input item');
        batch.push(copy.data);
        bytes += copy.bytes;
        input.credit.spend(copy.bytes);
        if (!flushQueued) {
          flushQueued = true;
          setImmediate(() => {
            flushQueued = false;
            flush();
          });
        }
      }
      flush();
      this.#handle?.send({ type: 'input-end' });
    } catch (err) {
      flush();
      this.#handle?.send({ type: 'input-error', error: toWireError(err, false, 'ERR_PLUGIN_THREW') });
    }
  }

  #closeInput(): void {
    const input = this.#input;
    if (input === undefined) return;
    input.wake?.();
    // Cancelling this stream cancels its upstream (for a host stream: its plugin).
    void input.iterator?.return?.()?.catch(() => undefined);
  }

  /** `log` durability, decided when the stream is created so its iterator knows what to read. */
  useLog(log: DurableLog): void {
    this.#log = log;
  }

  /** Seq of the first chunk no consumer has had: where a resume starts dropping repeats. */
  get tail(): number {
    return this.#tail;
  }

  /** The sandbox is running the stream. */
  attach(handle: SandboxHandle): void {
    this.#handle = handle;
    this.#idleSince = performance.now();
    if (!this.#started) {
      // A retry re-attaches: the wall clock and the running count carry on from the first start.
      this.#started = true;
      this.#startedAt = this.#idleSince;
      this.#setStatus('running');
      this.hooks.running(this);
      if (this.#input !== undefined) void this.#pumpInput();
    }
    if (this.#stopping !== undefined) this.#stopSandbox(this.#stopping, this.#pendingCancel !== undefined);
  }

  /** The stream failed before it reached a sandbox (bad plugin, params, closed host). */
  failBeforeStart(error: SluiceError): void {
    this.#setupDone();
    this.#decide({ status: error.code === 'ERR_CANCELLED' ? 'cancelled' : 'failed', error });
    this.exit(undefined);
  }

  /** Checked by the host's watchdog: wall and idle limits. */
  checkClock(now: number): void {
    const limits = this.#limits;
    if (limits === undefined || this.#status !== 'running' || this.#outcome !== undefined) return;
    if (limits.wallMs > 0 && now - this.#startedAt > limits.wallMs) {
      this.#limitHit('wallMs', `Stream ran longer than wallMs (${limits.wallMs} ms)`);
    } else if (limits.idleMs > 0 && this.#ledger?.sandboxMayProduce === true && now - this.#idleSince > limits.idleMs) {
      this.#limitHit('idleMs', `Stream produced no chunk for idleMs (${limits.idleMs} ms)`);
    }
  }

  get watchesClock(): boolean {
    return this.#limits !== undefined && (this.#limits.wallMs > 0 || this.#limits.idleMs > 0);
  }

  // ---- SandboxEvents -----------------------------------------------------------------

  message(msg: FromSandbox): void {
    // A stopping stream takes no more data; its logs (a plugin's finally) still count.
    if (this.#stopping !== undefined && (msg.type === 'batch' || msg.type === 'progress' || msg.type === 'checkpoint')) return;
    switch (msg.type) {
      case 'batch':
        this.#onBatch(msg.firstSeq, msg.chunks, msg.bytes, msg.largest, msg.packed);
        return;
      case 'progress':
        this.#progress = msg.message === undefined ? { fraction: msg.fraction } : { fraction: msg.fraction, message: msg.message };
        this.emit('progress', this.#progress);
        return;
      case 'checkpoint':
        this.emit('checkpoint', { seq: msg.seq, state: msg.state });
        return;
      case 'log':
        this.emit('log', { level: msg.level, message: msg.message });
        return;
      case 'input-credit':
        if (this.#input !== undefined) {
          this.#input.credit.grant(msg.chunks, msg.bytes);
          const wake = this.#input.wake;
          this.#input.wake = undefined;
          wake?.();
        }
        return;
      case 'end':
        this.#kind = msg.kind;
        this.#ordered(() => this.#decide({ status: 'done' }));
        return;
      case 'error': {
        const error = fromWireError(msg.error);
        this.#ordered(() => this.#decide(this.#pendingCancel !== undefined && error.code === 'ERR_CANCELLED' ? { status: 'cancelled', error } : { status: 'failed', error }));
        return;
      }
    }
  }

  exit(error: SluiceError | undefined): void {
    if (this.#exited) return;
    clearTimeout(this.#graceTimer);
    this.#graceTimer = undefined;
    this.#handle = undefined;
    if (this.#outcome === undefined && this.#stopping === undefined && error?.retriable === true && this.hooks.retry(this, error)) {
      return; // the host re-attaches it
    }
    this.#exited = true;
    this.#ordered(() => this.#finish(error));
  }

  #finish(error: SluiceError | undefined): void {
    if (this.#outcome === undefined) {
      this.#decide({ status: 'failed', error: error ?? new SluiceError('ERR_SANDBOX_CRASHED', 'Sandbox exited without ending the stream') });
    }
    const outcome = this.#outcome!;
    const result: StreamResult = { status: outcome.status, chunks: this.#chunks, bytes: this.#bytes };
    if (this.#kind !== undefined) result.kind = this.#kind;
    if (outcome.error !== undefined) result.error = outcome.error;
    this.hooks.finished(this, result);
    this.#resolveResult(result);
  }

  #onBatch(firstSeq: number, chunks: unknown[], bytes: number, largest: number, packed: PackedBytes | undefined): void {
    const limits = this.#limits!;
    const ledger = this.#ledger!;
    if (firstSeq !== this.#expectedSeq) {
      this.#protocolError(`batch starts at seq ${firstSeq}, expected ${this.#expectedSeq}`);
      return;
    }
    const count = batchCount({ chunks, packed });
    if (!ledger.receive(count, bytes, largest)) {
      this.#protocolError('sandbox sent more than its credit allows');
      return;
    }
    this.#expectedSeq += count;
    this.#idleSince = performance.now();
    // A resumed plugin re-produces chunks from its checkpoint; consumers already had those below the tail.
    const repeats = Math.min(Math.max(this.#tail - firstSeq, 0), count);
    // Repeats only shrink a batch, so this is true of every batch that crosses maxBytes.
    const mayCrossBytes = limits.maxBytes > 0 && this.#bytes + bytes > limits.maxBytes;
    // The rare paths below cut the batch or hand it to the log: they get every chunk as its own value first.
    if (packed !== undefined && (repeats > 0 || this.#log !== undefined || mayCrossBytes || (limits.maxChunks > 0 && this.#chunks + count - repeats > limits.maxChunks))) {
      chunks = unpackChunks(chunks, packed);
      packed = undefined;
    }
    // From here on `chunks` is every chunk unless the batch is still packed (then `count` of them).
    // Sizes of the repeats, and of every chunk when the batch may cross maxBytes.
    let sizes: number[] | undefined;
    if (repeats > 0 || mayCrossBytes) {
      sizes = chunkSizes(chunks, mayCrossBytes ? chunks.length : repeats);
      if (sizes === undefined) {
        this.#protocolError('a batch holds a chunk that is not chunk data');
        return;
      }
    }
    if (repeats > 0) {
      // Measured, not pro rata: the sandbox counts its byte budget from the tail on (StartSpec.byteBudget)
      // by these sizes, and a count that drifted from its own would leave it waiting for an end that never comes.
      const repeatBytes = Math.min(bytes, sum(sizes!, 0, repeats));
      this.#returnCredit(repeats, repeatBytes);
      if (repeats === chunks.length) return;
      chunks = chunks.slice(repeats);
      sizes = sizes!.slice(repeats);
      bytes -= repeatBytes;
      firstSeq += repeats;
    }
    let accepted = chunks;
    let taken = packed === undefined ? chunks.length : count;
    let takenBytes = bytes;
    let over: 'maxBytes' | 'maxChunks' | undefined;
    if (limits.maxChunks > 0 && this.#chunks + taken > limits.maxChunks) {
      // Never packed here: a batch that crosses maxChunks was unpacked above.
      taken = limits.maxChunks - this.#chunks;
      over = 'maxChunks';
    }
    if (mayCrossBytes && this.#bytes + bytes > limits.maxBytes) {
      // Sizes come per batch; the one batch that crosses is measured chunk by chunk, so
      // every chunk within the limit is delivered and none past it. Measured here, not
      // taken from the sandbox: the sandbox stops its plugin at the same chunk
      // (StartSpec.byteBudget), but this check is what holds against one that lies.
      const room = limits.maxBytes - this.#bytes;
      let fit = 0;
      takenBytes = 0;
      while (fit < taken && takenBytes + sizes![fit]! <= room) takenBytes += sizes![fit++]!;
      if (fit < taken) {
        taken = fit;
        over = 'maxBytes';
      }
    }
    if (taken < chunks.length) accepted = chunks.slice(0, taken);
    if (taken > 0) {
      this.#chunks += taken;
      this.#bytes += takenBytes;
      this.#tail = firstSeq + taken;
      this.hooks.batch(this, taken, takenBytes);
      if (this.#log !== undefined) this.#commit(firstSeq, accepted, takenBytes);
      else {
        const bytesOf = packed === undefined ? undefined : { bytes: new Uint8Array(packed.buffer), sizes: packed.sizes, offset: 0, own: undefined };
        this.#batches.push({ firstSeq, count: taken, chunks: accepted, nextValue: 0, bytes: takenBytes, pos: 0, returned: 0, packed: bytesOf });
        this.#wake();
      }
    }
    if (over === 'maxBytes') this.#limitHit('maxBytes', `Stream exceeded maxBytes (${limits.maxBytes})`);
    else if (over === 'maxChunks') this.#limitHit('maxChunks', `Stream exceeded maxChunks (${limits.maxChunks})`);
  }

  /**
   * What is left of maxBytes for the next run, counted as `#onBatch` counts (undefined
   * without the limit): the sandbox stops its plugin at the chunk that passes it.
   * Call after `setup`, which sets the tail a resumed run's repeats stop at.
   */
  byteBudget(): ByteBudget | undefined {
    const max = this.#limits?.maxBytes ?? 0;
    if (max <= 0) return undefined;
    return { fromSeq: this.#tail, left: Math.max(0, max - this.#bytes) };
  }

  /**
   * `log` durability: the log is the consumer. The append starts now (group commit
   * batches concurrent appends) and credit returns when it commits, so the plugin runs
   * at the log's pace however slow the readers are.
   */
  #commit(firstSeq: number, chunks: unknown[], bytes: number): void {
    const committed = this.#log!.append(firstSeq, chunks);
    this.#ordered(() =>
      committed.then(
        () => {
          this.#logCommitted = firstSeq + chunks.length;
          this.#consumer?.committed(firstSeq, chunks, bytes);
          this.#returnCredit(chunks.length, bytes);
        },
        (err: unknown) => {
          const error = new SluiceError('ERR_STORE_IO', `Appending to the stream's log failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
          this.#decide({ status: 'failed', error });
          this.#stopSandbox(error, false);
        },
      ),
    );
  }

  #returnCredit(chunks: number, bytes: number): void {
    const grant = this.#ledger?.consume(chunks, bytes);
    if (grant !== undefined) this.#grant(grant);
  }

  /** Run `fn` after the pending log commits (at once when there are none). */
  #ordered(fn: () => void | Promise<void>): void {
    if (this.#chain === undefined) {
      const r = fn();
      if (r === undefined) return;
      this.#chainDepth++;
      this.#chain = r.then(() => this.#settleChain());
      return;
    }
    this.#chainDepth++;
    this.#chain = this.#chain.then(fn).then(() => this.#settleChain());
  }

  #settleChain(): void {
    if (--this.#chainDepth === 0) this.#chain = undefined;
  }

  // ---- ending --------------------------------------------------------------------------

  #setStatus(status: StreamStatus): void {
    if (this.#status === status) return;
    this.#status = status;
    this.emit('status', status);
  }

  #decide(outcome: Outcome): void {
    if (this.#outcome !== undefined) return;
    this.#outcome = outcome;
    this.#closeInput();
    if (outcome.status === 'cancelled') this.#dropQueue();
    this.#setStatus(outcome.status);
    this.#wake();
  }

  #limitHit(limit: keyof Limits, message: string): void {
    const error = new SluiceError(LIMIT_ERROR[limit], message, { details: { limit, max: this.#limits![limit] } });
    this.#decide({ status: 'failed', error });
    this.#stopSandbox(error, true);
  }

  #protocolError(message: string): void {
    const error = new SluiceError('ERR_PROTOCOL', `Sandbox broke the protocol: ${message}`);
    this.#decide({ status: 'failed', error });
    this.#stopSandbox(error, false);
  }

  /** Cooperative stop (ctx.signal, the plugin's finally), then a hard stop after the grace period. */
  #stopSandbox(reason: SluiceError, cooperative: boolean): void {
    if (this.#exited) return;
    this.#stopping ??= reason;
    const handle = this.#handle;
    if (handle === undefined) return; // attach() stops it
    if (!cooperative) {
      handle.terminate(reason);
      return;
    }
    handle.send({ type: 'cancel', reason: reason.message });
    if (this.#graceTimer === undefined) {
      this.#graceTimer = setTimeout(() => this.#handle?.terminate(this.#stopping ?? reason), this.hooks.cancelGraceMs);
      this.#graceTimer.unref();
    }
  }

  cancel(reason = 'cancelled'): Promise<StreamResult> {
    if (this.#outcome === undefined) {
      const attached = this.#handle !== undefined;
      const error = new SluiceError('ERR_CANCELLED', reason);
      this.#pendingCancel = reason;
      this.#decide({ status: 'cancelled', error });
      if (attached) this.#stopSandbox(error, true);
      else if (!this.#exited) {
        // Queued, or admitted and starting: the host dequeues it, or attach() stops it.
        this.#stopping = error;
        this.hooks.dequeue(this);
      }
    } else if (!this.#exited && this.#handle !== undefined) {
      // Already failing (a limit): make sure the sandbox is on its way out.
      this.#stopSandbox(this.#outcome.error ?? new SluiceError('ERR_CANCELLED', reason), true);
    }
    return this.result;
  }

  /** End the stream with `error` (host closing, dependency failed): like cancel, with another code. */
  stop(error: SluiceError): Promise<StreamResult> {
    if (this.#outcome === undefined) {
      const attached = this.#handle !== undefined;
      this.#decide({ status: 'failed', error });
      if (attached) this.#stopSandbox(error, true);
      else if (!this.#exited) {
        this.#stopping = error;
        this.hooks.dequeue(this);
      }
    }
    return this.result;
  }

  /** Hard stop now (host destroy). */
  kill(error: SluiceError): void {
    this.#decide({ status: 'failed', error });
    if (this.#handle !== undefined) this.#handle.terminate(error);
    else if (!this.#exited) {
      this.#stopping = error;
      this.hooks.dequeue(this);
    }
  }

  #dropQueue(): void {
    this.#batches = [];
    this.#bi = 0;
  }

  // ---- consumer side -------------------------------------------------------------------

  [Symbol.asyncIterator](): AsyncIterator<Chunk> {
    if (this.#iterating) throw new SluiceError('ERR_STREAM_CONSUMED', `Stream ${this.id} is already being read; a stream can be iterated only once`);
    this.#iterating = true;
    if (this.#log !== undefined) return this.#readLog(this.#log);
    return {
      next: () => this.#next(),
      return: async () => {
        if (this.#outcome === undefined) void this.cancel('consumer stopped reading');
        this.#errorDelivered = true;
        this.#dropQueue();
        return { value: undefined, done: true };
      },
    };
  }

  /** A `log` stream's own consumer: one more reader of its log, from where this run started, served from memory while it keeps up. */
  #readLog(log: DurableLog): AsyncIterator<Chunk> {
    const consumer = new LogConsumer({
      log,
      window: () => this.#ledger?.window ?? DEFAULT_WINDOW,
      signal: this.#readAbort.signal,
      ready: this.#ready,
      over: this.result,
      startSeq: () => this.#firstTail,
      committed: () => Math.max(this.#logCommitted, this.#firstTail),
      outcome: () => this.#outcome,
      started: () => this.#started,
      demand: () => {
        if (this.#demanded) return;
        this.#demanded = true;
        this.emit('demand');
      },
      cancel: (reason) => void this.cancel(reason),
    });
    this.#consumer = consumer;
    return consumer;
  }

  /** The stream ended but its end will not be stored (host closing): release log readers of this stream. */
  endReaders(): void {
    this.#readAbort.abort();
  }

  #take(): Chunk | undefined {
    const batch = this.#batches[this.#bi];
    if (batch === undefined) return undefined;
    const i = batch.pos;
    const chunk: Chunk = { seq: batch.firstSeq + i, data: this.#dataAt(batch, i) };
    this.#consumed(batch, 1);
    return chunk;
  }

  /** Chunk `i` of `batch`; chunks must be taken in order (`nextValue`, `packed.offset`). */
  #dataAt(batch: Batch, i: number): ChunkData {
    const packed = batch.packed;
    if (packed !== undefined) {
      const size = packed.sizes[i]!;
      if (size !== UNPACKED) {
        const own = (packed.own ??= this.#handle?.movesBuffers === true ? packed.bytes.slice(0, packedLength(packed.sizes)) : packed.bytes);
        const data = new Uint8Array(own.buffer, packed.offset, size);
        packed.offset += size;
        return data;
      }
    }
    return batch.chunks[batch.nextValue++] as ChunkData;
  }

  /**
   * `taken` chunks of the head batch were handed out: return their credit in one
   * `consume` (bytes come per batch: pro rata, the remainder with its last chunk), and
   * drop the batch once it is all taken.
   */
  #consumed(batch: Batch, taken: number): void {
    const total = batch.count;
    batch.pos += taken;
    const last = batch.pos === total;
    const share = last ? batch.bytes - batch.returned : taken * Math.floor(batch.bytes / total);
    batch.returned += share;
    if (last) {
      // Every packed chunk has been copied out (into `own`): the buffer can go back to be
      // packed into again. Only then: judged by the copy, not by the handle, which a retry
      // may have replaced since (a buffer consumers hold views of must never go back).
      const packed = batch.packed;
      if (packed !== undefined && packed.own !== undefined && packed.own !== packed.bytes && this.#spare.length < MAX_RECYCLED_BUFFERS) this.#spare.push(packed.bytes.buffer);
      this.#batches[this.#bi] = undefined as unknown as Batch;
      this.#bi++;
      if (this.#bi === this.#batches.length) {
        this.#batches = [];
        this.#bi = 0;
      }
    }
    const grant = this.#ledger?.consume(taken, share);
    if (grant !== undefined) this.#grant(grant);
  }

  #grant(grant: Window): void {
    this.#idleSince = performance.now();
    const msg: ToSandbox = { type: 'credit', chunks: grant.chunks, bytes: grant.bytes };
    // Only to a sandbox about to run dry: it reads no message before (never, under a window
    // that does not bind), so buffers sent to it earlier would pile up in its queue.
    if (this.#spare.length > 0 && this.#ledger?.shortAtLastGrant === true) {
      msg.buffers = this.#spare;
      this.#spare = [];
    }
    this.#handle?.send(msg);
  }

  #next(): Promise<IteratorResult<Chunk>> {
    if (!this.#demanded) {
      this.#demanded = true;
      this.emit('demand');
    }
    const chunk = this.#take();
    if (chunk !== undefined) return Promise.resolve({ value: chunk, done: false });
    const end = this.#endResult();
    if (end !== undefined) return end;
    // The consumer is waiting: return pending credit now, not at half a window, if the sandbox may be short of it.
    const grant = this.#ledger?.flushIfShort();
    if (grant !== undefined) this.#grant(grant);
    return new Promise((resolve, reject) => {
      this.#waiter = { resolve, reject };
    });
  }

  #endResult(): Promise<IteratorResult<Chunk>> | undefined {
    const outcome = this.#outcome;
    if (outcome === undefined) return undefined;
    if (outcome.status === 'done' || this.#errorDelivered) return Promise.resolve({ value: undefined, done: true });
    this.#errorDelivered = true;
    return Promise.reject(outcome.error);
  }

  #wake(): void {
    const waiter = this.#waiter;
    if (waiter === undefined) return;
    const chunk = this.#take();
    if (chunk !== undefined) {
      this.#waiter = undefined;
      waiter.resolve({ value: chunk, done: false });
      return;
    }
    const end = this.#endResult();
    if (end !== undefined) {
      this.#waiter = undefined;
      end.then(waiter.resolve, waiter.reject);
    }
  }

  override on<E extends keyof StreamEvents>(event: E, listener: (...args: StreamEvents[E]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }

  override off<E extends keyof StreamEvents>(event: E, listener: (...args: StreamEvents[E]) => void): this {
    return super.off(event, listener as (...args: unknown[]) => void);
  }

  /**
   * See `SluiceStream.takeBuffered`. The same chunks, copies and credit as `max` calls of
   * `#take`, with one `consume` per batch instead of one per chunk.
   */
  takeBuffered(max: number): Chunk[] {
    const out: Chunk[] = [];
    // Only the iterator's holder, after its first next() (which signals demand), and never
    // past a pending next(): the waiter is owed the next chunk.
    if (!this.#iterating || !this.#demanded || this.#log !== undefined || this.#waiter !== undefined) return out;
    while (out.length < max) {
      const batch = this.#batches[this.#bi];
      if (batch === undefined) break;
      const from = batch.pos;
      const stop = Math.min(batch.count, from + max - out.length);
      for (let i = from; i < stop; i++) out.push({ seq: batch.firstSeq + i, data: this.#dataAt(batch, i) });
      this.#consumed(batch, stop - from);
    }
    return out;
  }
}

/**
 * The estimated sizes of the first `count` chunks, as the sandbox measured them when it
 * copied them: the estimate depends only on the data, which crossed intact. Undefined
 * if a chunk is not chunk data (a sandbox that skipped its own copy).
 */
function chunkSizes(chunks: unknown[], count: number): number[] | undefined {
  const sizes = new Array<number>(count);
  for (let i = 0; i < count; i++) {
    try {
      sizes[i] = copyChunk(chunks[i]).bytes;
    } catch (err) {
      if (err instanceof SluiceError && err.code === 'ERR_CHUNK_INVALID') return undefined;
      throw err;
    }
  }
  return sizes;
}

function sum(values: number[], from: number, to: number): number {
  let total = 0;
  for (let i = from; i < to; i++) total += values[i]!;
  return total;
}
