/**
 * Chunk data: a JSON-compatible value or a Uint8Array. Plugin output is read exactly
 * once, here, into a fresh copy, so a getter that answers differently on a second
 * read, a value mutated after `yield`, or a prototype trick cannot change what the
 * host receives. Everything else (functions, symbols, cycles, BigInt, NaN, class
 * instances, over-deep nesting, over-size) is ERR_CHUNK_INVALID or
 * ERR_LIMIT_CHUNK_BYTES, naming the path of the offending value.
 *
 * Sizes are estimates of the encoded size, cheap to compute on the hot path: string
 * length in UTF-16 code units (exact for ASCII), 8 per number, byteLength for bytes,
 * plus key lengths and a little structure. `maxBytes` limits count these.
 */
import { SluiceError } from './errors.js';

export type ChunkData = null | boolean | number | string | Uint8Array | ChunkData[] | { [key: string]: ChunkData };

export interface ChunkRules {
  /** Nesting depth allowed (a scalar at top level has depth 0). */
  maxDepth: number;
  /** Largest estimated size of one chunk; 0 means unlimited. */
  maxChunkBytes: number;
}

export const DEFAULT_CHUNK_RULES: Readonly<ChunkRules> = Object.freeze({ maxDepth: 64, maxChunkBytes: 0 });

const SCALAR_BYTES = 8;
const STRUCTURE_BYTES = 2;

/** The copy and its estimated size. */
export interface CopiedChunk {
  data: ChunkData;
  bytes: number;
}

class Copier {
  bytes = 0;
  private readonly active = new Set<object>();
  constructor(private readonly rules: ChunkRules) {}

  private invalid(path: string, what: string): never {
    throw new SluiceError('ERR_CHUNK_INVALID', `Chunk ${path} is ${what}, not JSON-compatible data or a Uint8Array`, { details: { path } });
  }

  private add(n: number, path: string): void {
    this.bytes += n;
    const max = this.rules.maxChunkBytes;
    if (max > 0 && this.bytes > max) {
      throw new SluiceError('ERR_LIMIT_CHUNK_BYTES', `Chunk is larger than maxChunkBytes (${max}) at ${path}`, {
        details: { limit: 'maxChunkBytes', max, path },
      });
    }
  }

  copy(value: unknown, path: string, depth: number): ChunkData {
    switch (typeof value) {
      case 'string':
        this.add(value.length + STRUCTURE_BYTES, path);
        return value;
      case 'number':
        if (!Number.isFinite(value)) this.invalid(path, String(value));
        this.add(SCALAR_BYTES, path);
        return value;
      case 'boolean':
        this.add(SCALAR_BYTES, path);
        return value;
      case 'object':
        break;
      case 'undefined':
        return this.invalid(path, 'undefined');
      default:
        return this.invalid(path, `a ${typeof value}`);
    }
    if (value === null) {
      this.add(SCALAR_BYTES, path);
      return null;
    }
    if (depth >= this.rules.maxDepth) this.invalid(path, `nested deeper than ${this.rules.maxDepth} levels`);
    if (ArrayBuffer.isView(value)) {
      if (!(value instanceof Uint8Array)) this.invalid(path, `a ${Object.prototype.toString.call(value).slice(8, -1)}`);
      // The intrinsic length, not a getter a subclass may override: it is what the copy reads.
      this.add(typedLength(value), path);
      // slice() on a Buffer would share memory; copy into a plain Uint8Array.
      return new Uint8Array(value);
    }
    if (this.active.has(value)) this.invalid(path, 'a cycle');
    this.active.add(value);
    try {
      if (Array.isArray(value)) return this.copyArray(value, path, depth);
      const proto: unknown = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) {
        this.invalid(path, `an instance of ${describeProto(proto)}`);
      }
      return this.copyObject(value as Record<string, unknown>, path, depth);
    } finally {
      this.active.delete(value);
    }
  }

  private copyArray(value: unknown[], path: string, depth: number): ChunkData[] {
    const length = value.length;
    const out = new Array<ChunkData>(length);
    this.add(STRUCTURE_BYTES, path);
    for (let i = 0; i < length; i++) out[i] = this.copy(value[i], `${path}[${i}]`, depth + 1);
    return out;
  }

  private copyObject(value: Record<string, unknown>, path: string, depth: number): { [key: string]: ChunkData } {
    if (Object.getOwnPropertySymbols(value).length > 0) this.invalid(path, 'an object with symbol keys');
    // Null prototype: a `__proto__` key stays data instead of replacing the prototype.
    const out = Object.create(null) as { [key: string]: ChunkData };
    this.add(STRUCTURE_BYTES, path);
    for (const key of Object.keys(value)) {
      this.add(key.length + STRUCTURE_BYTES, path);
      out[key] = this.copy(value[key], `${path}.${key}`, depth + 1);
    }
    return out;
  }
}

