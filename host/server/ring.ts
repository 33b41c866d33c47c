/**
 * The fan-out ring of one stream: its last chunks, JSON-encoded once, as UTF-8 bytes in
 * one circular buffer outside the JS heap.
 *
 * Why bytes and not strings: every subscriber of a live stream may resume anywhere in
 * the ring, so each encoded chunk lives for a ring's worth of chunks. Kept as JS
 * strings (~100k of them across 100 streams) they all survived the young generation
 * and were promoted: garbage collection was ~30% of the server's CPU. In a Buffer they
 * cost the collector nothing, a frame is one `memcpy` of a contiguous range, and uWS
 * gets bytes it needs neither to flatten nor to transcode.
 *
 * Layout: chunk `seq` occupies absolute bytes `[end(seq - 1), end(seq))`, its JSON
 * followed by a comma, at `position % capacity`. So chunks `a .. b - 1` in a frame are
 * the range `[start(a), end(b - 1) - 1)`: no per-chunk work to build a frame.
 *
 * Chunks are encoded as they are pulled (`push`) but written in one call per pull round
 * (`commit`): a native write per chunk cost more than the encoding.
 *
 * Bounds: at most `chunks` chunks and `bytes` bytes are kept (always at least the
 * newest chunk, however large). The buffer starts small and doubles while the live
 * bytes plus one uncommitted round need more, so it never exceeds about twice
 * `bytes` plus a round (plus the largest single chunk).
 */

/** Where the buffer starts; 100 idle streams cost 100 of these. */
const INITIAL_CAPACITY = 16 * 1024;
const CLOSE_BRACKET = 0x5d;
const CLOSE_BRACE = 0x7d;
/**
 * Pending chunks are written once this many have gathered (or this many characters):
 * enough to amortise the native write, few enough that they die young. With 100
 * streams each holding a whole round (256) of encoded strings across the event loop
 * turn, ~3 MB survived every scavenge and was promoted: GC was ~40% of the CPU.
 */
const COMMIT_CHUNKS = 32;
const COMMIT_CHARS = 16 * 1024;
/** `]}` after the last chunk of a frame. */
const FRAME_TAIL_BYTES = 2;

/** A reusable buffer frames are assembled in; one per server, grown on demand. */
export class FrameScratch {
  #buf = Buffer.allocUnsafe(64 * 1024);

  /** A buffer of at least `n` bytes. Its contents are valid until the next call. */
  get(n: number): Buffer {
    if (this.#buf.length < n) this.#buf = Buffer.allocUnsafe(Math.max(n, this.#buf.length * 2));
    return this.#buf;
  }
}

export class ChunkRing {
  readonly #slots: number;
  readonly #maxBytes: number;
  /** End (absolute, exclusive, comma included) of each committed chunk, by `seq % slots`. */
  readonly #ends: Float64Array;
  #buf: Buffer;
  /** Oldest chunk kept, and its first absolute byte. */
  #baseSeq = 0;
  #baseByte = 0;
  /** One past the newest committed chunk, and one past its last byte. */
  #committedSeq = 0;
  #endByte = 0;
  /** Encoded chunks not written yet, each followed by its comma, in pieces of one or more chunks. */
  #pending: string[] = [];
  /** Characters of each pending chunk, its comma included. */
  #pendingLengths: number[] = [];
  #pendingChars = 0;

  constructor(limits: { chunks: number; bytes: number }) {
    this.#slots = limits.chunks;
    this.#maxBytes = limits.bytes;
    this.#ends = new Float64Array(limits.chunks);
    this.#buf = Buffer.allocUnsafe(INITIAL_CAPACITY);
  }

  /** Oldest seq still held. */
  get baseSeq(): number {
    return this.#baseSeq;
  }

  /** One past the newest seq pushed (committed or not). */
  get nextSeq(): number {
    return this.#committedSeq + this.#pendingLengths.length;
  }

  /** Bytes pushed so far over the stream's life (uncommitted ones counted in characters): a position, for pacing. */
  get pushedSize(): number {
    return this.#endByte + this.#pendingChars;
  }

  /** One past the newest chunk a frame can carry. */
  get committedSeq(): number {
    return this.#committedSeq;
  }

  /** Bytes committed so far, over the stream's life: a position, for pacing. */
  get endByte(): number {
    return this.#endByte;
  }

  /** The stream's first seq (a resumed stream may not start at 0); only before the first push. */
  startAt(seq: number): void {
    this.#baseSeq = this.#committedSeq = seq;
  }

  /**
   * Add the next chunk's JSON. Returns true when an old chunk was evicted to make room
   * (subscribers still needing it are now too slow).
   */
  push(json: string): boolean {
    return this.pushMany(`${json},`, [json.length + 1]);
  }

