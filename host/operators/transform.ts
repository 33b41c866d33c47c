/**
 * Per-item transforms: map, filter, scan, reduce, take, skip, window.
 *
 * These are "stages": each turns one input into zero or one output. Applying a stage
 * to a stage pipeline that has not started yet fuses it into the same iterator, so
 * `pipe(source, map(f), filter(p), take(10))` is one async iterator over `source`
 * running three stages in a loop, not three iterators each paying a promise round
 * trip per item. A stage function may return a promise; the stage awaits it (one at
 * a time, in order). `map(fn, { concurrency })` above 1 is a separate iterator.
 */
import { assertInteger } from '../../protocol/assert.js';
import { ConcurrentMap } from './concurrent.js';
import { assertFunction, closeIterator, DONE, isPromiseLike, open, type Operator, releaseSource, SerialIterator } from './internal.js';

const STAGE_MAP = 0;
const STAGE_FILTER = 1;
const STAGE_SCAN = 2;
const STAGE_REDUCE = 3;
const STAGE_TAKE = 4;
const STAGE_SKIP = 5;
const STAGE_WINDOW = 6;

/** Returned by a stage that swallowed its input (filtered out, skipped, accumulated). */
const NOTHING: unique symbol = Symbol('nothing');

type AnyFn = (...args: never[]) => unknown;
type StageFn = (a: unknown, b: unknown, c?: number) => unknown;

/** The immutable description of a stage; per-iteration state lives in `Stage`. */
interface StageSpec {
  readonly kind: number;
  readonly fn: AnyFn | undefined;
  readonly count: number;
  readonly slide: number;
  readonly seed: unknown;
}

class Stage {
  readonly kind: number;
  readonly fn: StageFn;
  readonly count: number;
  readonly slide: number;
  index = 0;
  left: number;
  acc: unknown;
  buf: unknown[] = [];
  /** Items to drop before the next hopping window starts. */
  gap = 0;
  /** Items in `buf` not yet part of an emitted window. */
  fresh = 0;

  constructor(spec: StageSpec) {
    this.kind = spec.kind;
    this.fn = spec.fn as unknown as StageFn;
    this.count = spec.count;
    this.slide = spec.slide;
    this.left = spec.count;
    this.acc = spec.seed;
  }

  window(value: unknown): unknown {
    if (this.gap > 0) {
      this.gap--;
      return NOTHING;
    }
    this.buf.push(value);
    this.fresh++;
    if (this.buf.length < this.count) return NOTHING;
    const out = this.buf;
    this.fresh = 0;
    if (this.slide >= this.count) {
      this.buf = [];
      this.gap = this.slide - this.count;
    } else this.buf = out.slice(this.slide);
    return out;
  }

  /** What the stage still holds when its input ends. */
  flush(): unknown {
    if (this.kind === STAGE_REDUCE) return this.acc;
    if (this.kind === STAGE_WINDOW && this.fresh > 0) {
      const out = this.buf;
      this.buf = [];
      this.fresh = 0;
      return out;
    }
    return NOTHING;
  }
}

const PHASE_PULL = 0;
const PHASE_FLUSH = 1;
const PHASE_ENDED = 2;

class FusedIterator<T> extends SerialIterator<T> {
  private it: AsyncIterator<unknown> | undefined = undefined;
  private readonly stages: Stage[];
  private phase = PHASE_PULL;
  /** Index of a `take` stage that reached its count: the source is finished there. */
  private stopAt = -1;
  private flushAt = 0;
  private pulling = false;
  private closing: Promise<unknown> | undefined = undefined;

  constructor(
    private readonly source: AsyncIterable<unknown>,
    specs: readonly StageSpec[],
  ) {
    super();
    this.stages = specs.map((s) => new Stage(s));
    const zero = this.stages.findIndex((s) => s.kind === STAGE_TAKE && s.left === 0);
    if (zero >= 0) {
      // take(0): the source is never opened.
      this.phase = PHASE_FLUSH;
      this.flushAt = zero + 1;
    }
  }

  /** Run `value` through stages `from..`; a value, NOTHING, or a promise of either. */
  private run(value: unknown, from: number): unknown {
    const stages = this.stages;
    for (let i = from; i < stages.length; i++) {
      const s = stages[i]!;
      switch (s.kind) {
        case STAGE_MAP: {
          const out = s.fn(value, s.index++);
          if (isPromiseLike(out)) return this.resume(out, i);
          value = out;
          break;
        }
        case STAGE_FILTER: {
          const ok = s.fn(value, s.index++);
          if (isPromiseLike(ok)) return this.resumeFilter(ok, value, i);
          if (!ok) return NOTHING;
          break;
        }
        case STAGE_SCAN: {
          const out = s.fn(s.acc, value, s.index++);
          if (isPromiseLike(out)) return this.resumeScan(out, s, i);
          s.acc = out;
          value = out;
          break;
        }
        case STAGE_REDUCE: {
          const out = s.fn(s.acc, value, s.index++);
          if (isPromiseLike(out)) return this.resumeReduce(out, s);
          s.acc = out;
          return NOTHING;
        }
        case STAGE_TAKE:
          if (--s.left === 0 && this.stopAt < 0) this.stopAt = i;
          break;
        case STAGE_SKIP:
          if (s.left > 0) {
            s.left--;
            return NOTHING;
          }
          break;
        default:
          value = s.window(value);
          if (value === NOTHING) return NOTHING;
      }
    }
    return value;
  }

