/**
 * Fan-out of one live, non-durable stream to many subscribers.
 *
 * A SluiceStream can be iterated once, so the server owns one consumer loop per
 * stream (`Broadcast`). Chunks it pulls are JSON-encoded once and kept, as bytes, in a
 * ring of the last `fanout.chunks` chunks (at most `fanout.bytes`, see ring.ts); each
 * subscriber is a cursor into the ring plus the credit its client granted, and its
 * frames are copied out of the ring behind a small per-subscriber header.
 *
 * Pacing: the loop pulls the next chunk only while some subscriber *wants* it: its
 * socket is under the high watermark, its credit reaches past the ring's head, and
 * it has less than half the ring's bytes unsent. With no such subscriber the loop
 * stops calling `next()`, the host stops returning credit to the sandbox, and the
 * plugin's `yield` blocks: a slow socket pauses the plugin. The fastest subscriber
 * sets the pace, but the head never evicts a chunk a subscriber has yet to send (a
 * ring's worth of chunks past its cursor, and not while its unsent chunks take half the
 * ring's bytes; pull rounds stay within a quarter of them). When that stops the head,
 * the subscribers whose unsent chunks fill the ring hold the stream back; one that
 * holds it for `slowConsumerMs` without sending anything meanwhile is dropped with
 * ERR_SLOW_CONSUMER and the others go on. So the stream goes at the pace of its
 * slowest subscriber that keeps reading, and a stalled one costs the others a bounded
 * pause. With "fastest paces, the rest must stay within the ring", as before session
 * 4, 100 equally fast clients lost 84 of their number within the first few thousand
 * chunks: a 1024-chunk ring is half a millisecond at 2M chunks/s. Readers that must
 * not wait for each other want a durable stream (each reads the log at its own pace).
 * Memory per stream is bounded by the ring, whatever the mix of clients.
 *
 * The ring also lets a client that lost its connection come back within the ring and
 * resume without loss. A stream with no subscriber for `lingerMs` is cancelled; a
 * finished one is forgotten `lingerMs` after its end.
 */
import type { ChunkData } from '../../protocol/chunk.js';
import type { Chunk, Progress, SluiceStream } from '../types.js';
import type { ServerMetrics } from './metrics.js';
import { ChunkRing, type FrameScratch } from './ring.js';
import { encodeChunkJson, encodeChunksJson, endFrame, endFromThrown, errorFrame, type EndInfo, type Outlet, type Subscription } from './subscription.js';

export interface FanoutLimits {
  ring: { chunks: number; bytes: number };
  batch: { chunks: number; bytes: number };
  lingerMs: number;
  slowConsumerMs: number;
  /** Where frames are assembled; shared by the server's broadcasts (sends copy it at once). */
  scratch: FrameScratch;
}

/** Bytes one pull round may take, in batches: bounds what is pulled before sockets report congestion. */
const ROUND_BATCHES = 4;
/** Most chunks one `takeBuffered` call may return (the round's byte bound is checked between calls). */
const TAKE_CHUNKS = 64;


export class Broadcast {
  readonly id: string;
  readonly #stream: SluiceStream;
  readonly #limits: FanoutLimits;
  readonly #metrics: ServerMetrics;
  readonly #onForget: (b: Broadcast) => void;
  #it: AsyncIterator<Chunk<ChunkData>> | undefined;
  readonly #ring: ChunkRing;
  #pulling = false;
  #closed = false;
  /** The stream ended badly: pull its outcome whatever the demand. */
  #drainOutcome = false;
  #flushScheduled = false;
  #ended: EndInfo | undefined;
  #linger: NodeJS.Timeout | undefined;
  #holdCheck: NodeJS.Timeout | undefined;
  readonly #subs = new Set<FanoutSubscription>();
  readonly #onProgress = (p: Progress): void => {
    for (const s of this.#subs) s.progress(p);
  };