  /**
   * Add the next `lengths.length` chunks (at most the ring's `chunks`): `text` is each
   * one's JSON followed by a comma, `lengths[i]` chunk i's characters, comma included
   * (see `encodeChunksJson`). Returns true when old chunks were evicted to make room.
   */
  pushMany(text: string, lengths: readonly number[]): boolean {
    const count = lengths.length;
    if (count > this.#slots) throw new RangeError(`${count} chunks pushed at once into a ring of ${this.#slots}`);
    let evicted = false;
    if (this.nextSeq + count - this.#baseSeq > this.#slots) {
      // The slots of the oldest chunks are needed; they must be committed to be dropped.
      if (this.nextSeq + count - this.#slots > this.#committedSeq) evicted = this.commit();
      while (this.nextSeq + count - this.#baseSeq > this.#slots) {
        this.#evictOldest();
        evicted = true;
      }
    }
    this.#pending.push(text);
    for (let i = 0; i < count; i++) this.#pendingLengths.push(lengths[i]!);
    this.#pendingChars += text.length;
    if (this.#pendingLengths.length >= COMMIT_CHUNKS || this.#pendingChars >= COMMIT_CHARS) evicted = this.commit() || evicted;
    return evicted;
  }

  /** Write the pending chunks into the buffer. Returns true when old chunks were evicted. */
  commit(): boolean {
    const lengths = this.#pendingLengths;
    const count = lengths.length;
    if (count === 0) return false;
    // Each chunk followed by its comma, so a frame is one contiguous range.
    const text = this.#pending.length === 1 ? this.#pending[0]! : this.#pending.join('');
    const bytes = Buffer.byteLength(text, 'utf8');
    this.#reserve(this.#endByte - this.#baseByte + bytes);
    this.#write(text, bytes);
    const first = this.#committedSeq;
    let end = this.#endByte;
    if (bytes === text.length) {
      // ASCII (the common case): byte offsets are character offsets.
      for (let i = 0; i < count; i++) {
        end += lengths[i]!;
        this.#ends[(first + i) % this.#slots] = end;
      }
    } else {
      let at = 0;
      for (let i = 0; i < count; i++) {
        end += Buffer.byteLength(text.slice(at, at + lengths[i]!), 'utf8');
        at += lengths[i]!;
        this.#ends[(first + i) % this.#slots] = end;
      }
    }
    this.#endByte += bytes;
    this.#committedSeq += count;
    this.#pending = [];
    this.#pendingLengths = [];
    this.#pendingChars = 0;
    let evicted = false;
    while (this.#endByte - this.#baseByte > this.#maxBytes && this.#committedSeq - this.#baseSeq > 1) {
      this.#evictOldest();
      evicted = true;
    }
    return evicted;
  }

  /** Absolute byte where `seq` starts (`seq` committed, or the end for the next one). */
  startOf(seq: number): number {
    if (seq <= this.#baseSeq) return this.#baseByte;
    if (seq >= this.#committedSeq) return this.#endByte;
    return this.#ends[(seq - 1) % this.#slots]!;
  }

  /**
   * Assemble a `chunks` frame for committed chunks from `first` on: at most `maxChunks`
   * of them and about `maxBytes` bytes (at least one), into `scratch`. Returns the
   * frame (a view of the scratch buffer, valid until its next use) and its chunk count.
   */
  frame(scratch: FrameScratch, sub: number, first: number, maxChunks: number, maxBytes: number): { bytes: Buffer; count: number } {
    const stop = Math.min(this.#committedSeq, first + maxChunks);
    const start = this.startOf(first);
    let end = this.#ends[first % this.#slots]!;
    let seq = first + 1;
    for (; seq < stop; seq++) {
      const e = this.#ends[seq % this.#slots]!;
      if (e - start > maxBytes) break;
      end = e;
    }
    const header = `{"type":"chunks","sub":${sub},"seq":${first},"data":[`;
    // Minus the last chunk's comma.
    const body = end - start - 1;
    const buf = scratch.get(header.length + body + FRAME_TAIL_BYTES);
    let n = buf.write(header, 0, 'latin1');
    n += this.#copyOut(buf, n, start, body);
    buf[n++] = CLOSE_BRACKET;
    buf[n++] = CLOSE_BRACE;
    return { bytes: buf.subarray(0, n), count: seq - first };
  }

  #evictOldest(): void {
    this.#baseByte = this.#ends[this.#baseSeq % this.#slots]!;
    this.#baseSeq++;
  }

  /** Make room for `live` bytes, keeping the live range at the same absolute positions. */
  #reserve(live: number): void {
    const old = this.#buf;
    if (live <= old.length) return;
    let capacity = old.length * 2;
    while (capacity < live) capacity *= 2;
    const buf = Buffer.allocUnsafe(capacity);
    const used = this.#endByte - this.#baseByte;
    // Read the live bytes out of the old layout into the new one, wrap-aware on both sides.
    const tmp = Buffer.allocUnsafe(used);
    this.#copyOut(tmp, 0, this.#baseByte, used);
    this.#buf = buf;
    this.#copyIn(tmp, this.#baseByte);
  }

  #write(text: string, bytes: number): void {
    const cap = this.#buf.length;
    const at = this.#endByte % cap;
    if (at + bytes <= cap) {
      this.#buf.write(text, at, bytes, 'utf8');
      return;
    }
    // Wraps around: rare (once per lap), so a temporary copy is fine.
    this.#copyIn(Buffer.from(text, 'utf8'), this.#endByte);
  }

  #copyIn(src: Uint8Array, position: number): void {
    const cap = this.#buf.length;
    const at = position % cap;
    const first = Math.min(src.length, cap - at);
    this.#buf.set(src.subarray(0, first), at);
    if (first < src.length) this.#buf.set(src.subarray(first), 0);
  }

  #copyOut(dst: Buffer, dstAt: number, position: number, length: number): number {
    const cap = this.#buf.length;
    const at = position % cap;
    const first = Math.min(length, cap - at);
    this.#buf.copy(dst, dstAt, at, at + first);
    if (first < length) this.#buf.copy(dst, dstAt + first, 0, length - first);
    return length;
  }
}
