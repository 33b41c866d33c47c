/**
 * One source, many branches: tee (every branch gets every item) and split (each item
 * goes to one branch). What happens when one branch is slower than the others is the
 * branch policy, stated up front, because "buffer without bound" is not an option:
 *
 * - `'wait'` (default): the source is read only when every live branch has room
 *   (one buffered item each), so the source goes at the pace of the slowest branch.
 *   No item is lost; memory is one item per branch. Every branch must be read
 *   concurrently (or returned): a branch nobody reads stops all the others.
 * - `{ buffer: N, onOverflow: 'wait' }`: the same with room for N items per branch.
 * - `{ buffer: N, onOverflow: 'error' }`: the source goes at the pace of the fastest
 *   reader; a branch whose N-item buffer is full when the next item for it arrives
 *   fails with ERR_BUFFER_OVERFLOW on its next read (its buffered items are dropped)
 *   and stops receiving. The other branches are not affected.
 * - `{ buffer: N, onOverflow: 'drop' }`: the source goes at the pace of the fastest
 *   reader; a full branch discards its oldest buffered item to make room, and counts
 *   it in `branch.dropped`.
 *
 * A branch that is returned (a `break`) stops receiving and no longer holds anyone
 * back. When every branch has ended, the source is returned. A source error reaches
 * every live branch after the items it already buffered.
 */
import { assertInteger, assertOneOf, isObject } from '../../protocol/assert.js';
import { SluiceError } from '../../protocol/errors.js';
import { assertFunction, closeInBackground, DONE, open, releaseSource, Ring, SerialIterator, Wake } from './internal.js';

export type BranchPolicy = 'wait' | { buffer: number; onOverflow: 'wait' | 'error' | 'drop' };

export interface FanoutOptions {
  /** What a slow branch does to the others; see the module comment. Default `'wait'`. */
  policy?: BranchPolicy;
}

/** One branch of a tee or split: iterable once. */
export interface Branch<T> extends AsyncIterable<T> {
  /** Items this branch discarded under `onOverflow: 'drop'`. */
  readonly dropped: number;
  /** Items waiting in this branch's buffer (its pressure). */
  readonly buffered: number;
}

const OVERFLOW_WAIT = 0;
const OVERFLOW_ERROR = 1;
const OVERFLOW_DROP = 2;
const MAX_BRANCHES = 1024;
const MAX_BUFFER = 1_000_000;

interface ParsedPolicy {
  buffer: number;
  overflow: number;
}

function parsePolicy(policy: BranchPolicy | undefined): ParsedPolicy {
  if (policy === undefined || policy === 'wait') return { buffer: 1, overflow: OVERFLOW_WAIT };
  if (!isObject(policy)) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', "Expected `policy` to be 'wait' or { buffer, onOverflow }", { details: { field: 'policy' } });
  }
  assertInteger(policy.buffer, 'policy.buffer', 'ERR_INVALID_ARGUMENT', 1, MAX_BUFFER);
  assertOneOf(policy.onOverflow, ['wait', 'error', 'drop'] as const, 'policy.onOverflow', 'ERR_INVALID_ARGUMENT');
  const overflow = policy.onOverflow === 'wait' ? OVERFLOW_WAIT : policy.onOverflow === 'error' ? OVERFLOW_ERROR : OVERFLOW_DROP;
  return { buffer: policy.buffer, overflow };
}

/** Route an item: the index of its branch, `ALL_BRANCHES`, or -1 to discard it. */
type Router<T> = (value: T) => number;
const ALL_BRANCHES = -2;

class Fanout<T> {
  private it: AsyncIterator<T> | undefined = undefined;
  readonly branches: BranchIterator<T>[] = [];
  private live: number;
  private pulling = false;
  sourceDone = false;
  sourceError: { err: unknown } | undefined = undefined;

  constructor(
    private readonly source: AsyncIterable<T>,
    private readonly route: Router<T>,
    readonly policy: ParsedPolicy,
    count: number,
  ) {
    for (let i = 0; i < count; i++) this.branches.push(new BranchIterator(this, policy.buffer));
    this.live = count;
  }

