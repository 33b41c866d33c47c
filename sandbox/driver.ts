/**
 * The sandbox-side runtime of one stream: calls the action, pulls chunks from it only
 * while it holds credit, copies and validates each chunk once, and sends them in
 * batches. It has no Node imports so the same code runs in a worker thread and,
 * bundled, inside an isolate; the environment differences are the `DriverEnv`.
 *
 * Ordering promise: every message reaches the host in the order the plugin caused
 * it. A checkpoint, log line, end or error first flushes the chunks before it.
 */
import { CreditBalance } from '../protocol/credit.js';
import { BytePacker, UNPACKED, copyChunk, type ChunkData, type ChunkRules } from '../protocol/chunk.js';
import { SluiceError, describeThrown, toWireError, type WireError } from '../protocol/errors.js';
import { MAX_LOG_MESSAGE, type ActionKind, type FromSandbox, type LogLevel, type StartSpec, type ToSandbox } from '../protocol/messages.js';
import { createAbort, type AbortPair } from './abort.js';
import type { Action, PluginContext } from './sdk.js';
import { InputQueue } from './input.js';

export interface DriverEnv {
  /**
   * Send one message to the host (postMessage, or the isolate's emit callback). `transfer`
   * lists buffers nobody else holds (a batch's packed bytes) that may move instead of being copied.
   */
  send(msg: FromSandbox, transfer?: ArrayBuffer[]): void;
  /** Run `fn` soon, after pending microtasks: a batch then holds a tick's worth of chunks. */
  later(fn: () => void): void;
  /**
   * Take the host's next message if one is already waiting, without a turn of the event
   * loop (a worker's `receiveMessageOnPort`), parsed as `onMessage` expects it;
   * undefined when there is none. Optional.
   */
  poll?(): ToSandbox | undefined;
}

/** A batch is sent early once it holds this many chunks or bytes (or half the window, if less). */
export const MAX_BATCH_CHUNKS = 512;
export const MAX_BATCH_BYTES = 256 * 1024;
const CHUNK_DEPTH = 64;

type Pull = { kind: 'stream'; iterator: AsyncIterator<unknown> | Iterator<unknown> } | { kind: 'unary'; value: unknown };

/** The stream is over for the driver; the message that says why has been sent. */
class Stop {}

export class StreamDriver {
  private readonly credit: CreditBalance;
  /** A batch is sent once it holds this many chunks or bytes: half the window, at most MAX_BATCH_*. */
  private readonly flushChunks: number;
  private readonly flushBytes: number;
  private readonly rules: ChunkRules;
  private readonly abort: AbortPair;
  private nextSeq: number;
  /** Chunks in the batch so far, packed ones included. */
  private batchCount = 0;
  /** The batch's chunks that are not packed, in order; packed byte chunks live in `packer`. */
  private batch: ChunkData[] = [];
  private readonly packer = new BytePacker();
  private batchFirstSeq = 0;
  private batchBytes = 0;
  private batchLargest = 0;
  private flushScheduled = false;
  private sentChunks = false;
  private progress: { fraction: number; message?: string } | undefined;
  /** The latest checkpoint not yet sent (only the latest matters). */
  private checkpointed: { seq: number; state: ChunkData } | undefined;
  private creditWaiter: (() => void) | undefined;
  private cancelled: string | undefined;
  /**
   * What is left of the stream's maxBytes (spec.byteBudget), Infinity without one.
   * Negative once a chunk has passed it: that chunk was the run's last (see `hold`).
   */
  private bytesLeft: number;
  /** The first seq the budget counts (chunks below it are repeats the host already has). */
  private readonly budgetFrom: number;
  private finished = false;
  private readonly input: InputQueue | undefined;

