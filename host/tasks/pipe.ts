/**
 * The hand-off on an input edge (`input: 'X'`): X's attempt pushes its chunks' data,
 * the reader's host stream pulls them as `StreamOptions.input`.
 *
 * A rendezvous, not a buffer: `push` settles when the reader takes the item, so X's
 * attempt reads its own stream only as fast as the reader's sandbox grants input
 * credit, and credit flows from the reader's plugin all the way up to X's plugin.
 * The pipe holds at most one item.
 *
 * Each side can stop the other: the reader returning (its stream ended or was
 * cancelled; the host returns its input) closes the pipe, which the runner turns into
 * cancelling X; X ending settles the pipe with an end or an error, which the reader's
 * plugin sees from `params.input` (the host forwards the error's code).
 */
import { SluiceError } from '../../protocol/errors.js';

interface Pending {
  readonly value: unknown;
  readonly taken: () => void;
}

interface Waiter {
  readonly resolve: (r: IteratorResult<unknown>) => void;
  readonly reject: (err: unknown) => void;
}

export class InputPipe implements AsyncIterable<unknown> {
  #pending: Pending | undefined;
  #waiter: Waiter | undefined;
  /** Set once the producer ended: undefined error = a clean end. */
  #ended: { error: SluiceError | undefined } | undefined;
  #closed = false;
  #iterated = false;
  #markPulled!: (pulled: boolean) => void;
  readonly #onClose: (() => void)[] = [];
  /**
   * True once the reader asked for its first item, false if it stopped before: the
   * producer starts only then, so it never holds a sandbox slot while its reader still
   * waits for one.
   */
  readonly pulled = new Promise<boolean>((resolve) => (this.#markPulled = resolve));

  /** The reader stopped; listeners run once (at once when it already has). */
  onClose(listener: () => void): void {
    if (this.#closed) listener();
    else this.#onClose.push(listener);
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Hand one item to the reader; settles when it is taken, or at once (dropped) after the reader stopped. */
  push(value: unknown): Promise<void> {
    if (this.#closed) return Promise.resolve();
    if (this.#ended !== undefined || this.#pending !== undefined) {
      return Promise.reject(new SluiceError('ERR_PROTOCOL', 'Input pipe: push after end, or before the previous push was taken'));
    }
    const waiter = this.#waiter;
    if (waiter !== undefined) {
      this.#waiter = undefined;
      waiter.resolve({ value, done: false });
      return Promise.resolve();
    }
    return new Promise<void>((taken) => (this.#pending = { value, taken }));
  }

  /** The producer finished: the reader gets `done` after the last item. */
  end(): void {
    this.#settle(undefined);
  }

  /** The producer failed or was cancelled: the reader's next read rejects with `error`. */
  fail(error: SluiceError): void {
    this.#settle(error);
  }

  /** The reader side stops (idempotent): a pending push is released, the producer is told. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#markPulled(false);
    const pending = this.#pending;
    this.#pending = undefined;
    pending?.taken();
    const waiter = this.#waiter;
    this.#waiter = undefined;
    waiter?.resolve({ value: undefined, done: true });
    for (const listener of this.#onClose.splice(0)) listener();
  }

  #settle(error: SluiceError | undefined): void {
    if (this.#ended !== undefined) return;
    this.#ended = { error };
    const waiter = this.#waiter;
    if (waiter === undefined) return;
    this.#waiter = undefined;
    if (error === undefined) waiter.resolve({ value: undefined, done: true });
    else waiter.reject(error);
  }

  #next(): Promise<IteratorResult<unknown>> {
    this.#markPulled(true);
    const pending = this.#pending;
    if (pending !== undefined) {
      this.#pending = undefined;
      pending.taken();
      return Promise.resolve({ value: pending.value, done: false });
    }
    if (this.#closed) return Promise.resolve({ value: undefined, done: true });
    if (this.#ended !== undefined) {
      const error = this.#ended.error;
      return error === undefined ? Promise.resolve({ value: undefined, done: true }) : Promise.reject(error);
    }
    if (this.#waiter !== undefined) return Promise.reject(new SluiceError('ERR_PROTOCOL', 'Input pipe: a second read while one is pending'));
    return new Promise((resolve, reject) => (this.#waiter = { resolve, reject }));
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    if (this.#iterated) throw new SluiceError('ERR_STREAM_CONSUMED', 'A task’s output can be read as an input once');
    this.#iterated = true;
    return {
      next: () => this.#next(),
      return: () => {
        this.close();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}
