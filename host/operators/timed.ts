/**
 * Operators driven by time as well as items: batch and throttle. Both use one timer
 * (never a polling loop), cleared when they end, fail or are returned.
 */
import { assertInteger } from '../../protocol/assert.js';
import { DONE, open, type Operator, releaseSource, SerialIterator, Wake } from './internal.js';

const MAX_MS = 2_147_483_647; // setTimeout's ceiling

export interface BatchOptions {
  /** Emit when the batch holds this many items. */
  count: number;
  /** Also emit a non-empty batch this long after its first item arrived. */
  ms?: number;
}

class BatchIterator<T> extends SerialIterator<T[]> {
  private it: AsyncIterator<T> | undefined = undefined;
  private buf: T[] = [];
  private readonly wake = new Wake();
  private timer: ReturnType<typeof setTimeout> | undefined = undefined;
  private expired = false;
  private pulling = false;
  private sourceDone = false;
  private error: { err: unknown } | undefined = undefined;
  private closed = false;

  constructor(
    private readonly source: AsyncIterable<T>,
    private readonly count: number,
    private readonly ms: number | undefined,
  ) {
    super();
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.expired = true;
    this.wake.fire();
  };

  private readonly onPull = (r: IteratorResult<T>): void => {
    this.pulling = false;
    if (this.closed) return;
    if (r.done === true) this.sourceDone = true;
    else {
      this.buf.push(r.value);
      if (this.buf.length === 1 && this.ms !== undefined) this.timer = setTimeout(this.onTimer, this.ms);
    }
    this.wake.fire();
  };

  private readonly onPullError = (err: unknown): void => {
    this.pulling = false;
    this.sourceDone = true;
    this.error = { err };
    this.wake.fire();
  };

  private emit(): IteratorResult<T[]> {
    const out = this.buf;
    this.buf = [];
    this.expired = false;
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    return { done: false, value: out };
  }

  protected async step(): Promise<IteratorResult<T[]>> {
    try {
      for (;;) {
        if (this.closed) return DONE;
        const n = this.buf.length;
        // A partial batch is delivered before the source's end or error.
        if (n >= this.count || (n > 0 && (this.expired || this.sourceDone))) return this.emit();
        if (this.sourceDone) {
          this.closed = true;
          if (this.error !== undefined) throw this.error.err;
          return DONE;
        }
        if (!this.pulling) {
          const it = (this.it ??= open(this.source));
          this.pulling = true;
          it.next().then(this.onPull, this.onPullError);
        }
        await this.wake.wait();
      }
    } finally {
      this.calls--;
    }
  }

  async return(): Promise<IteratorResult<T[]>> {
    if (this.closed) return DONE;
    this.closed = true;
    this.buf = [];
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.wake.fire();
    const it = this.it;
    if (it !== undefined && !this.sourceDone) {
      await releaseSource(it, this.pulling);
    }
    return DONE;
  }
}

/**
 * Group items into arrays of `count`, or fewer when `ms` elapsed since the batch's
 * first item (a timer, armed by that item). Reads the source only while the consumer
 * waits, so it holds at most `count` items. A partial batch is emitted before the
 * source's end or error.
 *
 * @example
 * const rows = pipe(events, batch({ count: 100, ms: 50 }));
 */
export function batch<T>(options: BatchOptions): Operator<T, T[]> {
  const count = options?.count;
  const ms = options?.ms;
  assertInteger(count, 'count', 'ERR_INVALID_ARGUMENT', 1, 1_000_000);
  if (ms !== undefined) assertInteger(ms, 'ms', 'ERR_INVALID_ARGUMENT', 1, MAX_MS);
  return (source) => ({ [Symbol.asyncIterator]: () => new BatchIterator(source, count, ms) });
}

export interface ThrottleOptions {
  /** Minimum time between two items, in milliseconds. */
  ms: number;
}

class ThrottleIterator<T> extends SerialIterator<T> {
  private it: AsyncIterator<T> | undefined = undefined;
  private readonly wake = new Wake();
  private timer: ReturnType<typeof setTimeout> | undefined = undefined;
  private last = -Infinity;
  private pulling = false;
  private closed = false;

  constructor(
    private readonly source: AsyncIterable<T>,
    private readonly ms: number,
  ) {
    super();
  }

  private readonly onTimer = (): void => {
    this.timer = undefined;
    this.wake.fire();
  };

  protected async step(): Promise<IteratorResult<T>> {
    try {
      if (this.closed) return DONE;
      const it = (this.it ??= open(this.source));
      let r: IteratorResult<T>;
      this.pulling = true;
      try {
        r = await it.next();
      } catch (err) {
        this.closed = true;
        throw err;
      } finally {
        this.pulling = false;
      }
      if (this.closed) return DONE;
      if (r.done === true) {
        this.closed = true;
        return DONE;
      }
      // Hold this one item (the only buffer) until the interval since the last one passed.
      // libuv starts a timer from the event loop's cached clock, which lags behind
      // performance.now() when the loop is busy: the timer can fire early, so look again.
      for (let wait = this.last + this.ms - performance.now(); wait > 0; wait = this.last + this.ms - performance.now()) {
        this.timer = setTimeout(this.onTimer, Math.ceil(wait));
        await this.wake.wait();
        if (this.closed) return DONE;
      }
      this.last = performance.now();
      return r;
    } finally {
      this.calls--;
    }
  }

  async return(): Promise<IteratorResult<T>> {
    if (this.closed) return DONE;
    this.closed = true;
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    this.wake.fire();
    const it = this.it;
    if (it !== undefined) {
      await releaseSource(it, this.pulling);
    }
    return DONE;
  }
}

/**
 * Rate limit: at most one item per `ms`. Pull-based, so a faster source is slowed
 * down (it is not read while throttle waits), never dropped or buffered beyond the
 * one item held until its turn.
 *
 * @example
 * const calm = pipe(ticks, throttle({ ms: 100 }));
 */
export function throttle<T>(options: ThrottleOptions): Operator<T, T> {
  const ms = options?.ms;
  assertInteger(ms, 'ms', 'ERR_INVALID_ARGUMENT', 1, MAX_MS);
  return (source) => ({ [Symbol.asyncIterator]: () => new ThrottleIterator(source, ms) });
}