  constructor(
    private readonly actions: Record<string, unknown>,
    private readonly spec: StartSpec,
    private readonly env: DriverEnv,
  ) {
    this.credit = new CreditBalance(spec.window);
    this.flushChunks = Math.max(1, Math.min(MAX_BATCH_CHUNKS, Math.floor(spec.window.chunks / 2)));
    this.flushBytes = Math.max(1, Math.min(MAX_BATCH_BYTES, Math.floor(spec.window.bytes / 2)));
    this.rules = { maxDepth: CHUNK_DEPTH, maxChunkBytes: spec.limits.maxChunkBytes };
    this.abort = createAbort();
    this.nextSeq = spec.resume?.seq ?? 0;
    this.bytesLeft = spec.byteBudget?.left ?? Infinity;
    this.budgetFrom = spec.byteBudget?.fromSeq ?? 0;
    if (spec.input !== undefined) this.input = new InputQueue(spec.input.window, (msg) => env.send(msg));
  }

  onMessage(msg: ToSandbox): void {
    switch (msg.type) {
      case 'credit':
        if (msg.buffers !== undefined) for (const buffer of msg.buffers) this.packer.recycle(buffer);
        this.credit.grant(msg.chunks, msg.bytes);
        if (this.credit.available) this.wake();
        return;
      case 'cancel':
        if (this.cancelled !== undefined) return;
        this.cancelled = msg.reason;
        this.abort.abort(new SluiceError('ERR_CANCELLED', msg.reason));
        this.input?.fail({ code: 'ERR_CANCELLED', message: msg.reason });
        this.wake();
        return;
      case 'input':
        this.input?.push(msg.firstSeq, msg.chunks, msg.bytes);
        return;
      case 'input-end':
        this.input?.end();
        return;
      case 'input-error':
        this.input?.fail(msg.error);
        return;
    }
  }

  /** Run the action to its end. Never rejects: every outcome is a message to the host. */
  async run(): Promise<void> {
    let iterator: AsyncIterator<unknown> | Iterator<unknown> | undefined;
    let kind: ActionKind = 'unary';
    try {
      const pull = await this.start();
      if (pull.kind === 'unary') {
        if (pull.value !== undefined) {
          await this.waitForCredit();
          this.push(pull.value);
        }
      } else {
        kind = 'stream';
        iterator = pull.iterator;
        for (;;) {
          // Only a missing credit costs a turn: an `await` of nothing is still a microtask per chunk.
          if (!this.credit.available || this.cancelled !== undefined) await this.waitForCredit();
          const step = await iterator.next();
          if (step.done === true) {
            iterator = undefined;
            break;
          }
          this.push(step.value);
          if (this.cancelled !== undefined) throw new Stop();
          if (this.bytesLeft < 0) await this.hold();
        }
      }
      this.finish({ type: 'end', kind });
    } catch (err) {
      if (iterator !== undefined) await this.closeIterator(iterator);
      this.finish({ type: 'error', error: this.wireError(err) });
    }
  }

  private async start(): Promise<Pull> {
    const fn = Object.prototype.hasOwnProperty.call(this.actions, this.spec.action) ? this.actions[this.spec.action] : undefined;
    if (typeof fn !== 'function') {
      throw new SluiceError('ERR_ACTION_NOT_FOUND', `Plugin has no action \`${this.spec.action}\``, { details: { action: this.spec.action } });
    }
    // A stream-consuming action finds its input as params.input, next to its own params.
    const params = this.input === undefined ? this.spec.params : { ...(this.spec.params as object), input: this.input };
    const out: unknown = (fn as Action).call(this.actions, params, this.context());
    if (out !== null && typeof out === 'object') {
      const asyncIt = (out as { [Symbol.asyncIterator]?: unknown })[Symbol.asyncIterator];
      if (typeof asyncIt === 'function') return { kind: 'stream', iterator: asyncIt.call(out) as AsyncIterator<unknown> };
      // A sync generator streams too; a returned array is a unary result, not a stream.
      if (isGeneratorObject(out)) return { kind: 'stream', iterator: out };
    }
    return { kind: 'unary', value: await out };
  }

