/**
 * The own consumer of a `log` stream (its async iterator): one more reader of its log,
 * served from memory while it keeps up.
 *
 * The stream hands over each batch once its append has committed, in seq order (the
 * commits settle in order, see HostStream's `#ordered`), so a batch kept here is exactly
 * what any reader of the log would get. The consumer reads these batches instead of
 * reading back and deserializing from LMDB what the host held a moment before. What it
 * cannot get from memory it reads from the log: the chunks committed before it started
 * (a resumed stream), the batches dropped because it fell behind (the memory is bounded
 * by one credit window, oldest dropped first), and the stream's stored end (`end` comes
 * from the log, after the status is flushed, as for any reader). It goes back to memory
 * as soon as the oldest kept batch reaches its position.
 *
 * Invariant: the consumer sees only committed chunks, contiguous, exactly once: both
 * sources are read from one position `#next`, and memory is only read at that position.
 */
import type { Window } from '../protocol/credit.js';
import { SluiceError } from '../protocol/errors.js';
import type { DurableLog } from './stream.js';
import type { Chunk, ReadEvent } from './types.js';

interface Kept {
  firstSeq: number;
  chunks: unknown[];
  bytes: number;
}

/** What the consumer needs from its stream. */
export interface LogConsumerSource {
  readonly log: DurableLog;
  /** The bound of what is kept in memory (the stream's credit window, known once set up). */
  window(): Window;
  /** Aborted when the stream ended but its end will not be stored (host closing). */
  readonly signal: AbortSignal;
  /** Resolves once the stream is set up: `startSeq()` is known. */
  readonly ready: Promise<void>;
  /** Settles once no more commit can come (the sandbox is gone). */
  readonly over: Promise<unknown>;
  /** Where this consumer starts (the log's tail when this run was set up). */
  startSeq(): number;
  /** The seq after the last committed chunk. */
  committed(): number;
  /** The stream's outcome, once decided. */
  outcome(): { status: string; error?: SluiceError } | undefined;
  /** Whether the stream reached a sandbox. */
  started(): boolean;
  demand(): void;
  cancel(reason: string): void;
}

const DONE: IteratorReturnResult<undefined> = Object.freeze({ value: undefined, done: true });

export class LogConsumer implements AsyncIterator<Chunk> {
  readonly #src: LogConsumerSource;
  /** Committed batches not yet taken, in seq order, contiguous from `#kept[0].firstSeq`. */
  #kept: Kept[] = [];
  #keptChunks = 0;
  #keptBytes = 0;
  /** The batch being handed out, and the index of its next chunk. */
  #batch: unknown[] | undefined;
  #batchSeq = 0;
  #i = 0;
  /** Next seq to hand out. */
  #next = 0;
  #begun = false;
  /** No more chunks: ended, failed, or returned by the consumer. */
  #closed = false;
  #over = false;
  /** The log reader while memory does not hold `#next`. */
  #fromLog: AsyncIterator<ReadEvent> | undefined;
  #wake: (() => void) | undefined;
  /** The last `next()` not settled yet: a `next()` called meanwhile runs after it. */
  #busy: Promise<IteratorResult<Chunk>> | undefined;

  constructor(src: LogConsumerSource) {
    this.#src = src;
    const over = (): void => {
      this.#over = true;
      this.#wakeUp();
    };
    void src.over.then(over, over);
    src.signal.addEventListener('abort', over, { once: true });
  }

