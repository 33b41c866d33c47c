/**
 * Many sources into one stream: merge, zip, concat, race.
 *
 * Each holds at most one item per source. An error from any source fails the combined
 * stream (and returns the other sources); `return()` on the combined stream returns
 * every source it opened.
 */
import { SluiceError } from '../../protocol/errors.js';
import { DONE, SerialIterator, Wake, closeInBackground, closeIterator, open } from './internal.js';

const SRC_IDLE = 0;
const SRC_PULLING = 1;
const SRC_READY = 2;
const SRC_DONE = 3;

type Sources<T extends unknown[]> = { [K in keyof T]: AsyncIterable<T[K]> };

function checkSources(sources: readonly unknown[], name: string): void {
  if (sources.length === 0) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`${name}\` to get at least one source`, { details: { field: 'sources' } });
  }
}

/**
 * Shared bookkeeping of operators that read several sources at once: per source its
 * iterator and state, and a way to close all of them.
 */
abstract class MultiIterator<T> extends SerialIterator<T> {
  protected readonly its: (AsyncIterator<unknown> | undefined)[];
  protected readonly state: number[];
  protected readonly wake = new Wake();
  protected closed = false;

  constructor(protected readonly sources: readonly AsyncIterable<unknown>[]) {
    super();
    this.its = sources.map(() => undefined);
    this.state = sources.map(() => SRC_IDLE);
  }

  protected iterator(i: number): AsyncIterator<unknown> {
    let it = this.its[i];
    if (it === undefined) it = this.its[i] = open(this.sources[i]!, `sources[${i}]`);
    return it;
  }

  /** Return every opened, unfinished source except `except`; await the idle ones. */
  protected async closeAll(except = -1): Promise<void> {
    const waits: Promise<unknown>[] = [];
    for (let i = 0; i < this.its.length; i++) {
      const it = this.its[i];
      if (it === undefined || i === except || this.state[i] === SRC_DONE) continue;
      const pulling = this.state[i] === SRC_PULLING;
      this.state[i] = SRC_DONE;
      if (pulling) closeInBackground(it);
      else waits.push(closeIterator(it));
    }
    const results = await Promise.allSettled(waits);
    for (const r of results) if (r.status === 'rejected') throw r.reason;
  }

  /** Like closeAll, after an error: the original error is what the consumer sees. */
  protected async closeAllAfterError(except = -1): Promise<void> {
    try {
      await this.closeAll(except);
    } catch {
      // Secondary to the error being thrown.
    }
  }

  async return(): Promise<IteratorResult<T>> {
    if (this.closed) return DONE;
    this.closed = true;
    this.wake.fire();
    await this.closeAll();
    return DONE;
  }
}

class MergeIterator<T> extends MultiIterator<T> {
  private readonly values: unknown[];
  /** Sources holding an item, in arrival order: a source re-enters only after its item is taken. */
  private readonly ready: number[] = [];
  private active: number;
  private failure: { err: unknown } | undefined = undefined;
  private readonly onItem: ((r: IteratorResult<unknown>) => void)[];
  private readonly onError: ((err: unknown) => void)[];

  constructor(sources: readonly AsyncIterable<unknown>[]) {
    super(sources);
    this.values = sources.map(() => undefined);
    this.active = sources.length;
    // One pair of callbacks per source, made once: no closure per item.
    this.onItem = sources.map((_, i) => (r: IteratorResult<unknown>) => this.arrived(i, r));
    this.onError = sources.map((_, i) => (err: unknown) => this.failed(i, err));
  }

  private arrived(i: number, r: IteratorResult<unknown>): void {
    if (this.state[i] !== SRC_PULLING) return; // closed meanwhile
    if (r.done === true) {
      this.state[i] = SRC_DONE;
      this.active--;
    } else {
      this.state[i] = SRC_READY;
      this.values[i] = r.value;
      this.ready.push(i);
    }
    this.wake.fire();
  }

  private failed(i: number, err: unknown): void {
    if (this.state[i] !== SRC_PULLING) return;
    this.state[i] = SRC_DONE;
    this.active--;
    this.failure ??= { err };
    this.wake.fire();
  }

