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
      this.add(value.byteLength, path);
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
