/**
 * Composition and cancellation: pipe, withSignal, defer, toArray.
 */
import { assertInteger } from '../../protocol/assert.js';
import { SluiceError } from '../../protocol/errors.js';
import { DONE, DONE_PROMISE, SerialIterator, assertFunction, assertSignal, closeInBackground, closeIterator, open, type Operator } from './internal.js';

export interface PipeOptions {
  /** Aborting it cancels the pipeline: the consumer's pending read rejects with `signal.reason`, every source is returned. */
  signal?: AbortSignal;
}

class SignalIterator<T> extends SerialIterator<T> {
  private it: AsyncIterator<T> | undefined = undefined;
  private ended = false;
  private pulling = false;
  private listening = false;
  private resolve: ((r: IteratorResult<T>) => void) | undefined = undefined;
  private reject: ((err: unknown) => void) | undefined = undefined;
  private readonly executor = (resolve: (r: IteratorResult<T>) => void, reject: (err: unknown) => void): void => {
    this.resolve = resolve;
    this.reject = reject;
  };

  constructor(
    private readonly source: AsyncIterable<T>,
    private readonly signal: AbortSignal,
  ) {
    super();
  }

  private readonly onAbort = (): void => {
    const reject = this.reject;
    const closing = this.finish();
    // The consumer is told `signal.reason`; a failure while closing the source is secondary.
    if (closing !== undefined) closing.then(undefined, ignoreSecondary);
    if (reject !== undefined) {
      this.resolve = this.reject = undefined;
      this.calls--;
      reject(this.signal.reason);
    }
  };

  private readonly onResult = (r: IteratorResult<T>): void => {
    this.pulling = false;
    const resolve = this.resolve;
    if (resolve === undefined) return; // aborted or returned meanwhile
    this.resolve = this.reject = undefined;
    this.calls--;
    if (r.done === true) this.finish(false);
    resolve(r);
  };

  private readonly onError = (err: unknown): void => {
    this.pulling = false;
    const reject = this.reject;
    if (reject === undefined) return;
    this.resolve = this.reject = undefined;
    this.calls--;
    this.finish(false);
    reject(err);
  };

  /** End: drop the listener and, if asked, return the source (in the background if it is mid-read). */
  private finish(closeSource = true): Promise<unknown> | undefined {
    if (this.ended) return undefined;
    this.ended = true;
    if (this.listening) {
      this.listening = false;
      this.signal.removeEventListener('abort', this.onAbort);
    }
    const it = this.it;
    if (!closeSource || it === undefined) return undefined;
    if (this.pulling) {
      closeInBackground(it);
      return undefined;
    }
    return closeIterator(it);
  }

  protected step(): Promise<IteratorResult<T>> {
    if (this.signal.aborted) {
      this.calls--;
      const closing = this.finish();
      const reason: unknown = this.signal.reason;
      return closing === undefined ? Promise.reject(reason) : closing.then(() => Promise.reject(reason), () => Promise.reject(reason));
    }
    if (this.ended) {
      this.calls--;
      return DONE_PROMISE;
    }
    if (this.it === undefined) {
      this.it = open(this.source);
      this.listening = true;
      this.signal.addEventListener('abort', this.onAbort, { once: true });
    }
    const p = new Promise<IteratorResult<T>>(this.executor);
    this.pulling = true;
    let next: Promise<IteratorResult<T>>;
    try {
      next = this.it.next();
    } catch (err) {
      next = Promise.reject(err);
    }
    next.then(this.onResult, this.onError);
    return p;
  }

  async return(): Promise<IteratorResult<T>> {
    const resolve = this.resolve;
    const closing = this.finish();
    if (resolve !== undefined) {
      this.resolve = this.reject = undefined;
      this.calls--;
      resolve(DONE);
    }
    if (closing !== undefined) await closing;
    return DONE;
  }
}

/**
 * Tie a stream to an AbortSignal. On abort, a pending read rejects at once with
 * `signal.reason` (later reads too), and `return()` is called on the source, which
 * cascades through every operator down to every source iterator. The listener is
 * removed when the stream ends, fails or is returned.
 *
 * @example
 * const ac = new AbortController();
 * setTimeout(() => ac.abort(), 5_000);
 * for await (const c of pipe(stream, withSignal(ac.signal))) show(c);
 */
export function withSignal<T>(signal: AbortSignal): Operator<T, T> {
  assertSignal(signal);
  if (signal === undefined) throw new SluiceError('ERR_INVALID_ARGUMENT', 'Expected `signal` to be an AbortSignal', { details: { field: 'signal' } });
  return (source) => ({ [Symbol.asyncIterator]: () => new SignalIterator(source, signal) });
}

function ignoreSecondary(): void {
  // See onAbort.
}

type Op<I, O> = Operator<I, O>;

