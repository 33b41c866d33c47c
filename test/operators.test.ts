/**
 * Stream operators: ordering, completion, errors, cancellation, bounded memory.
 * Every loop is bounded in count; every wait is bounded in time.
 */
import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import { describe, test } from 'node:test';
import {
  batch,
  concat,
  defer,
  filter,
  map,
  merge,
  pipe,
  race,
  reduce,
  scan,
  skip,
  split,
  take,
  tee,
  throttle,
  toArray,
  window,
  withSignal,
  zip,
  type Operator,
} from '../host/operators/index.js';
import { isSluiceError } from '../protocol/errors.js';

const DONE = { done: true as const, value: undefined };

/**
 * A source like a host stream: a hand-written iterator that counts what it produced
 * and whether it was returned, and (like a host stream) answers `return()` at once
 * even with a `next()` pending.
 */
class Src<T = number> implements AsyncIterableIterator<T> {
  produced = 0;
  nextCalls = 0;
  returned = 0;
  opened = 0;
  private pending: ((r: IteratorResult<T>) => void) | undefined;
  private queue: IteratorResult<T>[] = [];
  private failNext: unknown;
  private ended = false;

  /** `items`: a finite list, a function of the index (infinite), or 'manual' (driven by emit/end/fail). */
  constructor(
    private readonly items: readonly T[] | ((i: number) => T) | 'manual',
    private readonly opts: { failAt?: number; error?: unknown; macrotask?: boolean } = {},
  ) {}

  [Symbol.asyncIterator](): this {
    this.opened++;
    return this;
  }

  next(): Promise<IteratorResult<T>> {
    this.nextCalls++;
    if (this.ended) return Promise.resolve(DONE);
    if (this.failNext !== undefined) {
      const err = this.failNext;
      this.failNext = undefined;
      this.ended = true;
      return Promise.reject(err);
    }
    const items = this.items;
    if (items === 'manual') {
      const queued = this.queue.shift();
      if (queued !== undefined) return Promise.resolve(queued);
      return new Promise((resolve) => {
        this.pending = resolve;
      });
    }
    const i = this.produced;
    if (this.opts.failAt === i) {
      this.ended = true;
      return Promise.reject(this.opts.error ?? new Error(`boom at ${i}`));
    }
    if (Array.isArray(items) && i >= items.length) {
      this.ended = true;
      return Promise.resolve(DONE);
    }
    this.produced++;
    const value = typeof items === 'function' ? items(i) : (items as readonly T[])[i]!;
    const r = { done: false as const, value };
    if (this.opts.macrotask === true) return new Promise((resolve) => setImmediate(() => resolve(r)));
    return Promise.resolve(r);
  }

  emit(value: T): void {
    this.produced++;
    this.settle({ done: false, value });
  }

  end(): void {
    this.settle(DONE);
  }

  fail(err: unknown): void {
    const p = this.pending;
    if (p === undefined) this.failNext = err;
    else {
      this.pending = undefined;
      this.ended = true;
      // Reject the pending read: rebuild as a rejected result through a thenable.
      (p as unknown as (v: PromiseLike<never>) => void)(Promise.reject(err));
    }
  }

  get waiting(): boolean {
    return this.pending !== undefined;
  }

  private settle(r: IteratorResult<T>): void {
    const p = this.pending;
    if (p !== undefined) {
      this.pending = undefined;
      p(r);
    } else this.queue.push(r);
  }

  return(): Promise<IteratorResult<T>> {
    this.returned++;
    this.ended = true;
    const p = this.pending;
    this.pending = undefined;
    p?.(DONE);
    return Promise.resolve(DONE);
  }
}

const nat = (i: number): number => i;

/** Let pending microtasks and a few macrotask turns run (bounded). */
async function settle(turns = 5): Promise<void> {
  for (let i = 0; i < turns; i++) await tick();
}

async function rejects(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (err: unknown) => {
    assert.ok(isSluiceError(err), `expected a SluiceError, got ${String(err)}`);
    assert.equal(err.code, code);
    return true;
  });
}

/** Read up to `n` items, with a tick between reads (a slow consumer). */
async function readSlowly<T>(it: AsyncIterator<T>, n: number): Promise<T[]> {
  const out: T[] = [];
  for (let i = 0; i < n; i++) {
    const r = await it.next();
    if (r.done === true) break;
    out.push(r.value);
    await tick();
  }
  return out;
}

