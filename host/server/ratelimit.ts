/**
 * A token bucket for control frames: `burst` frames at once, refilled continuously at
 * `perSecond`. Time is read on each `take()`, so there is no timer per connection.
 */
export class TokenBucket {
  #tokens: number;
  #last: number;
  constructor(
    readonly burst: number,
    readonly perSecond: number,
    readonly now: () => number = () => performance.now(),
  ) {
    this.#tokens = burst;
    this.#last = now();
  }

  /** Tokens left after the last `take()`. */
  get level(): number {
    return this.#tokens;
  }

  /** Take one token; false when the bucket is empty. */
  take(): boolean {
    const t = this.now();
    this.#tokens = Math.min(this.burst, this.#tokens + ((t - this.#last) * this.perSecond) / 1000);
    this.#last = t;
    if (this.#tokens < 1) return false;
    this.#tokens -= 1;
    return true;
  }
}