/**
 * Apply operators left to right; an options object may follow the last operator.
 * Adjacent per-item operators (map, filter, take, ...) fuse into one iterator.
 *
 * @example
 * const out = pipe(host.stream('logs', 'tail'), filter((c) => c.data.level === 'error'), batch({ count: 50, ms: 200 }), { signal });
 */
export function pipe<A>(source: AsyncIterable<A>, options?: PipeOptions): AsyncIterable<A>;
export function pipe<A, B>(source: AsyncIterable<A>, op1: Op<A, B>, options?: PipeOptions): AsyncIterable<B>;
export function pipe<A, B, C>(source: AsyncIterable<A>, op1: Op<A, B>, op2: Op<B, C>, options?: PipeOptions): AsyncIterable<C>;
export function pipe<A, B, C, D>(source: AsyncIterable<A>, op1: Op<A, B>, op2: Op<B, C>, op3: Op<C, D>, options?: PipeOptions): AsyncIterable<D>;
export function pipe<A, B, C, D, E>(source: AsyncIterable<A>, op1: Op<A, B>, op2: Op<B, C>, op3: Op<C, D>, op4: Op<D, E>, options?: PipeOptions): AsyncIterable<E>;
export function pipe<A, B, C, D, E, F>(
  source: AsyncIterable<A>,
  op1: Op<A, B>,
  op2: Op<B, C>,
  op3: Op<C, D>,
  op4: Op<D, E>,
  op5: Op<E, F>,
  options?: PipeOptions,
): AsyncIterable<F>;
export function pipe<A, B, C, D, E, F, G>(
  source: AsyncIterable<A>,
  op1: Op<A, B>,
  op2: Op<B, C>,
  op3: Op<C, D>,
  op4: Op<D, E>,
  op5: Op<E, F>,
  op6: Op<F, G>,
  options?: PipeOptions,
): AsyncIterable<G>;
export function pipe<A, B, C, D, E, F, G, H>(
  source: AsyncIterable<A>,
  op1: Op<A, B>,
  op2: Op<B, C>,
  op3: Op<C, D>,
  op4: Op<D, E>,
  op5: Op<E, F>,
  op6: Op<F, G>,
  op7: Op<G, H>,
  options?: PipeOptions,
): AsyncIterable<H>;
export function pipe<A, B, C, D, E, F, G, H, I>(
  source: AsyncIterable<A>,
  op1: Op<A, B>,
  op2: Op<B, C>,
  op3: Op<C, D>,
  op4: Op<D, E>,
  op5: Op<E, F>,
  op6: Op<F, G>,
  op7: Op<G, H>,
  op8: Op<H, I>,
  options?: PipeOptions,
): AsyncIterable<I>;
/** More than eight operators: typed loosely. */
export function pipe(source: AsyncIterable<unknown>, ...rest: (Op<any, any> | PipeOptions | undefined)[]): AsyncIterable<unknown>;
export function pipe(source: AsyncIterable<unknown>, ...rest: (Op<any, any> | PipeOptions | undefined)[]): AsyncIterable<unknown> {
  let options: PipeOptions | undefined;
  const last = rest[rest.length - 1];
  if (rest.length > 0 && typeof last !== 'function') {
    options = last;
    rest.pop();
  }
  let out = source;
  rest.forEach((op, i) => {
    assertFunction(op, `op${i + 1}`);
    out = (op as Op<unknown, unknown>)(out);
  });
  const signal = options?.signal;
  assertSignal(signal);
  return signal === undefined ? out : withSignal<unknown>(signal)(out);
}

/**
 * An iterable that calls `factory` only when iterated: nothing starts (no plugin is
 * launched) before a consumer reads.
 *
 * @example
 * const later = defer(() => host.stream('clock', 'ticks'));
 */
export function defer<T>(factory: () => AsyncIterable<T>): AsyncIterable<T> {
  assertFunction(factory, 'factory');
  return { [Symbol.asyncIterator]: () => open(factory()) };
}

export interface ToArrayOptions extends PipeOptions {
  /** Fail with ERR_BUFFER_OVERFLOW rather than hold more than this many items (default 1,000,000). */
  max?: number;
}

const TO_ARRAY_MAX = 1_000_000;

/**
 * Read a (finite) stream to its end into an array.
 *
 * @example
 * const firstTen = await toArray(pipe(stream, take(10)));
 */
export async function toArray<T>(source: AsyncIterable<T>, options: ToArrayOptions = {}): Promise<T[]> {
  const max = options.max ?? TO_ARRAY_MAX;
  assertInteger(max, 'max', 'ERR_INVALID_ARGUMENT', 0);
  const out: T[] = [];
  const input = options.signal === undefined ? source : withSignal<T>(options.signal)(source);
  for await (const item of input) {
    if (out.length >= max) throw new SluiceError('ERR_BUFFER_OVERFLOW', `toArray got more than ${max} items`, { details: { max } });
    out.push(item);
  }
  return out;
}