function timeoutsActive(): number {
  return process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
}

describe('per-item transforms', () => {
  test('map, filter, scan, reduce, take, skip keep order and complete', async () => {
    const src = (): Src => new Src([1, 2, 3, 4, 5, 6]);
    assert.deepEqual(await toArray(pipe(src(), map((x: number, i) => x * 10 + i))), [10, 21, 32, 43, 54, 65]);
    assert.deepEqual(await toArray(pipe(src(), filter((x: number) => x % 2 === 0))), [2, 4, 6]);
    assert.deepEqual(await toArray(pipe(src(), scan((acc: number, x: number) => acc + x, 0))), [1, 3, 6, 10, 15, 21]);
    assert.deepEqual(await toArray(pipe(src(), reduce((acc: number, x: number) => acc + x, 100))), [121]);
    assert.deepEqual(await toArray(pipe(src(), skip(2), take(3))), [3, 4, 5]);
    assert.deepEqual(await toArray(pipe(new Src<number>([]), reduce((a: number) => a + 1, 0))), [0]);
  });

  test('async functions are awaited in order', async () => {
    const out = await toArray(
      pipe(
        new Src([30, 10, 20]),
        map(async (x: number) => {
          await new Promise((r) => setTimeout(r, x / 10));
          return x;
        }),
        filter(async (x: number) => x !== 10),
        scan(async (a: number, x: number) => a + x, 0),
      ),
    );
    assert.deepEqual(out, [30, 50]);
  });

  test('operators applied by hand fuse the same as through pipe', async () => {
    const op = filter((x: number) => x > 2);
    const out = await toArray(op(map((x: number) => x + 1)(new Src([1, 2, 3]))));
    assert.deepEqual(out, [3, 4]);
  });

  test('a fused iterable can be iterated twice, with fresh state', async () => {
    const numbers = { [Symbol.asyncIterator]: () => new Src([1, 2, 3]) };
    const counted = pipe(numbers, scan((n: number) => n + 1, 0));
    assert.deepEqual(await toArray(counted), [1, 2, 3]);
    assert.deepEqual(await toArray(counted), [1, 2, 3]);
  });

  test('take returns the source as soon as the last item passes', async () => {
    const src = new Src(nat);
    const it = pipe(src, take(3))[Symbol.asyncIterator]();
    assert.deepEqual([(await it.next()).value, (await it.next()).value], [0, 1]);
    assert.equal(src.returned, 0);
    assert.deepEqual(await it.next(), { done: false, value: 2 });
    assert.equal(src.returned, 1, 'returned before the consumer asked again');
    assert.deepEqual(await it.next(), DONE);
    assert.equal(src.produced, 3);
  });

  test('take(0) never opens the source; reduce after take still emits', async () => {
    const src = new Src(nat);
    assert.deepEqual(await toArray(pipe(src, take(0))), []);
    assert.equal(src.opened, 0);
    const src2 = new Src(nat);
    assert.deepEqual(await toArray(pipe(src2, take(4), reduce((a: number, x: number) => a + x, 0))), [6]);
    assert.equal(src2.returned, 1);
  });

  test('window: tumbling, sliding and hopping, with the trailing partial window', async () => {
    const src = (): Src => new Src([1, 2, 3, 4, 5]);
    assert.deepEqual(await toArray(pipe(src(), window({ count: 2 }))), [[1, 2], [3, 4], [5]]);
    assert.deepEqual(await toArray(pipe(src(), window({ count: 3, slide: 1 }))), [
      [1, 2, 3],
      [2, 3, 4],
      [3, 4, 5],
    ]);
    assert.deepEqual(await toArray(pipe(src(), window({ count: 2, slide: 3 }))), [[1, 2], [4, 5]]);
    assert.deepEqual(await toArray(pipe(new Src([1, 2, 3, 4]), window({ count: 3, slide: 2 }))), [[1, 2, 3], [3, 4]]);
  });

  test('a consumer that breaks early returns the source', async () => {
    const src = new Src(nat);
    const seen: number[] = [];
    for await (const x of pipe(src, map((v: number) => v * 2), filter((v: number) => v % 3 !== 0))) {
      seen.push(x);
      if (seen.length === 3) break;
    }
    assert.deepEqual(seen, [2, 4, 8]);
    assert.equal(src.returned, 1);
  });

  test('a source error reaches the consumer; the source is not returned', async () => {
    const src = new Src(nat, { failAt: 2, error: new Error('source broke') });
    await assert.rejects(toArray(pipe(src, map((x: number) => x))), /source broke/);
    assert.equal(src.returned, 0);
  });

  test('an error in a stage function returns the source, then reaches the consumer', async () => {
    const src = new Src(nat);
    const out = pipe(
      src,
      map((x: number) => {
        if (x === 2) throw new Error('fn broke');
        return x;
      }),
    );
    await assert.rejects(toArray(out), /fn broke/);
    assert.equal(src.returned, 1);
    const src2 = new Src(nat);
    await assert.rejects(toArray(pipe(src2, filter(async (x: number) => Promise.reject(new Error(`async ${x}`))))), /async 0/);
    assert.equal(src2.returned, 1);
  });

  test('concurrent next() calls are served in order', async () => {
    const it = pipe(
      new Src([40, 0, 20]),
      map(async (ms: number) => {
        await new Promise((r) => setTimeout(r, ms / 4));
        return ms;
      }),
    )[Symbol.asyncIterator]();
    const results = await Promise.all([it.next(), it.next(), it.next(), it.next()]);
    assert.deepEqual(
      results.map((r) => r.value),
      [40, 0, 20, undefined],
    );
  });

  test('bad arguments are coded errors naming the option', () => {
    assert.throws(() => take(-1), (e: unknown) => isSluiceError(e, 'ERR_INVALID_ARGUMENT') && /`count`/.test(e.message));
    assert.throws(() => map((x) => x, { concurrency: 0 }), (e: unknown) => isSluiceError(e, 'ERR_INVALID_ARGUMENT') && /`concurrency`/.test(e.message));
    assert.throws(() => batch({ count: 0 }), (e: unknown) => isSluiceError(e, 'ERR_INVALID_ARGUMENT'));
    assert.throws(() => window({ count: 2, slide: 0 }), (e: unknown) => isSluiceError(e, 'ERR_INVALID_ARGUMENT') && /`slide`/.test(e.message));
    assert.throws(() => map(42 as never), (e: unknown) => isSluiceError(e, 'ERR_INVALID_ARGUMENT'));
    assert.throws(() => tee(new Src([1]), 2, { policy: { buffer: 0, onOverflow: 'drop' } }), (e: unknown) => isSluiceError(e, 'ERR_INVALID_ARGUMENT'));
  });
});