  /** A batch committed (called in seq order). Kept only while the consumer reads. */
  committed(firstSeq: number, chunks: unknown[], bytes: number): void {
    if (this.#closed) return;
    this.#kept.push({ firstSeq, chunks, bytes });
    this.#keptChunks += chunks.length;
    this.#keptBytes += bytes;
    const { chunks: maxChunks, bytes: maxBytes } = this.#src.window();
    // Bounded like the window: a consumer that falls further behind reads the log.
    while (this.#kept.length > 1 && (this.#keptChunks > maxChunks || this.#keptBytes > maxBytes)) this.#shift();
    this.#wakeUp();
  }

  next(): Promise<IteratorResult<Chunk>> {
    const busy = this.#busy;
    let step: Promise<IteratorResult<Chunk>>;
    if (busy === undefined) {
      if (this.#ready()) return Promise.resolve(this.#take());
      step = this.#slow();
    } else {
      const after = (): Promise<IteratorResult<Chunk>> => (this.#ready() ? Promise.resolve(this.#take()) : this.#slow());
      step = busy.then(after, after);
    }
    this.#busy = step;
    const clear = (): void => {
      if (this.#busy === step) this.#busy = undefined;
    };
    step.then(clear, clear);
    return step;
  }

  /** Whether the next chunk is in memory now (the hot path: no await, no log). */
  #ready(): boolean {
    return this.#batch !== undefined || (this.#begun && !this.#closed && this.#fromLog === undefined && this.#takeKept());
  }

  [Symbol.asyncIterator](): AsyncIterator<Chunk> {
    return this;
  }

  async return(): Promise<IteratorResult<Chunk>> {
    if (!this.#closed) {
      this.#close();
      if (this.#src.outcome() === undefined) this.#src.cancel('consumer stopped reading');
    }
    return DONE;
  }

  async #slow(): Promise<IteratorResult<Chunk>> {
    if (this.#closed) return DONE;
    const src = this.#src;
    try {
      if (!this.#begun) {
        src.demand();
        await src.ready;
        const outcome = src.outcome();
        if (outcome !== undefined && !src.started()) {
          this.#close();
          if (outcome.status === 'done') return DONE;
          throw outcome.error;
        }
        this.#next = src.startSeq();
        this.#begun = true;
      }
      for (;;) {
        if (this.#closed) return DONE;
        if (this.#fromLog === undefined || this.#keptHolds()) {
          if (this.#fromLog !== undefined) this.#stopLog();
          if (this.#takeKept()) return this.#take();
          // Caught up with the commits and the stream goes on: wait for the next one.
          if (this.#kept.length === 0 && src.committed() <= this.#next && !this.#over) {
            await new Promise<void>((resolve) => (this.#wake = resolve));
            continue;
          }
          // Behind what memory holds, or the stream is over (its end is in the log).
          this.#fromLog = src.log.read(this.#next, src.signal)[Symbol.asyncIterator]();
        }
        let step: IteratorResult<ReadEvent>;
        try {
          step = await this.#fromLog.next();
        } catch (err) {
          // Aborted because the stream ended without a stored end (host closing): report its outcome.
          if (!src.signal.aborted) throw err;
          return this.#end();
        }
        if (step.done === true) return this.#end();
        const event = step.value;
        if (event.type === 'chunk') {
          this.#next = event.seq + 1;
          return { value: { seq: event.seq, data: event.data }, done: false };
        }
        if (event.type === 'end') return this.#end();
        throw new SluiceError('ERR_STREAM_GAP', event.type === 'gap' ? `Chunks ${event.fromSeq}..${event.toSeq - 1} were removed by retention; read with host.read() to handle gaps` : 'The store was re-created');
      }
    } catch (err) {
      if (!this.#closed) {
        this.#close();
        if (src.outcome() === undefined) src.cancel('consumer stopped reading');
      }
      throw err;
    }
  }

  /** The next chunk of the batch being handed out (there is one). */
  #take(): IteratorResult<Chunk> {
    const batch = this.#batch!;
    const i = this.#i++;
    const seq = this.#batchSeq + i;
    if (this.#i === batch.length) this.#batch = undefined;
    this.#next = seq + 1;
    return { value: { seq, data: batch[i] as Chunk['data'] }, done: false };
  }

  /** The log said the end (or the stream ended unstored): the outcome, after every chunk. */
  #end(): IteratorResult<Chunk> {
    this.#close();
    const outcome = this.#src.outcome();
    if (outcome !== undefined && outcome.status !== 'done') throw outcome.error;
    return DONE;
  }

  /** Whether memory holds `#next` (dropping kept batches the log reader already delivered). */
  #keptHolds(): boolean {
    const next = this.#next;
    let first = this.#kept[0];
    while (first !== undefined && first.firstSeq + first.chunks.length <= next) {
      this.#shift();
      first = this.#kept[0];
    }
    return first !== undefined && first.firstSeq <= next;
  }

  /** Start handing out the kept batch holding `#next`; false when memory does not hold it. */
  #takeKept(): boolean {
    if (!this.#keptHolds()) return false;
    const kept = this.#shift();
    this.#batch = kept.chunks;
    this.#batchSeq = kept.firstSeq;
    this.#i = this.#next - kept.firstSeq;
    return true;
  }

  #shift(): Kept {
    const kept = this.#kept.shift()!;
    this.#keptChunks -= kept.chunks.length;
    this.#keptBytes -= kept.bytes;
    return kept;
  }

  #stopLog(): void {
    const it = this.#fromLog;
    this.#fromLog = undefined;
    void it?.return?.()?.catch(() => undefined);
  }

  #wakeUp(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  #close(): void {
    this.#closed = true;
    this.#kept = [];
    this.#keptChunks = 0;
    this.#keptBytes = 0;
    this.#batch = undefined;
    this.#stopLog();
    this.#wakeUp();
  }
}