  private context(): PluginContext {
    const send = (level: LogLevel, args: unknown[]): void => {
      this.flush();
      this.env.send({ type: 'log', level, message: args.map(describeArg).join(' ').slice(0, MAX_LOG_MESSAGE) });
    };
    return Object.freeze({
      signal: this.abort.signal,
      streamId: this.spec.streamId,
      resume: this.spec.resume === undefined ? undefined : Object.freeze({ ...this.spec.resume }),
      progress: (fraction: number, message?: string) => {
        if (typeof fraction !== 'number' || !(fraction >= 0 && fraction <= 1)) {
          throw new SluiceError('ERR_INVALID_ARGUMENT', `ctx.progress expects a fraction in [0, 1], got ${describeArg(fraction)}`);
        }
        this.progress = typeof message === 'string' ? { fraction, message: message.slice(0, MAX_LOG_MESSAGE) } : { fraction };
        this.scheduleFlush();
      },
      checkpoint: (state: ChunkData) => {
        // Held until the next flush, right after the batch holding the chunks before it:
        // a checkpoint every few chunks then neither cuts batches short nor costs a message each.
        this.checkpointed = { seq: this.nextSeq, state: copyChunk(state, this.rules, 'checkpoint state').data };
        this.scheduleFlush();
      },
      log: Object.freeze({
        debug: (...args: unknown[]) => send('debug', args),
        info: (...args: unknown[]) => send('info', args),
        warn: (...args: unknown[]) => send('warn', args),
        error: (...args: unknown[]) => send('error', args),
      }),
    });
  }

  private push(value: unknown): void {
    // Small byte chunks are copied once, into the batch's arena; anything else by copyChunk.
    let bytes = this.packer.pack(value, this.batchCount, this.rules);
    if (bytes === UNPACKED) {
      const copy = copyChunk(value, this.rules);
      this.batch.push(copy.data);
      bytes = copy.bytes;
    }
    if (this.nextSeq >= this.budgetFrom) this.bytesLeft -= bytes;
    if (this.batchCount === 0) this.batchFirstSeq = this.nextSeq;
    this.batchCount++;
    this.batchBytes += bytes;
    if (bytes > this.batchLargest) this.batchLargest = bytes;
    this.nextSeq++;
    this.credit.spend(bytes);
    // Out of credit: the host must see these chunks before it can grant more.
    // Half a window is sent without waiting for the tick: a plugin that yields without
    // pausing never reaches the tick until its credit runs out, and the host can consume
    // (and return credit for) one half while the plugin fills the other.
    // The stream's first chunk goes at once: it is what a consumer waits on, and a plugin
    // busy after its first yield would otherwise hold it back until its next pause.
    // A chunk past maxBytes goes at once too: the host ends the stream when it sees it.
    if (!this.credit.available || this.batchCount >= this.flushChunks || this.batchBytes >= this.flushBytes || !this.sentChunks || this.bytesLeft < 0) this.flush();
    else this.scheduleFlush();
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    this.env.later(() => {
      this.flushScheduled = false;
      if (!this.finished) this.flush();
    });
  }

  private flush(): void {
    if (this.batchCount > 0) {
      const chunks = this.batch;
      const count = this.batchCount;
      this.batch = [];
      this.batchCount = 0;
      this.sentChunks = true;
      const packed = this.packer.take(count);
      const msg: FromSandbox = { type: 'batch', firstSeq: this.batchFirstSeq, chunks, bytes: this.batchBytes, largest: this.batchLargest };
      if (packed === undefined) this.env.send(msg);
      else {
        msg.packed = packed;
        // The arena is this batch's alone: it moves to the host rather than being copied.
        this.env.send(msg, [packed.buffer]);
      }
      this.batchBytes = 0;
      this.batchLargest = 0;
    }
    if (this.checkpointed !== undefined) {
      const { seq, state } = this.checkpointed;
      this.checkpointed = undefined;
      this.env.send({ type: 'checkpoint', seq, state });
    }
    if (this.progress !== undefined) {
      const p = this.progress;
      this.progress = undefined;
      this.env.send(p.message === undefined ? { type: 'progress', fraction: p.fraction } : { type: 'progress', fraction: p.fraction, message: p.message });
    }
  }