describe('map with concurrency', () => {
  test('never more than N calls in flight; N is reached; order kept', async () => {
    const N = 3;
    let inFlight = 0;
    let maxInFlight = 0;
    const out = await toArray(
      pipe(
        new Src(Array.from({ length: 20 }, (_, i) => i)),
        map(
          async (x: number) => {
            inFlight++;
            maxInFlight = Math.max(maxInFlight, inFlight);
            await new Promise((r) => setTimeout(r, (x * 7) % 5));
            inFlight--;
            return x * 2;
          },
          { concurrency: N },
        ),
      ),
    );
    assert.deepEqual(
      out,
      Array.from({ length: 20 }, (_, i) => i * 2),
    );
    assert.equal(maxInFlight, N);
  });

  test('unordered emits in completion order', async () => {
    const resolvers: ((v: string) => void)[] = [];
    const it = pipe(
      new Src(['a', 'b', 'c']),
      map((x: string) => new Promise<string>((r) => resolvers.push(() => r(x))), { concurrency: 3, ordered: false }),
    )[Symbol.asyncIterator]();
    const first = it.next();
    await settle(2);
    assert.equal(resolvers.length, 3);
    resolvers[2]!('');
    assert.deepEqual(await first, { done: false, value: 'c' });
    resolvers[0]!('');
    resolvers[1]!('');
    assert.deepEqual((await toArray({ [Symbol.asyncIterator]: () => it })).sort(), ['a', 'b']);
  });

  test('an error in fn returns the source and reaches the consumer', async () => {
    const src = new Src(nat);
    const out = pipe(
      src,
      map(
        async (x: number) => {
          if (x === 4) throw new Error('four');
          return x;
        },
        { concurrency: 2 },
      ),
    );
    const seen: number[] = [];
    await assert.rejects(
      (async () => {
        for await (const x of out) seen.push(x);
      })(),
      /four/,
    );
    assert.deepEqual(seen, [0, 1, 2, 3]);
    assert.equal(src.returned, 1);
  });

  test('a consumer that breaks returns the source', async () => {
    const src = new Src(nat);
    for await (const x of pipe(src, map(async (v: number) => v, { concurrency: 4 }))) if (x === 5) break;
    assert.equal(src.returned, 1);
  });
});