function describeProto(proto: unknown): string {
  try {
    const ctor = (proto as { constructor?: { name?: unknown } }).constructor;
    return typeof ctor?.name === 'string' && ctor.name !== '' ? ctor.name : 'a class';
  } catch {
    return 'a class';
  }
}

/**
 * Validate plugin output and copy it. Throws ERR_CHUNK_INVALID / ERR_LIMIT_CHUNK_BYTES;
 * anything a hostile getter throws is wrapped as ERR_CHUNK_INVALID.
 */
export function copyChunk(value: unknown, rules: ChunkRules = DEFAULT_CHUNK_RULES, path = 'chunk'): CopiedChunk {
  const copier = new Copier(rules);
  try {
    const data = copier.copy(value, path, 0);
    return { data, bytes: copier.bytes };
  } catch (err) {
    if (err instanceof SluiceError) throw err;
    throw new SluiceError('ERR_CHUNK_INVALID', `Reading chunk ${path} threw: ${String((err as Error)?.message ?? err)}`, { cause: err });
  }
}

// ---- packed byte chunks ------------------------------------------------------------

/** %TypedArray%.prototype.length, read without a subclass's getter in the way. */
const typedLengthGetter = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(Uint8Array.prototype) as object, 'length')!.get as (this: Uint8Array) => number;
const typedSet = Uint8Array.prototype.set;

function typedLength(value: Uint8Array): number {
  return typedLengthGetter.call(value);
}

/**
 * How a batch carries its byte chunks: copied back to back into one buffer, so a batch
 * crosses a thread, an isolate or a pipe as one ArrayBuffer instead of one per chunk.
 * `sizes` has one entry per chunk of the batch: chunk i's length in `buffer` (chunks in
 * order from offset 0), or UNPACKED when chunk i travels as a value of its own. The
 * batch's `chunks` then holds only those values, in order; a batch of byte chunks alone
 * sends `chunks: []`. A placeholder per packed chunk would cost its serialisation: 256
 * `undefined`s took ~11 us of a ~15 us postMessage.
 */
export interface PackedBytes {
  buffer: ArrayBuffer;
  sizes: Int32Array;
}

export const UNPACKED = -1;
/** Larger byte chunks travel as their own buffer: copying them into an arena buys nothing. */
export const PACK_MAX_CHUNK_BYTES = 64 * 1024;
const ARENA_MIN_BYTES = 4 * 1024;
/** Spare arenas kept for reuse; more would only hold memory. */
const MAX_SPARE_ARENAS = 2;

/**
 * Builds one batch's PackedBytes. `pack` validates a Uint8Array chunk and copies it into
 * the arena: that copy is the one read of the plugin's bytes, so bytes it changes after
 * `yield` never reach the host. The arena is handed over whole by `take` (and may be
 * transferred); the next batch packs into a spare arena (`recycle`) or a fresh one sized
 * after the last. Reusing arenas matters: a fresh one is zeroed and page-faulted in, a
 * cost per packed byte as large as the copy itself many times over.
 */
export class BytePacker {
  #arena: Uint8Array<ArrayBuffer> | undefined;
  #used = 0;
  #sizes: number[] = [];
  #packed = 0;
  #lastUsed = ARENA_MIN_BYTES;
  #spare: ArrayBuffer[] = [];

  /**
   * Offer a buffer to pack later batches into: one the host handed back once it had
   * copied every chunk out. Its old contents are this stream's own earlier chunks.
   */
  recycle(buffer: ArrayBuffer): void {
    // A detached buffer (byteLength 0) is of no use.
    if (buffer.byteLength > 0 && this.#spare.length < MAX_SPARE_ARENAS) this.#spare.push(buffer);
  }

  #arenaOf(capacity: number): Uint8Array<ArrayBuffer> {
    while (this.#spare.length > 0) {
      const spare = this.#spare.pop()!;
      // One too small is dropped: the batches it was sized for have grown.
      if (spare.byteLength >= capacity) return new Uint8Array(spare);
    }
    return new Uint8Array(capacity);
  }

