/**
 * `map(fn, { concurrency: N })` for N > 1: up to N calls of `fn` at once.
 *
 * Bound: calls in flight plus results not yet taken by the consumer never exceed N
 * (one slot each), and the source is pulled one item at a time only while a slot is
 * free. So the source is never more than N items (plus the one being pulled) ahead
 * of the consumer, however slow the consumer is.
 */
import { DONE, isPromiseLike, open, releaseSource, SerialIterator, Wake } from './internal.js';

const SLOT_PENDING = 0;
const SLOT_OK = 1;
const SLOT_ERROR = 2;

interface Slot {
  state: number;
  value: unknown;
}

class ConcurrentMapIterator<I, O> extends SerialIterator<O> {
  private it: AsyncIterator<I> | undefined = undefined;
  private readonly slots: Slot[] = [];
  private readonly wake = new Wake();
  private pulling = false;
  private sourceDone = false;
  private closed = false;
  private index = 0;

  constructor(
    private readonly source: AsyncIterable<I>,
    private readonly fn: (value: I, index: number) => unknown,
    private readonly concurrency: number,
    private readonly ordered: boolean,
  ) {
    super();
  }

  private readonly onPull = (r: IteratorResult<I>): void => {
    this.pulling = false;
    if (this.closed) return;
    if (r.done === true) this.sourceDone = true;
    else this.start(r.value);
    this.wake.fire();
    this.fill();
  };

  private readonly onPullError = (err: unknown): void => {
    this.pulling = false;
    this.sourceDone = true;
    // Delivered after the results already in flight, in order.
    this.slots.push({ state: SLOT_ERROR, value: err });
    this.wake.fire();
  };

  private start(value: I): void {
    const slot: Slot = { state: SLOT_PENDING, value: undefined };
    this.slots.push(slot);
    let out: unknown;
    try {
      out = this.fn(value, this.index++);
    } catch (err) {
      slot.state = SLOT_ERROR;
      slot.value = err;
      return;
    }
    if (!isPromiseLike(out)) {
      slot.state = SLOT_OK;
      slot.value = out;
      return;
    }
    out.then(
      (v) => {
        slot.state = SLOT_OK;
        slot.value = v;
        this.wake.fire();
      },
      (err: unknown) => {
        slot.state = SLOT_ERROR;
        slot.value = err;
        this.wake.fire();
      },
    );
  }

  private fill(): void {
    if (this.closed || this.sourceDone || this.pulling || this.slots.length >= this.concurrency) return;
    const it = (this.it ??= open(this.source));
    this.pulling = true;
    it.next().then(this.onPull, this.onPullError);
  }

  private takeReady(): Slot | undefined {
    const slots = this.slots;
    if (this.ordered) return slots.length > 0 && slots[0]!.state !== SLOT_PENDING ? slots.shift() : undefined;
    for (let i = 0; i < slots.length; i++) {
      if (slots[i]!.state !== SLOT_PENDING) return slots.splice(i, 1)[0];
    }
    return undefined;
  }

  protected async step(): Promise<IteratorResult<O>> {
    try {
      for (;;) {
        if (this.closed) return DONE;
        const slot = this.takeReady();
        if (slot !== undefined) {
          if (slot.state === SLOT_OK) {
            this.fill();
            return { done: false, value: slot.value as O };
          }
          await this.fail();
          throw slot.value;
        }
        if (this.sourceDone && this.slots.length === 0) {
          this.closed = true;
          return DONE;
        }
        this.fill();
        await this.wake.wait();
      }
    } finally {
      this.calls--;
    }
  }

  /** An error reaches the consumer: stop, and release the source unless it is the one that failed. */
  private async fail(): Promise<void> {
    this.closed = true;
    const it = this.it;
    if (it === undefined || this.sourceDone) return;
    try {
      await releaseSource(it, this.pulling);
    } catch {
      // Secondary to the error the consumer is about to see.
    }
  }

  async return(): Promise<IteratorResult<O>> {
    if (this.closed) return DONE;
    this.closed = true;
    this.wake.fire();
    const it = this.it;
    if (it !== undefined && !this.sourceDone) {
      await releaseSource(it, this.pulling);
    }
    return DONE;
  }
}

export class ConcurrentMap<I, O> implements AsyncIterable<O> {
  constructor(
    private readonly source: AsyncIterable<I>,
    private readonly fn: (value: I, index: number) => unknown,
    private readonly concurrency: number,
    private readonly ordered: boolean,
  ) {}

  [Symbol.asyncIterator](): AsyncIterator<O> {
    return new ConcurrentMapIterator<I, O>(this.source, this.fn, this.concurrency, this.ordered);
  }
}