  protected async step(): Promise<IteratorResult<T>> {
    try {
      for (;;) {
        if (this.closed) return DONE;
        if (this.failure !== undefined) {
          this.closed = true;
          await this.closeAllAfterError();
          throw this.failure.err;
        }
        if (this.ready.length > 0) {
          const i = this.ready.shift()!;
          const value = this.values[i] as T;
          this.values[i] = undefined;
          this.state[i] = SRC_IDLE;
          return { done: false, value };
        }
        if (this.active === 0) {
          this.closed = true;
          return DONE;
        }
        // Ask every idle source; whichever answers first is served first.
        const state = this.state;
        for (let i = 0; i < state.length; i++) {
          if (state[i] !== SRC_IDLE) continue;
          state[i] = SRC_PULLING;
          let p: Promise<IteratorResult<unknown>>;
          try {
            p = this.iterator(i).next();
          } catch (err) {
            p = Promise.reject(err);
          }
          p.then(this.onItem[i], this.onError[i]);
        }
        await this.wake.wait();
      }
    } finally {
      this.calls--;
    }
  }
}

/**
 * Interleave sources, each item as soon as it is available. Fair: a source that
 * delivered an item is not asked again until that item is taken, and items are taken
 * in arrival order, so a fast source cannot starve a slower one. At most one item is
 * held per source. The merged stream ends when every source ended; the first source
 * error fails it (items held are dropped) and returns the other sources.
 *
 * @example
 * for await (const chunk of merge(host.stream('a', 'tail'), host.stream('b', 'tail'))) show(chunk);
 */
export function merge<T extends unknown[]>(...sources: Sources<T>): AsyncIterable<T[number]> {
  checkSources(sources, 'merge');
  const list = sources as readonly AsyncIterable<unknown>[];
  return { [Symbol.asyncIterator]: () => new MergeIterator<T[number]>(list) };
}

class ZipIterator<T extends unknown[]> extends MultiIterator<T> {
  protected async step(): Promise<IteratorResult<T>> {
    try {
      if (this.closed) return DONE;
      const n = this.sources.length;
      const pulls: Promise<IteratorResult<unknown>>[] = new Array(n);
      for (let i = 0; i < n; i++) {
        this.state[i] = SRC_PULLING;
        pulls[i] = this.iterator(i).next();
        const settle = (): void => {
          if (this.state[i] === SRC_PULLING) this.state[i] = SRC_IDLE;
        };
        pulls[i]!.then(settle, () => {
          if (this.state[i] === SRC_PULLING) this.state[i] = SRC_DONE; // a source that threw is finished
        });
      }
      let results: IteratorResult<unknown>[];
      try {
        results = await Promise.all(pulls);
      } catch (err) {
        if (this.closed) return DONE;
        this.closed = true;
        await this.closeAllAfterError();
        throw err;
      }
      if (this.closed) return DONE;
      const tuple = new Array(n) as T;
      let ended = false;
      for (let i = 0; i < n; i++) {
        const r = results[i]!;
        if (r.done === true) {
          this.state[i] = SRC_DONE;
          ended = true;
        } else tuple[i] = r.value;
      }
      if (ended) {
        // The shortest source decides; the values the others produced are dropped.
        this.closed = true;
        await this.closeAll();
        return DONE;
      }
      return { done: false, value: tuple };
    } finally {
      this.calls--;
    }
  }
}

/**
 * Tuples of one item from each source, in step; ends with the shortest source (the
 * others are returned). Pulls all sources at once, one item each.
 *
 * @example
 * for await (const [price, volume] of zip(prices, volumes)) plot(price, volume);
 */
export function zip<T extends unknown[]>(...sources: Sources<T>): AsyncIterable<T> {
  checkSources(sources, 'zip');
  const list = sources as readonly AsyncIterable<unknown>[];
  return { [Symbol.asyncIterator]: () => new ZipIterator<T>(list) };
}

class ConcatIterator<T> extends MultiIterator<T> {
  private current = 0;