  constructor(stream: SluiceStream, limits: FanoutLimits, metrics: ServerMetrics, onForget: (b: Broadcast) => void) {
    this.id = stream.id;
    this.#stream = stream;
    this.#limits = limits;
    this.#metrics = metrics;
    this.#onForget = onForget;
    this.#ring = new ChunkRing(limits.ring);
    // Throws ERR_STREAM_CONSUMED when someone else already reads this stream.
    this.#it = stream[Symbol.asyncIterator]();
    stream.on('progress', this.#onProgress);
    // A stream that fails or is cancelled while nobody has credit must still say so:
    // its queue is dropped, so one more next() returns the outcome at once.
    void stream.result.then((r) => {
      if (r.status === 'done') return;
      this.#drainOutcome = true;
      this.kick();
    });
    this.#armLinger();
  }

  get stream(): SluiceStream {
    return this.#stream;
  }

  /** Seq of the next chunk the loop will pull (one past the newest in the ring). */
  get headSeq(): number {
    return this.#ring.nextSeq;
  }

  get subscriberCount(): number {
    return this.#subs.size;
  }

  /**
   * Attach a subscriber wanting chunks from `fromSeq` on. Returns it and, when chunks
   * before the ring's start are wanted, the gap the caller reports first.
   */
  subscribe(outlet: Outlet, sub: number, fromSeq: number, credit: number): { subscription: FanoutSubscription; gap?: { fromSeq: number; toSeq: number } } {
    const baseSeq = this.#ring.baseSeq;
    const cursor = Math.max(fromSeq, baseSeq);
    const s = new FanoutSubscription(this, outlet, sub, cursor, Math.min(credit, outlet.maxCredit));
    this.#subs.add(s);
    this.#disarmLinger();
    const result: { subscription: FanoutSubscription; gap?: { fromSeq: number; toSeq: number } } = { subscription: s };
    if (fromSeq < baseSeq) result.gap = { fromSeq, toSeq: baseSeq };
    return result;
  }

  /** @internal */
  remove(s: FanoutSubscription): void {
    if (!this.#subs.delete(s)) return;
    if (this.#subs.size === 0) this.#armLinger();
  }

  /**
   * Stop and drop every subscriber. With `cancel`, a still running stream is cancelled
   * (`iterator.return()`); without, it is left running for its owner (server shutdown
   * leaves streams to `host.close()`, which checkpoints them).
   */
  close(cancel = true): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#stream.off('progress', this.#onProgress);
    for (const s of [...this.#subs]) s.close();
    this.#subs.clear();
    this.#disarmLinger();
    if (this.#holdCheck !== undefined) clearTimeout(this.#holdCheck);
    this.#holdCheck = undefined;
    const it = this.#it;
    this.#it = undefined;
    if (cancel && it !== undefined && this.#ended === undefined) void it.return?.();
    this.#ended ??= { status: 'cancelled' };
  }

  // ---- pacing ----------------------------------------------------------------------

  /**
   * The seq up to which (exclusive) some subscriber wants chunks pulled, held back to
   * where no subscriber loses a chunk it has yet to send. When that stops the head, the
   * subscribers whose unsent chunks fill the ring are holding the stream back; one that
   * has done so without a pause (it sent nothing meanwhile) for `slowConsumerMs` is
   * dropped here.
   */
  #demandLimit(): number {
    const ring = this.#ring;
    const next = ring.nextSeq;
    if (this.#drainOutcome) return next + 1;
    const ringChunks = this.#limits.ring.chunks;
    let want = next;
    let limit = Infinity;
    for (const s of this.#subs) {
      const reach = this.#reach(s);
      if (reach < limit) limit = reach;
      // Never pull further ahead of a subscriber than the ring keeps, whatever its credit.
      if (reach > next && s.outlet.writable && s.credit > 0) want = Math.max(want, s.cursor + Math.min(s.credit, ringChunks));
    }
    // Someone wants the head to move and it cannot: whoever's unsent chunks fill the ring holds it.
    const stopped = want > next && limit <= next;
    const now = stopped ? performance.now() : 0;
    let expired: FanoutSubscription[] | undefined;
    for (const s of this.#subs) {
      if (!stopped || this.#reach(s) > next) s.holdingSince = undefined;
      else if ((s.holdingSince ??= now) + this.#limits.slowConsumerMs <= now) (expired ??= []).push(s);
    }
    if (expired !== undefined) {
      for (const s of expired) s.slow(true);
      return this.#demandLimit();
    }
    if (stopped) this.#armHoldCheck();
    return Math.max(next, Math.min(limit, want));
  }

  /**
   * How far `s` lets the head go without evicting a chunk it has yet to send: a ring's
   * worth of chunks past its cursor, and nowhere while its unsent chunks take half the
   * ring's bytes (a pull round then still fits in the other half).
   */
  #reach(s: FanoutSubscription): number {
    const ring = this.#ring;
    if (ring.endByte - ring.startOf(s.cursor) >= this.#limits.ring.bytes / 2) return ring.nextSeq;
    return s.cursor + this.#limits.ring.chunks;
  }

  /** Look again when the oldest hold expires: nothing else may wake a stream a stalled subscriber holds. */
  #armHoldCheck(): void {
    if (this.#holdCheck !== undefined || this.#closed) return;
    let oldest = Infinity;
    for (const s of this.#subs) if (s.holdingSince !== undefined && s.holdingSince < oldest) oldest = s.holdingSince;
    if (oldest === Infinity) return;
    const wait = Math.max(0, oldest + this.#limits.slowConsumerMs - performance.now());
    this.#holdCheck = setTimeout(() => {
      this.#holdCheck = undefined;
      this.kick();
    }, Math.ceil(wait) + 1);
    this.#holdCheck.unref();
  }

  /** Pull while someone wants more. Called on subscribe, credit and drain. */
  kick(): void {
    if (this.#pulling || this.#ended !== undefined || this.#it === undefined) return;
    if (this.#demandLimit() <= this.#ring.nextSeq) return;
    this.#pulling = true;
    void this.#pullLoop();
  }

  async #pullLoop(): Promise<void> {
    const { chunks: roundChunks, bytes: batchBytes } = this.#limits.batch;
    const ring = this.#ring;
    // Every subscriber's unsent chunks take less than half the ring's bytes (#reach): a
    // round within a quarter of them evicts none of them, even overshooting it twice.
    const roundBytes = Math.min(ROUND_BATCHES * batchBytes, this.#limits.ring.bytes / 4);
    try {
      for (;;) {
        // Pull at most one round (a batch's worth), then let the flush send it, so a socket
        // crossing its high watermark is noticed before the next round is pulled.
        const limit = Math.min(this.#demandLimit(), ring.nextSeq + roundChunks);
        if (limit <= ring.nextSeq) break;
        const roundStart = ring.pushedSize;
        while (ring.nextSeq < limit && ring.pushedSize - roundStart < roundBytes) {
          const it = this.#it;
          if (it === undefined || this.#ended !== undefined) return;
          // What the host already holds comes without a promise per chunk; in slices sized
          // by the chunks kept so far, so a slice of large chunks does not overrun the round.
          const slice = this.#sliceChunks(roundBytes - (ring.pushedSize - roundStart));
          const taken = this.#stream.takeBuffered?.(Math.min(limit - ring.nextSeq, slice, this.#limits.ring.chunks));
          if (taken !== undefined && taken.length > 0) {
            this.#pushMany(taken);
            continue;
          }
          const r = await it.next();
          if (this.#it === undefined) return;
          if (r.done === true) {
            this.#end({ status: 'done' });
            return;
          }
          this.#push(r.value);
        }
        this.#commit();
        await new Promise<void>((resolve) => setImmediate(resolve));
        if (this.#ended !== undefined || this.#it === undefined) return;
      }
    } catch (err) {
      this.#end(endFromThrown(err));
    } finally {
      this.#pulling = false;
      this.#scheduleFlush();
    }
  }

  /** Chunks of the ring's average size that fit in `bytes` (1 to TAKE_CHUNKS; 1 before any is kept). */
  #sliceChunks(bytes: number): number {
    const ring = this.#ring;
    const kept = ring.committedSeq - ring.baseSeq;
    if (kept === 0) return 1;
    const average = (ring.endByte - ring.startOf(ring.baseSeq)) / kept;
    return Math.max(1, Math.min(TAKE_CHUNKS, Math.floor(bytes / Math.max(1, average))));
  }

  #push(chunk: Chunk<ChunkData>): void {
    const ring = this.#ring;
    // The host's seqs are authoritative; a resumed stream may not start at 0.
    if (ring.nextSeq === 0 && ring.baseSeq === 0 && chunk.seq > 0) ring.startAt(chunk.seq);
    if (ring.push(encodeChunkJson(chunk.data))) this.#dropSlow();
    this.#scheduleFlush();
  }

  /** Consecutive chunks, encoded in one pass. */
  #pushMany(chunks: readonly Chunk<ChunkData>[]): void {
    const ring = this.#ring;
    if (ring.nextSeq === 0 && ring.baseSeq === 0 && chunks[0]!.seq > 0) ring.startAt(chunks[0]!.seq);
    const datas: unknown[] = new Array(chunks.length);
    for (let i = 0; i < chunks.length; i++) datas[i] = chunks[i]!.data;
    const { text, lengths } = encodeChunksJson(datas);
    if (ring.pushMany(text, lengths)) this.#dropSlow();
    this.#scheduleFlush();
  }

  /** Write the round's chunks into the ring, where frames can take them. */
  #commit(): void {
    if (this.#ring.commit()) this.#dropSlow();
  }

  /** Old chunks were evicted: whoever still needed them has fallen out of the ring. */
  #dropSlow(): void {
    const base = this.#ring.baseSeq;
    for (const s of this.#subs) if (s.cursor < base) s.slow();
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    // setImmediate, not a microtask: let the pull loop gather every chunk already
    // buffered in the host before one frame per subscriber carries them all.
    setImmediate(() => {
      this.#flushScheduled = false;
      this.#commit();
      for (const s of this.#subs) s.outlet.cork(() => this.deliver(s));
      this.kick();
    });
  }

  #end(end: EndInfo): void {
    if (this.#ended !== undefined) return;
    this.#commit();
    this.#ended = end;
    this.#it = undefined;
    this.#stream.off('progress', this.#onProgress);
    this.#scheduleFlush();
    this.#armLinger();
  }

  /** Send `s` what its credit and socket allow; then its end, if it has everything. */
  deliver(s: FanoutSubscription): void {
    const { chunks: maxChunks, bytes: maxBytes } = this.#limits.batch;
    const ring = this.#ring;
    while (!s.closed && s.credit > 0 && s.cursor < ring.committedSeq && s.outlet.writable) {
      if (s.cursor < ring.baseSeq) {
        s.slow();
        return;
      }
      const { bytes, count } = ring.frame(this.#limits.scratch, s.sub, s.cursor, Math.min(s.credit, maxChunks), maxBytes);
      s.cursor += count;
      s.credit -= count;
      s.outlet.sendChunks(bytes, count);
    }
    if (!s.closed && this.#ended !== undefined && s.cursor >= ring.nextSeq) {
      s.outlet.sendFrame(endFrame(s.sub, this.#ended));
      s.close();
    }
  }

  // ---- lifetime --------------------------------------------------------------------

  #armLinger(): void {
    if (this.#closed || this.#subs.size > 0 || this.#linger !== undefined) return;
    this.#linger = setTimeout(() => {
      this.#linger = undefined;
      if (this.#subs.size > 0) return;
      if (this.#ended === undefined) void this.#stream.cancel('no subscriber');
      this.close();
      this.#onForget(this);
    }, this.#limits.lingerMs);
    this.#linger.unref();
  }

  #disarmLinger(): void {
    if (this.#linger === undefined) return;
    clearTimeout(this.#linger);
    this.#linger = undefined;
  }

  /** @internal */
  countSlow(): void {
    this.#metrics.slowConsumers.inc();
    this.#metrics.error('ERR_SLOW_CONSUMER');
  }
}

export class FanoutSubscription implements Subscription {
  closed = false;
  /** Since when (performance.now()) its unsent part fills the ring and holds the stream back. */
  holdingSince: number | undefined;
  constructor(
    readonly broadcast: Broadcast,
    readonly outlet: Outlet,
    readonly sub: number,
    /** Next seq to send. */
    public cursor: number,
    public credit: number,
  ) {}

  get streamId(): string {
    return this.broadcast.id;
  }

  start(): void {
    this.pump();
  }

  grant(n: number): void {
    this.credit = Math.min(this.credit + n, this.outlet.maxCredit);
    this.pump();
  }

  pump(): void {
    if (this.closed) return;
    this.broadcast.deliver(this);
    this.broadcast.kick();
  }

  progress(p: Progress): void {
    // Best effort: progress is a latest-value signal, dropped while the socket is congested.
    if (this.closed || !this.outlet.writable) return;
    const frame = p.message === undefined ? { type: 'progress' as const, sub: this.sub, fraction: p.fraction } : { type: 'progress' as const, sub: this.sub, fraction: p.fraction, message: p.message };
    this.outlet.sendFrame(frame);
  }

  /** Fell out of the ring (the chunks it still needs are gone), or held the stream back too long (`held`). */
  slow(held = false): void {
    if (this.closed) return;
    this.broadcast.countSlow();
    const why = held
      ? `held stream ${this.streamId} back for longer than slowConsumerMs with a full fan-out buffer unsent; it goes on without it`
      : `fell more than the fan-out buffer behind stream ${this.streamId}; chunk ${this.cursor} is gone`;
    this.outlet.sendFrame(errorFrame('ERR_SLOW_CONSUMER', `Subscription ${this.sub} ${why}`, this.sub, true, { seq: this.cursor }));
    this.close();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.broadcast.remove(this);
    this.outlet.released(this);
  }
}