  private readonly onPull = (r: IteratorResult<T>): void => {
    this.pulling = false;
    if (this.live === 0) return;
    if (r.done === true) {
      this.sourceDone = true;
      for (const b of this.branches) b.wake.fire();
      return;
    }
    let target: number;
    try {
      target = this.route(r.value);
    } catch (err) {
      // The router (user code) threw: fail every branch and release the source.
      const it = this.it!;
      this.onError(err);
      closeInBackground(it);
      return;
    }
    if (target === ALL_BRANCHES) for (const b of this.branches) b.offer(r.value);
    else if (target >= 0) this.branches[target]!.offer(r.value);
    this.pull();
  };

  private readonly onError = (err: unknown): void => {
    this.pulling = false;
    this.sourceDone = true;
    this.sourceError = { err };
    for (const b of this.branches) b.wake.fire();
  };

  /** Read the next item if a live branch is waiting for one and the policy allows it. */
  pull(): void {
    if (this.pulling || this.sourceDone || this.live === 0) return;
    let waiting = false;
    for (const b of this.branches) {
      if (!b.receiving) continue;
      if (b.waiting) waiting = true;
      if (this.policy.overflow === OVERFLOW_WAIT && b.queue.length >= b.queue.capacity) return;
    }
    if (!waiting) return;
    const it = (this.it ??= open(this.source));
    this.pulling = true;
    let p: Promise<IteratorResult<T>>;
    try {
      p = it.next();
    } catch (err) {
      p = Promise.reject(err);
    }
    p.then(this.onPull, this.onError);
  }

  /** A branch ended (returned, failed, or drained): the last one returns the source. */
  async detach(): Promise<void> {
    if (--this.live === 0) await this.closeSource();
    else this.pull();
  }

  private async closeSource(): Promise<void> {
    const it = this.it;
    if (it === undefined || this.sourceDone) return;
    this.sourceDone = true;
    await releaseSource(it, this.pulling);
  }
}

const BRANCH_NEW = 0;
const BRANCH_OPEN = 1;
const BRANCH_ENDED = 2;

class BranchIterator<T> extends SerialIterator<T> implements Branch<T> {
  readonly queue: Ring<T>;
  readonly wake = new Wake();
  dropped = 0;
  waiting = false;
  private status = BRANCH_NEW;
  private overflowed = false;

  constructor(
    private readonly fanout: Fanout<T>,
    buffer: number,
  ) {
    super();
    this.queue = new Ring<T>(buffer);
  }

  get buffered(): number {
    return this.queue.length;
  }

  /** Still taking items from the source (and holding it back under 'wait'). */
  get receiving(): boolean {
    return this.status !== BRANCH_ENDED && !this.overflowed;
  }

  offer(value: T): void {
    if (!this.receiving) return;
    const q = this.queue;
    if (q.length >= q.capacity) {
      const overflow = this.fanout.policy.overflow;
      if (overflow === OVERFLOW_ERROR) {
        this.overflowed = true;
        q.clear();
        this.wake.fire();
        void this.fanout.detach();
        return;
      }
      // OVERFLOW_DROP (OVERFLOW_WAIT never offers to a full branch).
      q.shift();
      this.dropped++;
    }
    q.push(value);
    this.wake.fire();
  }

  override [Symbol.asyncIterator](): this {
    if (this.status !== BRANCH_NEW) {
      throw new SluiceError('ERR_STREAM_CONSUMED', 'A tee/split branch can be iterated only once');
    }
    this.status = BRANCH_OPEN;
    return this;
  }

