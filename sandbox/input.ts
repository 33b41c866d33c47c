/**
 * The input side of a stream-consuming action: what the plugin iterates as
 * `params.input`. Items arrive in batches against credit this side grants as the
 * plugin consumes them (the mirror of the output path), so a slow plugin pauses
 * its upstream and the buffer never holds more than one input window.
 */
import { CreditLedger, type Window } from '../protocol/credit.js';
import { SluiceError, fromWireError, type WireError } from '../protocol/errors.js';
import type { FromSandbox } from '../protocol/messages.js';

export class InputQueue implements AsyncIterable<unknown> {
  #items: unknown[] = [];
  #head = 0;
  /** Bytes per item of the batch each item came in, for credit returns. */
  #sizes: number[] = [];
  #ended = false;
  #error: WireError | undefined;
  #waiter: ((r: IteratorResult<unknown>) => void) | undefined;
  #failWaiter: ((e: unknown) => void) | undefined;
  #nextSeq = 0;
  readonly #ledger: CreditLedger;
  #iterating = false;

  constructor(
    window: Window,
    private readonly send: (msg: FromSandbox) => void,
  ) {
    this.#ledger = new CreditLedger(window);
  }

  push(firstSeq: number, chunks: unknown[], bytes: number): void {
    if (firstSeq !== this.#nextSeq || this.#ended) return this.fail({ code: 'ERR_PROTOCOL', message: `Input batch at seq ${firstSeq}, expected ${this.#nextSeq}` });
    this.#nextSeq += chunks.length;
    const share = chunks.length === 0 ? 0 : Math.ceil(bytes / chunks.length);
    for (const c of chunks) {
      this.#items.push(c);
      this.#sizes.push(share);
    }
    this.#wake();
  }

  end(): void {
    this.#ended = true;
    this.#wake();
  }

  fail(error: WireError): void {
    this.#ended = true;
    this.#error ??= error;
    this.#wake();
  }

  #wake(): void {
    const resolve = this.#waiter;
    if (resolve === undefined) return;
    const reject = this.#failWaiter!;
    this.#waiter = this.#failWaiter = undefined;
    this.#next().then(resolve, reject);
  }

  #next(): Promise<IteratorResult<unknown>> {
    if (this.#head < this.#items.length) {
      const value = this.#items[this.#head];
      const size = this.#sizes[this.#head]!;
      this.#items[this.#head] = undefined;
      this.#head++;
      if (this.#head === this.#items.length) {
        this.#items = [];
        this.#sizes = [];
        this.#head = 0;
      }
      const grant = this.#ledger.consume(1, size);
      if (grant !== undefined) this.send({ type: 'input-credit', chunks: grant.chunks, bytes: grant.bytes });
      return Promise.resolve({ value, done: false });
    }
    if (this.#ended) {
      if (this.#error !== undefined) return Promise.reject(fromWireError(this.#error));
      return Promise.resolve({ value: undefined, done: true });
    }
    // The plugin waits: give back everything consumed so far instead of waiting for half a window.
    const grant = this.#ledger.flush();
    if (grant !== undefined) this.send({ type: 'input-credit', chunks: grant.chunks, bytes: grant.bytes });
    return new Promise((resolve, reject) => {
      this.#waiter = resolve;
      this.#failWaiter = reject;
    });
  }

  [Symbol.asyncIterator](): AsyncIterator<unknown> {
    if (this.#iterating) throw new SluiceError('ERR_STREAM_CONSUMED', 'params.input can be iterated only once');
    this.#iterating = true;
    return {
      next: () => this.#next(),
      // The plugin stopped reading its input: no more credit goes back, so upstream pauses.
      return: async () => ({ value: undefined, done: true }),
    };
  }
}