  private async resume(out: PromiseLike<unknown>, i: number): Promise<unknown> {
    return this.run(await out, i + 1);
  }

  private async resumeFilter(ok: PromiseLike<unknown>, value: unknown, i: number): Promise<unknown> {
    return (await ok) ? this.run(value, i + 1) : NOTHING;
  }

  private async resumeScan(out: PromiseLike<unknown>, s: Stage, i: number): Promise<unknown> {
    s.acc = await out;
    return this.run(s.acc, i + 1);
  }

  private async resumeReduce(out: PromiseLike<unknown>, s: Stage): Promise<unknown> {
    s.acc = await out;
    return NOTHING;
  }

  protected step(): Promise<IteratorResult<T>> {
    return this.phase === PHASE_PULL ? this.pullStep() : this.endStep();
  }

  /**
   * The hot path, kept apart from the rest: an async function's suspended frame is
   * allocated per call and sized by its locals, so fewer locals is less garbage per item.
   * Each path decrements `calls` once: here, in `endStep`, or in `failStep`.
   */
  private async pullStep(): Promise<IteratorResult<T>> {
    try {
      const it = (this.it ??= open(this.source));
      for (;;) {
        // `pulling` also tells failStep whose error it is: the source's, or a stage's.
        this.pulling = true;
        const r = await it.next();
        this.pulling = false;
        if (this.phase !== PHASE_PULL) break; // returned while we waited
        if (r.done === true) {
          this.phase = PHASE_FLUSH;
          break;
        }
        let out = this.run(r.value, 0);
        if (isPromiseLike(out)) out = await out;
        if (this.phase !== PHASE_PULL) break;
        if (this.stopAt >= 0) this.stop(it);
        if (out !== NOTHING) {
          this.calls--;
          return { done: false, value: out as T };
        }
        if (this.phase !== PHASE_PULL) break;
      }
    } catch (err) {
      return this.failStep(err);
    }
    return this.endStep();
  }

  /** A take() is satisfied: release the source now, not when the consumer asks again. */
  private stop(it: AsyncIterator<unknown>): void {
    this.phase = PHASE_FLUSH;
    this.flushAt = this.stopAt + 1;
    const closing = closeIterator(it);
    closing.then(undefined, noop); // awaited (and rethrown) by the next step or return()
    this.closing = closing;
  }

  /** After the source: flush the stages that hold something, then wait for a pending close. */
  private async endStep(): Promise<IteratorResult<T>> {
    try {
      if (this.phase === PHASE_FLUSH) {
        const stages = this.stages;
        while (this.flushAt < stages.length) {
          const k = this.flushAt++;
          let out = stages[k]!.flush();
          if (out === NOTHING) continue;
          out = this.run(out, k + 1);
          if (isPromiseLike(out)) out = await out;
          if (this.phase !== PHASE_FLUSH) return DONE;
          if (out !== NOTHING) return { done: false, value: out as T };
        }
        this.phase = PHASE_ENDED;
      }
      const closing = this.closing;
      if (closing !== undefined) {
        this.closing = undefined;
        await closing;
      }
      return DONE;
    } catch (err) {
      this.phase = PHASE_ENDED;
      throw err;
    } finally {
      this.calls--;
    }
  }

  private async failStep(err: unknown): Promise<never> {
    try {
      const phase = this.phase;
      this.phase = PHASE_ENDED;
      if (this.pulling) this.pulling = false; // the source threw: it is finished
      else if (phase === PHASE_PULL && this.it !== undefined) await closeAfterError(this.it); // a stage threw
      throw err;
    } finally {
      this.calls--;
    }
  }

  async return(): Promise<IteratorResult<T>> {
    const phase = this.phase;
    this.phase = PHASE_ENDED;
    const it = this.it;
    if (phase === PHASE_PULL && it !== undefined) {
      await releaseSource(it, this.pulling);
    }
    const closing = this.closing;
    if (closing !== undefined) {
      this.closing = undefined;
      await closing;
    }
    return DONE;
  }
}

function noop(): void {
  // The rejection is kept in the promise and rethrown where it is awaited.
}

/**
 * Close a source after our own code failed. The original error is what the consumer
 * must see; a second failure while closing is secondary and not reported.
 */
async function closeAfterError(it: AsyncIterator<unknown>): Promise<void> {
  try {
    await closeIterator(it);
  } catch {
    // Secondary to the error being thrown; see above.
  }
}

/** A not-yet-started stage pipeline over `source`; further stages fuse into it. */
class Fused<T> implements AsyncIterable<T> {
  constructor(
    readonly source: AsyncIterable<unknown>,
    readonly specs: readonly StageSpec[],
  ) {}

