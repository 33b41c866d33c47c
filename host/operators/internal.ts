/**
 * Shared machinery of the stream operators (internal, not re-exported).
 *
 * Every operator is a hand-written async iterator rather than an async generator,
 * for one reason: an async generator queues `return()` behind a pending `next()`, so
 * a consumer that cancels while the operator waits on its source could not reach the
 * source until the source produced another item (maybe never). Our iterators forward
 * `return()` to their sources at once, even with a `next()` in flight.
 *
 * The rules every operator follows:
 * - Sources are opened lazily, on the first `next()`; `return()` before that opens nothing.
 * - At most one `next()` is in flight on any one source iterator.
 * - `return()` calls `return()` on every source iterator the operator opened and that
 *   is not finished. It awaits those whose `next()` is idle; one with a `next()` still
 *   in flight is told but not awaited, because an async-generator source queues the
 *   `return()` behind that `next()`, which may never settle.
 * - A source that threw is finished: it is not returned. An error raised by the
 *   operator itself (a user function threw) returns the source, then propagates.
 * - Concurrent `next()` calls on one of our iterators are served one after another.
 */
import { SluiceError } from '../../protocol/errors.js';

/** A stream operator: a function from one async iterable to another. */
export type Operator<I, O> = (source: AsyncIterable<I>) => AsyncIterable<O>;

export const DONE: IteratorReturnResult<undefined> = Object.freeze({ done: true as const, value: undefined });
export const DONE_PROMISE: Promise<IteratorReturnResult<undefined>> = Promise.resolve(DONE);

export function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return value !== null && (typeof value === 'object' || typeof value === 'function') && typeof (value as PromiseLike<unknown>).then === 'function';
}

/** Call `return()` on an iterator if it has one; resolves when the iterator is closed. */
export function closeIterator(it: AsyncIterator<unknown>): Promise<unknown> {
  if (typeof it.return !== 'function') return DONE_PROMISE;
  try {
    return Promise.resolve(it.return());
  } catch (err) {
    return Promise.reject(err);
  }
}

/**
 * Close an iterator whose `next()` is still in flight, without waiting: its `return()`
 * may be queued behind that `next()` forever. A rejection has no one left to receive
 * it (the consumer already left), so it is dropped here on purpose, and only here.
 */
export function closeInBackground(it: AsyncIterator<unknown>): void {
  closeIterator(it).then(undefined, ignoreLateCloseError);
}

/**
 * Return a source the consumer no longer wants. While a `next()` is pending the source
 * can only close after it, so the close goes on in the background (see closeInBackground);
 * otherwise it is awaited, so an error from the source's `finally` reaches the consumer.
 */
export function releaseSource(it: AsyncIterator<unknown>, pulling: boolean): Promise<unknown> {
  if (!pulling) return closeIterator(it);
  closeInBackground(it);
  return DONE_PROMISE;
}

function ignoreLateCloseError(): void {
  // See closeInBackground: the consumer is gone; nobody can act on this error.
}

/** Open an async iterable, with a coded error for a non-iterable. */
export function open<T>(source: AsyncIterable<T>, field = 'source'): AsyncIterator<T> {
  const fn = (source as { [Symbol.asyncIterator]?: unknown } | null | undefined)?.[Symbol.asyncIterator];
  if (typeof fn !== 'function') {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`${field}\` to be an async iterable`, { details: { field } });
  }
  return fn.call(source) as AsyncIterator<T>;
}

export function assertFunction(value: unknown, field: string): asserts value is (...args: never[]) => unknown {
  if (typeof value !== 'function') {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`${field}\` to be a function, got ${typeof value}`, { details: { field } });
  }
}

export function assertSignal(value: unknown, field = 'signal'): asserts value is AbortSignal | undefined {
  if (value === undefined) return;
  if (value === null || typeof value !== 'object' || typeof (value as AbortSignal).addEventListener !== 'function' || typeof (value as AbortSignal).aborted !== 'boolean') {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`${field}\` to be an AbortSignal`, { details: { field } });
  }
}

/**
 * A one-shot wake-up for an iterator whose consumer waits on several things at once
 * (an item, a timer, a `return()`). One promise per wait, not per item delivered.
 */
export class Wake {
  private resolve: (() => void) | undefined = undefined;

  wait(): Promise<void> {
    return new Promise<void>((resolve) => {
      this.resolve = resolve;
    });
  }

  fire(): void {
    const resolve = this.resolve;
    if (resolve !== undefined) {
      this.resolve = undefined;
      resolve();
    }
  }
}

/**
 * Base of our iterators: serializes concurrent `next()` calls (as async generators do)
 * at the cost of a counter on the hot path. Subclasses implement `step()` as an async
 * function that decrements `calls` in its `finally`.
 */
export abstract class SerialIterator<T> implements AsyncIterableIterator<T> {
  protected calls = 0;
  private tail: Promise<IteratorResult<T>> = DONE_PROMISE;
  private readonly runStep = (): Promise<IteratorResult<T>> => this.step();

  /** Produce one result; must end with `finally { this.calls--; }`. */
  protected abstract step(): Promise<IteratorResult<T>>;

  abstract return(): Promise<IteratorResult<T>>;

  next(): Promise<IteratorResult<T>> {
    if (this.calls++ > 0) return (this.tail = this.tail.then(this.runStep, this.runStep));
    return (this.tail = this.step());
  }

  [Symbol.asyncIterator](): this {
    return this;
  }
}

/** A bounded FIFO ring buffer: O(1) push and shift, fixed memory. */
export class Ring<T> {
  private readonly items: (T | undefined)[];
  private head = 0;
  length = 0;

  constructor(readonly capacity: number) {
    this.items = new Array<T | undefined>(capacity);
  }

  push(value: T): void {
    this.items[(this.head + this.length) % this.capacity] = value;
    this.length++;
  }

  shift(): T {
    const value = this.items[this.head] as T;
    this.items[this.head] = undefined;
    this.head = (this.head + 1) % this.capacity;
    this.length--;
    return value;
  }

  clear(): void {
    this.items.fill(undefined);
    this.head = 0;
    this.length = 0;
  }
}