  protected async step(): Promise<IteratorResult<T>> {
    try {
      while (!this.closed && this.current < this.sources.length) {
        const i = this.current;
        const it = this.iterator(i);
        this.state[i] = SRC_PULLING;
        let r: IteratorResult<unknown>;
        try {
          r = await it.next();
        } catch (err) {
          this.state[i] = SRC_DONE;
          this.closed = true;
          throw err;
        }
        if (this.closed) return DONE;
        if (r.done === true) {
          this.state[i] = SRC_DONE;
          this.current++;
          continue;
        }
        this.state[i] = SRC_IDLE;
        return { done: false, value: r.value as T };
      }
      this.closed = true;
      return DONE;
    } finally {
      this.calls--;
    }
  }
}

/**
 * Each source in turn: the next one is opened only when the previous one ended.
 *
 * @example
 * const all = concat(host.stream('log', 'history'), host.stream('log', 'tail'));
 */
export function concat<T extends unknown[]>(...sources: Sources<T>): AsyncIterable<T[number]> {
  checkSources(sources, 'concat');
  const list = sources as readonly AsyncIterable<unknown>[];
  return { [Symbol.asyncIterator]: () => new ConcatIterator<T[number]>(list) };
}

class RaceIterator<T> extends MultiIterator<T> {
  private winner = -1;
  private first: { value: unknown } | undefined = undefined;
  private failure: { err: unknown } | undefined = undefined;
  private active: number;

  constructor(sources: readonly AsyncIterable<unknown>[]) {
    super(sources);
    this.active = sources.length;
  }

  private start(): void {
    for (let i = 0; i < this.sources.length; i++) {
      this.state[i] = SRC_PULLING;
      let p: Promise<IteratorResult<unknown>>;
      try {
        p = this.iterator(i).next();
      } catch (err) {
        p = Promise.reject(err);
      }
      p.then(
        (r) => {
          if (this.state[i] !== SRC_PULLING) return;
          if (r.done === true) {
            this.state[i] = SRC_DONE;
            this.active--;
          } else {
            this.state[i] = SRC_IDLE;
            if (this.winner < 0 && this.failure === undefined) {
              this.winner = i;
              this.first = { value: r.value };
            }
          }
          this.wake.fire();
        },
        (err: unknown) => {
          if (this.state[i] !== SRC_PULLING) return;
          this.state[i] = SRC_DONE;
          this.active--;
          if (this.winner < 0) this.failure ??= { err };
          this.wake.fire();
        },
      );
    }
  }

  protected async step(): Promise<IteratorResult<T>> {
    try {
      if (this.closed) return DONE;
      if (this.winner < 0) {
        this.start();
        while (this.winner < 0 && this.failure === undefined && this.active > 0 && !this.closed) await this.wake.wait();
        if (this.closed) return DONE;
        if (this.failure !== undefined) {
          this.closed = true;
          await this.closeAllAfterError();
          throw this.failure.err;
        }
        if (this.winner < 0) {
          this.closed = true;
          return DONE;
        }
        // The losers are returned now (those still pulling, in the background).
        await this.closeAll(this.winner);
        const first = this.first!;
        this.first = undefined;
        return { done: false, value: first.value as T };
      }
      const w = this.winner;
      this.state[w] = SRC_PULLING;
      let r: IteratorResult<unknown>;
      try {
        r = await this.its[w]!.next();
      } catch (err) {
        this.state[w] = SRC_DONE;
        this.closed = true;
        throw err;
      }
      if (this.closed) return DONE;
      if (r.done === true) {
        this.state[w] = SRC_DONE;
        this.closed = true;
        return DONE;
      }
      this.state[w] = SRC_IDLE;
      return { done: false, value: r.value as T };
    } finally {
      this.calls--;
    }
  }
}

/**
 * The first source to yield an item wins: the stream continues with that source only,
 * and every other source is returned (cancelled). Sources that end empty drop out of
 * the race; an error before there is a winner fails the race.
 *
 * @example
 * const fastest = race(host.stream('mirror-a', 'get', p), host.stream('mirror-b', 'get', p));
 */
export function race<T extends unknown[]>(...sources: Sources<T>): AsyncIterable<T[number]> {
  checkSources(sources, 'race');
  const list = sources as readonly AsyncIterable<unknown>[];
  return { [Symbol.asyncIterator]: () => new RaceIterator<T[number]>(list) };
}