describe('batch', () => {
  test('by count, with the partial batch at the end', async () => {
    assert.deepEqual(await toArray(pipe(new Src([1, 2, 3, 4, 5]), batch({ count: 2 }))), [[1, 2], [3, 4], [5]]);
    assert.deepEqual(await toArray(pipe(new Src([1, 2, 3, 4]), batch({ count: 2, ms: 1000 }))), [
      [1, 2],
      [3, 4],
    ]);
  });

  test('by time: a partial batch goes out ms after its first item', async () => {
    const src = new Src<number>('manual');
    const it = pipe(src, batch({ count: 100, ms: 30 }))[Symbol.asyncIterator]();
    const started = performance.now();
    const first = it.next();
    src.emit(1);
    src.emit(2);
    assert.deepEqual(await first, { done: false, value: [1, 2] });
    const elapsed = performance.now() - started;
    assert.ok(elapsed >= 25 && elapsed < 2000, `emitted after ${elapsed} ms`);
    const second = it.next();
    src.emit(3);
    src.end();
    assert.deepEqual(await second, { done: false, value: [3] });
    assert.deepEqual(await it.next(), DONE);
    assert.equal(src.returned, 0);
  });

  test('a partial batch is delivered before the source error', async () => {
    const it = pipe(new Src(nat, { failAt: 3 }), batch({ count: 2 }))[Symbol.asyncIterator]();
    assert.deepEqual((await it.next()).value, [0, 1]);
    assert.deepEqual((await it.next()).value, [2]);
    await assert.rejects(it.next(), /boom at 3/);
  });

  test('return() while waiting clears the timer and returns the source', async () => {
    const before = timeoutsActive();
    const src = new Src<number>('manual');
    const it = pipe(src, batch({ count: 10, ms: 60_000 }))[Symbol.asyncIterator]();
    const pending = it.next();
    src.emit(1);
    await settle(2);
    assert.equal(timeoutsActive(), before + 1);
    await it.return!();
    assert.deepEqual(await pending, DONE);
    assert.equal(src.returned, 1);
    assert.equal(timeoutsActive(), before);
  });
});

describe('throttle', () => {
  test('spaces items by ms and holds at most one', async () => {
    const src = new Src(nat);
    const it = pipe(src, throttle({ ms: 20 }))[Symbol.asyncIterator]();
    const times: number[] = [];
    for (let i = 0; i < 4; i++) {
      assert.deepEqual(await it.next(), { done: false, value: i });
      times.push(performance.now());
      assert.ok(src.produced <= i + 1, `produced ${src.produced} after ${i + 1} delivered`);
    }
    for (let i = 1; i < times.length; i++) assert.ok(times[i]! - times[i - 1]! >= 18, `gap ${times[i]! - times[i - 1]!}`);
    await it.return!();
    assert.equal(src.returned, 1);
  });

  test('return() during the wait clears the timer', async () => {
    const before = timeoutsActive();
    const src = new Src(nat);
    const it = pipe(src, throttle({ ms: 60_000 }))[Symbol.asyncIterator]();
    await it.next();
    const pending = it.next();
    await settle(2);
    assert.equal(timeoutsActive(), before + 1);
    await it.return!();
    assert.deepEqual(await pending, DONE);
    assert.equal(timeoutsActive(), before);
    assert.equal(src.returned, 1);
  });
});

