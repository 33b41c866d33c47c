/**
 * Credit-window arithmetic, shared by both ends of the data path.
 *
 * The host grants the sandbox credit for `chunks` chunks and `bytes` bytes. The
 * sandbox spends one chunk and the chunk's size per chunk it produces and does not
 * ask the plugin for another chunk while either balance is zero or below: so it can
 * overshoot the byte window by at most one chunk, never the chunk window. The host
 * returns credit as its consumer takes chunks, in slices of at least half a window,
 * so credit messages stay rare while the window never drains under a steady reader.
 */
import { assertInteger } from './assert.js';

export interface Window {
  /** Chunks the sandbox may have in flight (produced, not yet consumed). */
  chunks: number;
  /** Estimated bytes the sandbox may have in flight; may be overshot by one chunk. */
  bytes: number;
}

/**
 * 1024 chunks / 1 MiB: for chunks of 1 KiB and up the byte bound binds, so the memory a
 * stream may hold is the same 1 MiB it was with 512 chunks (session 4) or 256 (before).
 * The chunk count is what keeps the pipe full for small chunks. A grant needs a round
 * trip, and the isolate sandbox's crosses two processes and four threads: in alternated
 * runs (isolate sandbox, 50k chunks of 1 KiB, 15 rounds, twice) 1024 reached 0.86 of an
 * unbounded window's rate where 512 reached 0.75-0.79. The worker sandbox, whose
 * round trip is one thread hop, did not change (1.02 vs 1.01 of unbounded). Batches stay
 * at the driver's 256 KiB cap; credit messages per chunk halve.
 */
export const DEFAULT_WINDOW: Readonly<Window> = Object.freeze({ chunks: 1024, bytes: 1024 * 1024 });
export const MAX_WINDOW_CHUNKS = 1 << 20;
export const MAX_WINDOW_BYTES = 1 << 30;

export function parseWindow(value: unknown, field = 'window'): Window {
  const w = value as Partial<Window> | undefined;
  assertInteger(w?.chunks, `${field}.chunks`, 'ERR_INVALID_ARGUMENT', 1, MAX_WINDOW_CHUNKS);
  assertInteger(w?.bytes, `${field}.bytes`, 'ERR_INVALID_ARGUMENT', 1, MAX_WINDOW_BYTES);
  return { chunks: w.chunks, bytes: w.bytes };
}

/** Sandbox side: the balance the producer may spend. */
export class CreditBalance {
  chunks: number;
  bytes: number;
  constructor(initial: Window) {
    this.chunks = initial.chunks;
    this.bytes = initial.bytes;
  }
  get available(): boolean {
    return this.chunks > 0 && this.bytes > 0;
  }
  spend(bytes: number): void {
    this.chunks -= 1;
    this.bytes -= bytes;
  }
  grant(chunks: number, bytes: number): void {
    this.chunks += chunks;
    this.bytes += bytes;
  }
}

/**
 * Host side: tracks what the sandbox may still send (to reject a sandbox that
 * overspends) and what the consumer has taken back (to return credit in slices).
 */
export class CreditLedger {
  /** Credit the sandbox has not yet used. */
  private outstandingChunks: number;
  private outstandingBytes: number;
  /** Consumed since the last grant, waiting to be returned. */
  private pendingChunks = 0;
  private pendingBytes = 0;

  constructor(readonly window: Window) {
    this.outstandingChunks = window.chunks;
    this.outstandingBytes = window.bytes;
  }

  /**
   * Record a batch received from the sandbox. Returns false when it overspent its
   * credit: the chunk window exactly, the byte window by more than the batch's largest chunk.
   */
  receive(chunks: number, bytes: number, largestChunk: number): boolean {
    if (chunks > this.outstandingChunks) return false;
    // The sandbox produces a chunk only while its byte balance is positive, so a batch
    // can end at most one chunk's size past zero.
    if (chunks > 0 && (this.outstandingBytes <= 0 || bytes >= this.outstandingBytes + largestChunk)) return false;
    this.outstandingChunks -= chunks;
    this.outstandingBytes -= bytes;
    return true;
  }

  /** Whether the sandbox may produce now; while it may not, it is paused by its consumer, not idle. */
  get sandboxMayProduce(): boolean {
    return this.outstandingChunks > 0 && this.outstandingBytes > 0;
  }

  /**
   * Record chunks the consumer took. Returns the grant to send now, or undefined while
   * the pending amount is under half a window (so grants are batched).
   */
  consume(chunks: number, bytes: number): Window | undefined {
    this.pendingChunks += chunks;
    this.pendingBytes += bytes;
    if (this.pendingChunks * 2 < this.window.chunks && this.pendingBytes * 2 < this.window.bytes) return undefined;
    return this.flush();
  }

  /**
   * Whether the sandbox had at most half a window of credit left when the latest grant
   * was made. A sandbox reads host messages only when it runs out of credit (it does not
   * pause before), so this one reads the grant within half a window of chunks.
   */
  shortAtLastGrant = false;

  /** Whether the sandbox holds at most half a window of credit (unused, or spent on chunks still on their way). */
  private get short(): boolean {
    return this.outstandingChunks * 2 <= this.window.chunks || this.outstandingBytes * 2 <= this.window.bytes;
  }

  /**
   * The consumer is idle and waiting: return what it consumed now rather than at half a
   * window, but only to a sandbox that may be starved of credit. One that holds more
   * than half a window is producing or has chunks on their way, and a grant now would
   * be a sliver: the sandbox would spend it on a batch of that size (a consumer that
   * waits after every batch then cut the stream into batches of 1, 127 and 128 chunks,
   * a message each).
   */
  flushIfShort(): Window | undefined {
    return this.short ? this.flush() : undefined;
  }

  /** Return everything consumed so far. */
  flush(): Window | undefined {
    if (this.pendingChunks === 0 && this.pendingBytes === 0) return undefined;
    const grant = { chunks: this.pendingChunks, bytes: this.pendingBytes };
    this.shortAtLastGrant = this.short;
    this.outstandingChunks += grant.chunks;
    this.outstandingBytes += grant.bytes;
    this.pendingChunks = 0;
    this.pendingBytes = 0;
    return grant;
  }
}