  private waitForCredit(): Promise<void> | void {
    if (this.cancelled !== undefined) throw new Stop();
    // Out of credit, the host's grant is often already queued: read it now rather than
    // after a turn of the event loop (one per half window of chunks).
    while (!this.credit.available) {
      const msg = this.env.poll?.();
      if (msg === undefined) break;
      this.onMessage(msg);
      if (this.cancelled !== undefined) throw new Stop();
    }
    if (this.credit.available) return;
    return this.woken();
  }

  /**
   * The chunk just sent passed maxBytes. The host delivers the chunks before it, ends
   * the stream with ERR_LIMIT_BYTES and cancels this run; until then the plugin is not
   * pulled again, as if out of credit. The limit is the host's to report: an isolate's
   * driver runs in the plugin's realm, so a limit code sent from here could be forged
   * (sandbox/isolate/process.ts lets no plugin claim one).
   */
  private async hold(): Promise<never> {
    for (;;) await this.woken();
  }

  /** The next wake() (a grant or a cancel); throws Stop once cancelled. */
  private woken(): Promise<void> {
    if (this.cancelled !== undefined) throw new Stop();
    return new Promise<void>((resolve) => {
      this.creditWaiter = resolve;
    }).then(() => {
      if (this.cancelled !== undefined) throw new Stop();
    });
  }

  private wake(): void {
    const w = this.creditWaiter;
    this.creditWaiter = undefined;
    w?.();
  }

  /** Let the plugin's `finally` run; a `finally` that never returns is the host's hard stop to deal with. */
  private async closeIterator(iterator: AsyncIterator<unknown> | Iterator<unknown>): Promise<void> {
    try {
      await iterator.return?.(undefined);
    } catch {
      // The stream already has its error; one thrown from `finally` would hide it.
    }
  }

  private wireError(err: unknown): WireError {
    if (err instanceof Stop) {
      return toWireError(new SluiceError('ERR_CANCELLED', this.cancelled ?? 'cancelled'), false);
    }
    if (this.cancelled !== undefined && !(err instanceof SluiceError && err.code !== 'ERR_CANCELLED')) {
      // Plugins typically rethrow ctx.signal.reason or an AbortError; both mean cancelled.
      return toWireError(new SluiceError('ERR_CANCELLED', this.cancelled), false);
    }
    if (err instanceof SluiceError) return toWireError(err, false);
    if (isParamsError(err)) return toWireError(new SluiceError('ERR_PARAMS_INVALID', describeThrown(err)), false);
    return toWireError(err, true, 'ERR_PLUGIN_THREW');
  }

  private finish(msg: FromSandbox): void {
    if (this.finished) return;
    if (msg.type === 'end') this.flush();
    else {
      // Chunks before an error are still delivered: they were valid and in order.
      try {
        this.flush();
      } catch {
        // Nothing left to do; the error below is the outcome.
      }
    }
    this.finished = true;
    this.env.send(msg);
  }
}

function isGeneratorObject(value: object): value is Iterator<unknown> {
  const tag = Object.prototype.toString.call(value);
  return tag === '[object Generator]';
}

function isParamsError(err: unknown): boolean {
  try {
    return err instanceof Error && (err as { code?: unknown }).code === 'ERR_PARAMS_INVALID';
  } catch {
    return false;
  }
}

function describeArg(value: unknown): string {
  try {
    if (typeof value === 'string') return value;
    if (value instanceof Error) return `${value.name}: ${value.message}`;
    const json = JSON.stringify(value);
    return json === undefined ? String(value) : json;
  } catch {
    return describeThrown(value);
  }
}