  /**
   * Pack `value` as chunk `index` of the batch when it is a Uint8Array of at most
   * PACK_MAX_CHUNK_BYTES. Returns its size, or UNPACKED when the caller must copy it
   * another way (copyChunk). Throws ERR_LIMIT_CHUNK_BYTES over `rules.maxChunkBytes`.
   */
  pack(value: unknown, index: number, rules: ChunkRules): number {
    if (!(value instanceof Uint8Array)) return UNPACKED;
    let size: number;
    try {
      size = typedLength(value);
    } catch {
      // Not really a typed array (a Proxy of one): copyChunk reports it as ERR_CHUNK_INVALID.
      return UNPACKED;
    }
    if (size > PACK_MAX_CHUNK_BYTES) return UNPACKED;
    const max = rules.maxChunkBytes;
    if (max > 0 && size > max) {
      throw new SluiceError('ERR_LIMIT_CHUNK_BYTES', `Chunk is larger than maxChunkBytes (${max}) at chunk`, { details: { limit: 'maxChunkBytes', max, path: 'chunk' } });
    }
    const end = this.#used + size;
    let arena = this.#arena;
    if (arena === undefined || end > arena.length) {
      let capacity = arena === undefined ? this.#lastUsed : arena.length * 2;
      while (capacity < end) capacity *= 2;
      const grown = this.#arenaOf(capacity);
      if (arena !== undefined) typedSet.call(grown, arena.subarray(0, this.#used));
      this.#arena = arena = grown;
    }
    typedSet.call(arena, value, this.#used);
    this.#used = end;
    while (this.#sizes.length < index) this.#sizes.push(UNPACKED);
    this.#sizes.push(size);
    this.#packed++;
    return size;
  }

  /** The packed bytes of a batch of `count` chunks, or undefined when none was packed; resets for the next batch. */
  take(count: number): PackedBytes | undefined {
    if (this.#packed === 0) {
      this.#sizes.length = 0;
      return undefined;
    }
    const sizes = new Int32Array(count).fill(UNPACKED);
    sizes.set(this.#sizes);
    // Trim only when most of the arena is slack: a transferred arena costs nothing to send.
    // A trimmed arena stays here for the next batch.
    const arena = this.#arena!;
    let buffer = arena.buffer;
    if (this.#used * 2 < arena.length) {
      buffer = arena.slice(0, this.#used).buffer;
      this.recycle(arena.buffer);
    }
    this.#lastUsed = Math.max(ARENA_MIN_BYTES, this.#used);
    this.#arena = undefined;
    this.#used = 0;
    this.#sizes = [];
    this.#packed = 0;
    return { buffer, sizes };
  }
}

/** How many bytes of its buffer a batch's packed chunks use (they start at offset 0). */
export function packedLength(sizes: Int32Array): number {
  let total = 0;
  for (let i = 0; i < sizes.length; i++) if (sizes[i] !== UNPACKED) total += sizes[i]!;
  return total;
}

/**
 * Every chunk of a packed batch as a value of its own, in order: each packed chunk gets
 * its own buffer (a copy, never a view: a consumer holding one chunk must not keep its
 * whole batch alive), the others come from `values`. The packing has passed `checkPacking`.
 */
export function unpackChunks(values: unknown[], packed: PackedBytes): unknown[] {
  const view = new Uint8Array(packed.buffer);
  const sizes = packed.sizes;
  const out = new Array<unknown>(sizes.length);
  let offset = 0;
  let v = 0;
  for (let i = 0; i < out.length; i++) {
    const size = sizes[i]!;
    if (size === UNPACKED) {
      out[i] = values[v++];
      continue;
    }
    const end = offset + size;
    out[i] = view.slice(offset, end);
    offset = end;
  }
  return out;
}

/**
 * Validate a packing against its batch's `values` (the chunks that are not packed):
 * `sizes` has one entry per chunk of the batch, at least one, each UNPACKED or a length;
 * there is one value per UNPACKED entry; the lengths fit `buffer`. Throws ERR_PROTOCOL
 * naming what is wrong.
 */
export function checkPacking(values: unknown[], packed: unknown, field = 'batch.packed'): PackedBytes {
  const bad = (what: string): never => {
    throw new SluiceError('ERR_PROTOCOL', `Expected \`${field}\` ${what}`, { details: { field } });
  };
  if (typeof packed !== 'object' || packed === null) return bad('to be an object');
  const { buffer, sizes } = packed as Partial<PackedBytes>;
  if (!(buffer instanceof ArrayBuffer)) return bad('.buffer to be an ArrayBuffer');
  if (!(sizes instanceof Int32Array) || sizes.length === 0) return bad('.sizes to be a non-empty Int32Array');
  let total = 0;
  let unpacked = 0;
  for (let i = 0; i < sizes.length; i++) {
    const size = sizes[i]!;
    if (size === UNPACKED) {
      unpacked++;
      continue;
    }
    if (size < 0) return bad(`.sizes[${i}] to be a length or ${UNPACKED}, got ${size}`);
    total += size;
  }
  if (unpacked !== values.length) return bad(`to leave ${values.length} chunks unpacked (one per value in \`chunks\`), it leaves ${unpacked}`);
  if (total > buffer.byteLength) return bad(`.buffer to hold ${total} bytes, it has ${buffer.byteLength}`);
  return { buffer, sizes };
}