describe('merge, zip, concat, race', () => {
  test('merge emits every item of every source and ends when all end', async () => {
    const out = await toArray(merge(new Src([1, 2, 3]), new Src(['a', 'b']), new Src<boolean>([])));
    assert.deepEqual(
      out.filter((x) => typeof x === 'number'),
      [1, 2, 3],
    );
    assert.deepEqual(
      out.filter((x) => typeof x === 'string'),
      ['a', 'b'],
    );
    assert.equal(out.length, 5);
  });

  test('merge is fair: an infinite fast source does not starve the others', async () => {
    const fast = new Src((i) => `f${i}`);
    const b = new Src(Array.from({ length: 10 }, (_, i) => `b${i}`));
    const c = new Src(Array.from({ length: 10 }, (_, i) => `c${i}`));
    const seen: string[] = [];
    for await (const x of merge(fast, b, c)) {
      seen.push(x);
      if (seen.length === 33) break;
    }
    assert.equal(seen.filter((x) => x.startsWith('b')).length, 10);
    assert.equal(seen.filter((x) => x.startsWith('c')).length, 10);
    assert.equal(fast.returned, 1);
  });

  test('merge serves a slower source as soon as its item is there', async () => {
    const fast = new Src((i) => `f${i}`);
    const slow = new Src((i) => `s${i}`, { macrotask: true });
    let sinceSlow = 0;
    let maxRun = 0;
    let slowSeen = 0;
    for await (const x of merge(fast, slow)) {
      if (x.startsWith('s')) {
        slowSeen++;
        sinceSlow = 0;
        if (slowSeen === 5) break;
      } else maxRun = Math.max(maxRun, ++sinceSlow);
      if (sinceSlow > 100_000) break; // safety bound
      await tick();
    }
    assert.equal(slowSeen, 5);
    // The consumer ticks once per item, which is as long as the slow source takes: a fair merge alternates.
    assert.ok(maxRun <= 3, `fast source ran ${maxRun} items in a row`);
  });

  test('merge: a source error fails the stream and returns the other sources', async () => {
    const ok = new Src(nat);
    const bad = new Src<number>('manual');
    const it = merge(ok, bad)[Symbol.asyncIterator]();
    await it.next();
    bad.fail(new Error('bad source'));
    await assert.rejects(
      (async () => {
        for (let i = 0; i < 100; i++) await it.next();
      })(),
      /bad source/,
    );
    assert.equal(ok.returned, 1);
    assert.equal(bad.returned, 0);
  });

  test('merge: break returns every source, even ones with a pending read', async () => {
    const a = new Src(nat);
    const b = new Src<number>('manual');
    const c = new Src<number>('manual');
    for await (const x of merge(a, b, c)) if (x === 2) break;
    assert.deepEqual([a.returned, b.returned, c.returned], [1, 1, 1]);
  });

  test('merge: aborting the consumer rejects the read and returns every source', async () => {
    const sources = [new Src<number>('manual'), new Src<number>('manual'), new Src<number>('manual')];
    const ac = new AbortController();
    const it = pipe(merge(...sources), { signal: ac.signal })[Symbol.asyncIterator]();
    const pending = it.next();
    await settle(2);
    assert.ok(sources.every((s) => s.waiting));
    ac.abort(new Error('user cancelled'));
    await assert.rejects(pending, /user cancelled/);
    assert.deepEqual(
      sources.map((s) => s.returned),
      [1, 1, 1],
    );
    await assert.rejects(it.next(), /user cancelled/);
  });

  test('zip pairs items and ends with the shortest source, returning the others', async () => {
    const long = new Src(nat);
    const out = await toArray(zip(new Src(['a', 'b', 'c']), long));
    assert.deepEqual(out, [
      ['a', 0],
      ['b', 1],
      ['c', 2],
    ]);
    assert.equal(long.returned, 1);
  });

  test('zip: an error returns the other sources', async () => {
    const ok = new Src(nat);
    await assert.rejects(toArray(zip(ok, new Src(nat, { failAt: 2 }))), /boom at 2/);
    assert.equal(ok.returned, 1);
  });

  test('concat opens each source only after the previous one ended', async () => {
    const a = new Src([1, 2]);
    const b = new Src([3]);
    const it = concat(a, b)[Symbol.asyncIterator]();
    assert.deepEqual((await it.next()).value, 1);
    assert.equal(b.opened, 0);
    assert.deepEqual(await toArray({ [Symbol.asyncIterator]: () => it }), [2, 3]);
    assert.equal(b.opened, 1);
    const c = new Src(nat);
    const d = new Src(nat);
    for await (const x of concat(c, d)) if (x === 1) break;
    assert.deepEqual([c.returned, d.opened], [1, 0]);
  });

  test('race: the first source to yield wins, the others are returned', async () => {
    const a = new Src<string>('manual');
    const b = new Src<string>('manual');
    const c = new Src<string>('manual');
    const it = race(a, b, c)[Symbol.asyncIterator]();
    const first = it.next();
    await settle(1);
    b.emit('b0');
    assert.deepEqual(await first, { done: false, value: 'b0' });
    assert.deepEqual([a.returned, b.returned, c.returned], [1, 0, 1]);
    const second = it.next();
    b.emit('b1');
    assert.deepEqual(await second, { done: false, value: 'b1' });
    b.end();
    assert.deepEqual(await it.next(), DONE);
  });

  test('race: sources that end empty drop out; an early error fails the race', async () => {
    assert.deepEqual(await toArray(race(new Src<number>([]), new Src([7, 8]))), [7, 8]);
    const other = new Src<number>('manual');
    await assert.rejects(toArray(race(new Src(nat, { failAt: 0 }), other)), /boom at 0/);
    assert.equal(other.returned, 1);
  });
});