  protected async step(): Promise<IteratorResult<T>> {
    try {
      for (;;) {
        if (this.status === BRANCH_ENDED) return DONE;
        if (this.queue.length > 0) {
          const value = this.queue.shift();
          if (this.fanout.policy.overflow === OVERFLOW_WAIT) this.fanout.pull(); // room made: others may go on
          return { done: false, value };
        }
        if (this.overflowed) {
          this.status = BRANCH_ENDED;
          throw new SluiceError('ERR_BUFFER_OVERFLOW', `Branch fell more than ${this.queue.capacity} items behind`, {
            details: { buffer: this.queue.capacity },
          });
        }
        const fanout = this.fanout;
        if (fanout.sourceDone) {
          this.status = BRANCH_ENDED;
          await fanout.detach();
          if (fanout.sourceError !== undefined) throw fanout.sourceError.err;
          return DONE;
        }
        this.waiting = true;
        fanout.pull();
        await this.wake.wait();
        this.waiting = false;
      }
    } finally {
      this.calls--;
    }
  }

  async return(): Promise<IteratorResult<T>> {
    if (this.status === BRANCH_ENDED) return DONE;
    const wasReceiving = this.receiving;
    this.status = BRANCH_ENDED;
    this.queue.clear();
    this.wake.fire();
    if (wasReceiving) await this.fanout.detach();
    return DONE;
  }
}

function makeFanout<T>(source: AsyncIterable<T>, route: Router<T>, count: number, options: FanoutOptions | undefined): Fanout<T> {
  return new Fanout(source, route, parsePolicy(options?.policy), count);
}

const routeAll = (): number => ALL_BRANCHES;

/**
 * `n` branches that each receive every item of `source`, under a stated policy for a
 * slow branch (see the module comment). Each branch is iterable once.
 *
 * @example
 * const [toStore, toScreen] = tee(stream, 2, { policy: { buffer: 100, onOverflow: 'drop' } });
 */
export function tee<T>(source: AsyncIterable<T>, n: number, options?: FanoutOptions): Branch<T>[] {
  assertInteger(n, 'n', 'ERR_INVALID_ARGUMENT', 1, MAX_BRANCHES);
  return makeFanout(source, routeAll, n, options).branches;
}

export interface SplitByKeyOptions<K extends string> extends FanoutOptions {
  /** One branch per key; an item whose key is not listed is discarded. */
  keys: readonly K[];
}

/**
 * Route each item to one branch. With a predicate, two branches: `[matching, rest]`.
 * With a key function and `keys`, one branch per key (items with another key are
 * discarded). Same slow-branch policies as `tee`; under `'wait'` a branch nobody
 * reads holds back all the others.
 *
 * @example
 * const [errors, rest] = split(logs, (c) => c.data.level === 'error');
 * const byRegion = split(orders, (o) => o.region, { keys: ['eu', 'us'] });
 */
export function split<T, K extends string>(source: AsyncIterable<T>, keyOf: (value: T) => K | undefined, options: SplitByKeyOptions<K>): Record<K, Branch<T>>;
export function split<T>(source: AsyncIterable<T>, predicate: (value: T) => unknown, options?: FanoutOptions): [Branch<T>, Branch<T>];
export function split<T>(
  source: AsyncIterable<T>,
  fn: (value: T) => unknown,
  options?: FanoutOptions & { keys?: readonly string[] },
): Record<string, Branch<T>> | [Branch<T>, Branch<T>] {
  assertFunction(fn, 'fn');
  const keys = options?.keys;
  if (keys === undefined) {
    const fanout = makeFanout(source, (v) => (fn(v) ? 0 : 1), 2, options);
    return [fanout.branches[0]!, fanout.branches[1]!];
  }
  if (!Array.isArray(keys) || keys.length === 0 || keys.length > MAX_BRANCHES || new Set(keys).size !== keys.length) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', 'Expected `keys` to be a non-empty array of distinct strings', { details: { field: 'keys' } });
  }
  const index = new Map<unknown, number>(keys.map((k, i) => [k, i]));
  const fanout = makeFanout(source, (v) => index.get(fn(v)) ?? -1, keys.length, options);
  const out: Record<string, Branch<T>> = Object.create(null) as Record<string, Branch<T>>;
  keys.forEach((k, i) => {
    out[k] = fanout.branches[i]!;
  });
  return out;
}