  [Symbol.asyncIterator](): AsyncIterator<T> {
    return new FusedIterator<T>(this.source, this.specs);
  }
}

function stage<I, O>(spec: StageSpec): Operator<I, O> {
  return (source) =>
    source instanceof Fused ? new Fused<O>(source.source, [...source.specs, spec]) : new Fused<O>(source as AsyncIterable<unknown>, [spec]);
}

function spec(kind: number, fn: AnyFn | undefined, count = 0, slide = 0, seed: unknown = undefined): StageSpec {
  return Object.freeze({ kind, fn, count, slide, seed });
}

export interface MapOptions {
  /** Calls of `fn` in flight at once (and results held); default 1. */
  concurrency?: number;
  /** With concurrency above 1: emit in input order (default) or in completion order. */
  ordered?: boolean;
}

const MAP_DEFAULTS = Object.freeze({ concurrency: 1, ordered: true });

/**
 * Transform each item with `fn` (sync or async). With `concurrency: N`, up to N calls
 * run at once and at most N results wait for the consumer, so the source is read at
 * most N items ahead of the consumer.
 *
 * @example
 * const titles = pipe(chunks, map(async (c) => fetchTitle(c.data), { concurrency: 4 }));
 */
export function map<I, O>(fn: (value: I, index: number) => O | PromiseLike<O>, options: MapOptions = {}): Operator<I, O> {
  assertFunction(fn, 'fn');
  const concurrency = options.concurrency ?? MAP_DEFAULTS.concurrency;
  const ordered = options.ordered ?? MAP_DEFAULTS.ordered;
  assertInteger(concurrency, 'concurrency', 'ERR_INVALID_ARGUMENT', 1, 1024);
  if (concurrency === 1) return stage(spec(STAGE_MAP, fn));
  return (source) => new ConcurrentMap(source, fn, concurrency, ordered === true);
}

/**
 * Keep the items for which `fn` (sync or async) returns truthy.
 *
 * @example
 * const errors = pipe(logs, filter((c) => c.data.level === 'error'));
 */
export function filter<T, S extends T>(fn: (value: T, index: number) => value is S): Operator<T, S>;
export function filter<T>(fn: (value: T, index: number) => unknown): Operator<T, T>;
export function filter<T>(fn: (value: T, index: number) => unknown): Operator<T, T> {
  assertFunction(fn, 'fn');
  return stage(spec(STAGE_FILTER, fn));
}

/**
 * Emit the running accumulation: `seed`, then `fn(acc, value)` for each item (the seed
 * itself is not emitted).
 *
 * @example
 * const totals = pipe(amounts, scan((sum, n) => sum + n, 0));
 */
export function scan<T, A>(fn: (acc: A, value: T, index: number) => A | PromiseLike<A>, seed: A): Operator<T, A> {
  assertFunction(fn, 'fn');
  return stage(spec(STAGE_SCAN, fn, 0, 0, seed));
}

/**
 * Emit one value when the source ends: the accumulation of every item into `seed`.
 *
 * @example
 * const [count] = await toArray(pipe(chunks, reduce((n) => n + 1, 0)));
 */
export function reduce<T, A>(fn: (acc: A, value: T, index: number) => A | PromiseLike<A>, seed: A): Operator<T, A> {
  assertFunction(fn, 'fn');
  return stage(spec(STAGE_REDUCE, fn, 0, 0, seed));
}

/**
 * The first `count` items; the source is returned (cancelled) as soon as the last one
 * passes, before the consumer asks again. `take(0)` never opens the source.
 *
 * @example
 * const firstTen = pipe(stream, take(10));
 */
export function take<T>(count: number): Operator<T, T> {
  assertInteger(count, 'count', 'ERR_INVALID_ARGUMENT', 0);
  return stage(spec(STAGE_TAKE, undefined, count));
}

/**
 * Drop the first `count` items.
 *
 * @example
 * const afterHeader = pipe(lines, skip(1));
 */
export function skip<T>(count: number): Operator<T, T> {
  assertInteger(count, 'count', 'ERR_INVALID_ARGUMENT', 0);
  return stage(spec(STAGE_SKIP, undefined, count));
}

export interface WindowOptions {
  /** Items per window. */
  count: number;
  /** Items between the starts of two windows; default `count` (tumbling windows). */
  slide?: number;
}

/**
 * Count windows as arrays: every `slide` items, the last `count` items. `slide < count`
 * overlaps windows, `slide > count` leaves gaps. When the source ends, the items not
 * yet emitted in any window are emitted as one last, shorter window. Holds at most
 * `count` items.
 *
 * @example
 * const movingAverages = pipe(prices, window({ count: 5, slide: 1 }), map(avg));
 */
export function window<T>(options: WindowOptions): Operator<T, T[]> {
  const count = options?.count;
  const slide = options?.slide ?? count;
  assertInteger(count, 'count', 'ERR_INVALID_ARGUMENT', 1, 1_000_000);
  assertInteger(slide, 'slide', 'ERR_INVALID_ARGUMENT', 1, 1_000_000);
  return stage(spec(STAGE_WINDOW, undefined, count, slide));
}