describe('tee and split', () => {
  test("'wait': the source goes at the pace of the slowest branch, nothing lost", async () => {
    const src = new Src(Array.from({ length: 20 }, (_, i) => i));
    const [fast, slow] = tee(src, 2);
    const fastSeen: number[] = [];
    const fastDone = (async () => {
      for await (const x of fast!) fastSeen.push(x);
    })();
    await settle(10);
    assert.ok(fastSeen.length <= 1, `fast branch got ${fastSeen.length} while slow read nothing`);
    assert.ok(src.produced <= 1);
    const slowIt = slow![Symbol.asyncIterator]();
    const slowSeen = await readSlowly(slowIt, 5);
    await settle(10);
    assert.ok(fastSeen.length <= slowSeen.length + 1, `fast ${fastSeen.length} vs slow ${slowSeen.length}`);
    assert.ok(src.produced <= slowSeen.length + 1);
    await slowIt.return!(); // the slow branch leaves: the fast one is free
    await fastDone;
    assert.deepEqual(fastSeen, Array.from({ length: 20 }, (_, i) => i));
    assert.deepEqual(slowSeen, [0, 1, 2, 3, 4]);
  });

  test("{ onOverflow: 'error' }: ERR_BUFFER_OVERFLOW on the slow branch only", async () => {
    const src = new Src(Array.from({ length: 20 }, (_, i) => i));
    const [fast, slow] = tee(src, 2, { policy: { buffer: 4, onOverflow: 'error' } });
    assert.deepEqual(await toArray(fast!), Array.from({ length: 20 }, (_, i) => i));
    const slowIt = slow![Symbol.asyncIterator]();
    await rejects(slowIt.next(), 'ERR_BUFFER_OVERFLOW');
    assert.deepEqual(await slowIt.next(), DONE);
  });

  test("{ onOverflow: 'drop' }: the slow branch keeps the newest N and counts drops", async () => {
    const src = new Src(Array.from({ length: 20 }, (_, i) => i));
    const [fast, slow] = tee(src, 2, { policy: { buffer: 4, onOverflow: 'drop' } });
    assert.deepEqual(await toArray(fast!), Array.from({ length: 20 }, (_, i) => i));
    assert.equal(slow!.dropped, 16);
    assert.equal(slow!.buffered, 4);
    assert.deepEqual(await toArray(slow!), [16, 17, 18, 19]);
  });

  test('when every branch is returned, the source is returned', async () => {
    const src = new Src(nat);
    const branches = tee(src, 3, { policy: { buffer: 16, onOverflow: 'drop' } });
    for await (const x of branches[0]!) if (x === 1) break;
    assert.equal(src.returned, 0);
    await branches[1]![Symbol.asyncIterator]().return!();
    assert.equal(src.returned, 0);
    for await (const x of branches[2]!) if (x === 3) break;
    assert.equal(src.returned, 1);
  });

  test('a source error reaches every branch after its buffered items', async () => {
    const src = new Src(nat, { failAt: 3 });
    const [a, b] = tee(src, 2, { policy: { buffer: 8, onOverflow: 'error' } });
    await assert.rejects(toArray(a!), /boom at 3/);
    const bIt = b![Symbol.asyncIterator]();
    assert.deepEqual(await readSlowly(bIt, 3), [0, 1, 2]);
    await assert.rejects(bIt.next(), /boom at 3/);
  });

  test('a branch can be iterated only once', () => {
    const [a] = tee(new Src([1]), 1);
    a![Symbol.asyncIterator]();
    assert.throws(() => a![Symbol.asyncIterator](), (e: unknown) => isSluiceError(e, 'ERR_STREAM_CONSUMED'));
  });

  test('split by predicate and by key', async () => {
    const [even, odd] = split(new Src([1, 2, 3, 4, 5]), (x) => x % 2 === 0, { policy: { buffer: 8, onOverflow: 'error' } });
    assert.deepEqual(await toArray(even), [2, 4]);
    assert.deepEqual(await toArray(odd), [1, 3, 5]);
    const byKind = split(new Src(['a1', 'b1', 'c1', 'a2', 'b2']), (s) => s[0] as 'a' | 'b' | 'c', { keys: ['a', 'b'], policy: { buffer: 8, onOverflow: 'error' } });
    const [as, bs] = await Promise.all([toArray(byKind.a), toArray(byKind.b)]);
    assert.deepEqual(as, ['a1', 'a2']);
    assert.deepEqual(bs, ['b1', 'b2']);
  });

  test("split under 'wait' with both branches read concurrently loses nothing", async () => {
    const src = new Src(Array.from({ length: 30 }, (_, i) => i));
    const [small, big] = split(src, (x) => x < 10);
    const [s, b] = await Promise.all([toArray(small), toArray(big)]);
    assert.deepEqual(s, Array.from({ length: 10 }, (_, i) => i));
    assert.deepEqual(b, Array.from({ length: 20 }, (_, i) => i + 10));
  });
});

describe('cancellation with a signal', () => {
  test('an already-aborted signal rejects without opening the source', async () => {
    const src = new Src(nat);
    await assert.rejects(toArray(pipe(src, map((x: number) => x), { signal: AbortSignal.abort(new Error('early')) })), /early/);
    assert.equal(src.opened, 0);
  });

  test('abort mid-stream returns the source through every operator and removes the listener', async () => {
    const ac = new AbortController();
    let listeners = 0;
    const signal = ac.signal;
    const add = signal.addEventListener.bind(signal);
    const remove = signal.removeEventListener.bind(signal);
    signal.addEventListener = ((type: string, l: (e: Event) => void, o?: { once?: boolean }) => {
      listeners++;
      add(type, l, o);
    }) as typeof signal.addEventListener;
    signal.removeEventListener = ((type: string, l: (e: Event) => void) => {
      listeners--;
      remove(type, l);
    }) as typeof signal.removeEventListener;
    const src = new Src<number>('manual');
    const out = pipe(src, map((x: number) => x + 1), batch({ count: 2, ms: 50_000 }), map(async (b: number[]) => b, { concurrency: 2 }), { signal });
    const it = out[Symbol.asyncIterator]();
    const p = it.next();
    src.emit(1);
    src.emit(2);
    assert.deepEqual(await p, { done: false, value: [2, 3] });
    assert.equal(listeners, 1);
    const pending = it.next();
    await settle(2);
    ac.abort(new Error('stop'));
    await assert.rejects(pending, /stop/);
    await settle(2);
    assert.equal(src.returned, 1);
    assert.equal(listeners, 0);
  });

  test('the listener is removed when the stream ends normally', async () => {
    const ac = new AbortController();
    let removed = 0;
    const remove = ac.signal.removeEventListener.bind(ac.signal);
    ac.signal.removeEventListener = ((t: string, l: (e: Event) => void) => {
      removed++;
      remove(t, l);
    }) as typeof ac.signal.removeEventListener;
    assert.deepEqual(await toArray(new Src([1, 2]), { signal: ac.signal }), [1, 2]);
    assert.equal(removed, 1);
    ac.abort();
  });

  test('withSignal composes as an operator; defer starts nothing until read', async () => {
    let started = 0;
    const lazy = defer(() => {
      started++;
      return new Src([1, 2, 3]);
    });
    const ac = new AbortController();
    const out = pipe(lazy, withSignal(ac.signal), take(2));
    assert.equal(started, 0);
    assert.deepEqual(await toArray(out), [1, 2]);
    assert.equal(started, 1);
  });
});

/**
 * Bounded memory: a fast infinite source under a slow consumer. After the consumer read
 * some items and then stopped reading for a while, the source must not have produced
 * more than `bound` items beyond what reached the consumer (counted in source items).
 * A leaky operator would produce thousands during the pause.
 */
describe('bounded memory with a fast infinite source and a slow consumer', () => {
  interface Case {
    name: string;
    /** Build the stream from its sources; `perItem` converts an output item into the number of source items it carries. */
    build: (sources: Src[]) => AsyncIterable<unknown>;
    sources: number;
    perItem?: (out: unknown) => number;
    bound: number;
  }
  const len = (out: unknown): number => (out as unknown[]).length;
  const cases: Case[] = [
    { name: 'fused map/filter/scan', sources: 1, build: ([s]) => pipe(s!, map((x: number) => x), filter(() => true), scan((a: number, x: number) => a + x, 0)), bound: 0 },
    { name: 'map concurrency 4', sources: 1, build: ([s]) => pipe(s!, map(async (x: number) => x, { concurrency: 4 })), bound: 5 },
    { name: 'batch count 10', sources: 1, build: ([s]) => pipe(s!, batch({ count: 10, ms: 1000 })), perItem: len, bound: 10 },
    { name: 'window 5 slide 5', sources: 1, build: ([s]) => pipe(s!, window({ count: 5 })), perItem: len, bound: 5 },
    { name: 'throttle 1ms', sources: 1, build: ([s]) => pipe(s!, throttle({ ms: 1 })), bound: 1 },
    { name: 'merge of 3', sources: 3, build: (ss) => merge(...ss), bound: 3 },
    { name: 'zip of 2', sources: 2, build: (ss) => zip(...ss), perItem: len, bound: 0 },
    { name: 'concat of 2', sources: 2, build: (ss) => concat(...ss), bound: 0 },
    { name: 'race of 2', sources: 2, build: (ss) => race(...ss), bound: 2 },
    { name: 'with a signal', sources: 1, build: ([s]) => pipe(s!, withSignal(new AbortController().signal)), bound: 0 },
    { name: 'tee wait (one branch read)', sources: 1, build: ([s]) => tee(s!, 1)[0]!, bound: 1 },
  ];
  for (const c of cases) {
    test(c.name, async () => {
      const sources = Array.from({ length: c.sources }, () => new Src(nat));
      const it = c.build(sources)[Symbol.asyncIterator]();
      const perItem = c.perItem ?? (() => 1);
      let consumed = 0;
      for (let i = 0; i < 50; i++) {
        const r = await it.next();
        assert.equal(r.done, false);
        consumed += perItem(r.value);
        await tick();
      }
      await settle(20); // the consumer pauses; a leaky operator keeps reading here
      const produced = sources.reduce((n, s) => n + s.produced, 0);
      assert.ok(produced - consumed <= c.bound, `produced ${produced}, consumed ${consumed}, bound ${c.bound}`);
      await it.return!();
      assert.ok(
        sources.every((s) => s.opened === 0 || s.returned === 1),
        'every opened source returned',
      );
    });
  }

  test("tee with buffers: a branch nobody reads holds at most N under 'drop' and 'error'", async () => {
    for (const onOverflow of ['drop', 'error'] as const) {
      const src = new Src(nat);
      const [fast, slow] = tee(src, 2, { policy: { buffer: 8, onOverflow } });
      const it = fast![Symbol.asyncIterator]();
      for (let i = 0; i < 200; i++) assert.equal((await it.next()).value, i);
      await settle(10);
      assert.ok(slow!.buffered <= 8, `${onOverflow}: slow branch holds ${slow!.buffered}`);
      assert.ok(src.produced <= 201, `${onOverflow}: produced ${src.produced}`);
      await it.return!();
      if (onOverflow === 'drop') {
        assert.equal(src.returned, 0, 'the slow branch is still open');
        await slow![Symbol.asyncIterator]().return!();
      }
      assert.equal(src.returned, 1);
    }
  });
});

describe('typing', () => {
  test('pipe types a chain: the first stage is inferred from the source, later ones check against the previous output', async () => {
    const chunks = new Src([{ seq: 0, data: { n: 1 } }]);
    // TypeScript does not infer a generic stage's parameter from the previous generic stage, so later stages annotate it.
    const doubled: AsyncIterable<number> = pipe(
      chunks,
      map((c) => c.data.n),
      map((n: number) => n * 2),
    );
    const asText: Operator<number, string> = map((n) => `#${n}`);
    assert.deepEqual(await toArray(pipe(doubled, asText)), ['#2']);
  });
});
