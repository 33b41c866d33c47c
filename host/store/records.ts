/**
 * On-disk layout and versioned record codecs.
 *
 * One LMDB environment, four named databases (all `encoding: 'binary'`, keys in
 * lmdb's ordered-binary encoding):
 *
 * | table         | key              | value                          |
 * | ------------- | ---------------- | ------------------------------ |
 * | `meta`        | `'store'`        | object record: epoch, createdAt, encrypted |
 * | `meta`        | `'keycheck'`     | object record, always sealed, when encrypted |
 * | `streams`     | `id`             | object record: the stream      |
 * | `checkpoints` | `id`             | object record: latest checkpoint |
 * | `log`         | `[id, firstSeq]` | batch record: chunks firstSeq .. firstSeq+count-1 |
 *
 * Object records start with a version byte (RECORD_VERSION) and a flags byte; batch
 * records with their own version byte (LOG_RECORD_VERSION) and a flags byte:
 *
 *     object record: [version 1][flags][payload]
 *     batch record:  [version 2][flags][time: float64 LE][count: uint32 LE][payload]
 *
 * One appended batch is one log record (one put, one serializer, one seal): a record
 * per chunk made LMDB's per-put cost and V8's per-serializer cost the log's bottleneck.
 * A batch record's payload is the array of its chunks in V8's serialization format
 * (node:v8, documented as backward-compatible and safe to store; it round-trips nested
 * Uint8Arrays and keeps a `__proto__` key as data, which msgpackr renames). When every
 * chunk of the batch is a Uint8Array (FLAG_RAW) the payload is instead `count` uint32
 * LE lengths then the bytes, nothing serialized; readers get plain Uint8Arrays back
 * either way. Objects shared between chunks of one batch come back shared (the host
 * copies plugin output per chunk, so it never appends shared objects). With a key, the
 * payload is sealed with AES-256-GCM (FLAG_SEALED, see crypto.ts); the table, the key
 * (so the batch's first seq), the flags, the time and the count are authenticated
 * with it.
 *
 * The log is not compressed (engine.ts says why). A commit costs about one disk sync
 * plus the bytes it writes.
 *
 * Version 1 of the log (a record per chunk, key `[id, seq]`) is not read: such a
 * record is ERR_STORE_VERSION naming it (sluice 0.x had no stores to migrate).
 *
 * A value with another version byte is ERR_STORE_VERSION; anything that does not decode
 * or validate is ERR_STORE_CORRUPT naming table and key. Tests corrupt records by
 * writing raw bytes into these tables with lmdb directly (the layout above is the
 * documented way to do it).
 */
import { Buffer } from 'node:buffer';
import { deserialize, serialize } from 'node:v8';
import type { ChunkData } from '../../protocol/chunk.js';
import { SluiceError } from '../../protocol/errors.js';
import type { StreamStatus } from '../types.js';
import { SEAL_OVERHEAD, type RecordCipher } from './crypto.js';

export const RECORD_VERSION = 1;
/** Version byte of log (batch) records. Version 1 was a record per chunk. */
export const LOG_RECORD_VERSION = 2;
export const FLAG_SEALED = 0b01;
export const FLAG_RAW = 0b10;
const KNOWN_FLAGS = FLAG_SEALED | FLAG_RAW;
const HEADER_BYTES = 2;
const TIME_BYTES = 8;
const COUNT_BYTES = 4;
const BATCH_HEADER_BYTES = HEADER_BYTES + TIME_BYTES + COUNT_BYTES;
const LENGTH_BYTES = 4;
/** Most chunks in one batch record (the count is a uint32; this keeps offsets small). */
export const MAX_BATCH_CHUNKS = 1_000_000;

export const TABLES = Object.freeze({ meta: 'meta', streams: 'streams', checkpoints: 'checkpoints', log: 'log' });
export type Table = (typeof TABLES)[keyof typeof TABLES];

export const META_STORE_KEY = 'store';
export const META_KEYCHECK_KEY = 'keycheck';
const KEYCHECK_TEXT = 'sluice store key check v1';

export type StoreDurability = 'checkpoint' | 'log';
export const STORE_DURABILITIES: readonly StoreDurability[] = ['checkpoint', 'log'];
export const STREAM_STATUSES: readonly StreamStatus[] = ['queued', 'running', 'done', 'failed', 'cancelled'];
export const UNFINISHED_STATUSES: readonly StreamStatus[] = ['queued', 'running'];
export type FinishedStatus = Exclude<StreamStatus, 'queued' | 'running'>;

export function isFinished(status: StreamStatus): status is FinishedStatus {
  return status === 'done' || status === 'failed' || status === 'cancelled';
}

/** Retention of a durable stream's chunk log: the oldest chunks go first. */
export interface RetentionPolicy {
  /** Keep at most this many chunks. */
  maxChunks?: number;
  /** Keep at most this many stored bytes (encoded records, encryption overhead included). */
  maxBytes?: number;
  /** Remove chunks appended more than this many ms ago. */
  maxAgeMs?: number;
}

export interface StoredError {
  code: string;
  message: string;
}

/** A durable stream as the store keeps it. */
export interface StreamRecord {
  readonly id: string;
  readonly plugin: string;
  readonly action: string;
  readonly params: ChunkData;
  readonly options: { readonly [key: string]: ChunkData };
  readonly durability: StoreDurability;
  readonly retention?: RetentionPolicy;
  readonly status: StreamStatus;
  readonly error?: StoredError;
  readonly createdAt: number;
  readonly updatedAt: number;
}

/** The stored body: the record plus the log head (seqs below it were removed by retention). */
export interface StreamBody extends StreamRecord {
  readonly head: number;
}

export interface CheckpointRecord {
  readonly streamId: string;
  /** The store epoch the checkpoint was written in. */
  readonly epoch: string;
  readonly seq: number;
  readonly state: ChunkData;
  readonly time: number;
}

export interface MetaRecord {
  readonly epoch: string;
  readonly createdAt: number;
  readonly encrypted: boolean;
}

/** What a batch record's header says, read without unsealing. */
export interface BatchHeader {
  readonly time: number;
  readonly count: number;
}

/** How a key is named in errors and authenticated in sealed records. */
export function keyText(table: Table, key: string | readonly [string, number]): string {
  return typeof key === 'string' ? `${table}/${key}` : `${table}/${key[0]}#${key[1]}`;
}

export function corrupt(where: string, reason: string, cause?: unknown): SluiceError {
  return new SluiceError('ERR_STORE_CORRUPT', `Stored record ${where} is corrupt: ${reason}`, {
    details: { record: where },
    ...(cause === undefined ? {} : { cause }),
  });
}

function plainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !ArrayBuffer.isView(value);
}

/**
 * Encodes and decodes records, sealing payloads when the store has a key. One instance
 * per store; stateless apart from the cipher.
 */
export class RecordCodec {
  readonly #cipher: RecordCipher | undefined;

  constructor(cipher: RecordCipher | undefined) {
    this.#cipher = cipher;
  }

  get sealed(): boolean {
    return this.#cipher !== undefined;
  }

  /** `seal` defaults to "when the store has a key"; the meta table passes false (it must be readable to check the key). */
  encodeObject(where: string, body: object, seal = this.#cipher !== undefined): Buffer {
    const plain = serializeBody(where, body);
    const flags = seal ? FLAG_SEALED : 0;
    const out = Buffer.allocUnsafe(HEADER_BYTES + (seal ? SEAL_OVERHEAD : 0) + plain.byteLength);
    out[0] = RECORD_VERSION;
    out[1] = flags;
    if (seal) this.#requireCipher(where).sealInto(plain, aad(where, flags, 0), out, HEADER_BYTES);
    else out.set(plain, HEADER_BYTES);
    return out;
  }

  decodeObject(where: string, bytes: Uint8Array | undefined, seal = this.#cipher !== undefined): unknown {
    if (bytes === undefined) return undefined;
    const flags = checkHeader(where, bytes, HEADER_BYTES);
    if (flags & FLAG_RAW) throw corrupt(where, 'an object record has the raw-bytes flag');
    const payload = this.#unseal(where, bytes, HEADER_BYTES, flags, aad(where, flags, 0), seal);
    try {
      return deserialize(payload);
    } catch (err) {
      throw corrupt(where, 'payload does not deserialize', err);
    }
  }

  /**
   * Hot path: one record for a whole batch. `firstSeq` is the record's key; the key
   * text is only built when sealing or failing.
   */
  encodeBatch(id: string, firstSeq: number, chunks: readonly ChunkData[], time: number): Buffer {
    const count = chunks.length;
    let raw = true;
    for (let i = 0; i < count; i++) {
      if (!(chunks[i] instanceof Uint8Array)) {
        raw = false;
        break;
      }
    }
    const sealed = this.#cipher !== undefined;
    const flags = (sealed ? FLAG_SEALED : 0) | (raw ? FLAG_RAW : 0);
    let plain: Uint8Array | undefined;
    let plainBytes: number;
    if (raw) {
      plainBytes = count * LENGTH_BYTES;
      for (let i = 0; i < count; i++) plainBytes += (chunks[i] as Uint8Array).byteLength;
    } else {
      plain = serializeBatch(id, firstSeq, chunks);
      plainBytes = plain.byteLength;
    }
    const out = Buffer.allocUnsafe(BATCH_HEADER_BYTES + (sealed ? SEAL_OVERHEAD : 0) + plainBytes);
    out[0] = LOG_RECORD_VERSION;
    out[1] = flags;
    out.writeDoubleLE(time, HEADER_BYTES);
    out.writeUInt32LE(count, HEADER_BYTES + TIME_BYTES);
    if (raw) {
      // Unsealed: the lengths and bytes go straight into the record, no intermediate copy.
      const target = sealed ? Buffer.allocUnsafe(plainBytes) : out;
      const base = sealed ? 0 : BATCH_HEADER_BYTES;
      let at = base + count * LENGTH_BYTES;
      for (let i = 0; i < count; i++) {
        const bytes = chunks[i] as Uint8Array;
        target.writeUInt32LE(bytes.byteLength, base + i * LENGTH_BYTES);
        target.set(bytes, at);
        at += bytes.byteLength;
      }
      if (sealed) plain = target;
    }
    if (sealed) {
      const where = keyText(TABLES.log, [id, firstSeq]);
      this.#requireCipher(where).sealInto(plain as Uint8Array, batchAad(where, flags, time, count), out, BATCH_HEADER_BYTES);
    } else if (!raw) {
      out.set(plain as Uint8Array, BATCH_HEADER_BYTES);
    }
    return out;
  }

  /** Every chunk of a batch record, in order (`count` of them, see batchHeader). */
  decodeBatch(where: string, bytes: Uint8Array): ChunkData[] {
    const { time, count } = this.batchHeader(where, bytes);
    const flags = bytes[1] as number;
    const payload = this.#unseal(where, bytes, BATCH_HEADER_BYTES, flags, batchAad(where, flags, time, count), this.#cipher !== undefined);
    if (flags & FLAG_RAW) return splitRaw(where, payload, count);
    let data: unknown;
    try {
      data = deserialize(payload);
    } catch (err) {
      throw corrupt(where, 'batch data does not deserialize', err);
    }
    if (!Array.isArray(data) || data.length !== count) throw corrupt(where, `batch data is not an array of ${count} chunks`);
    for (let i = 0; i < count; i++) {
      const chunk: unknown = data[i];
      // node:v8 gives a Buffer back for a Buffer: a top-level chunk is always a plain Uint8Array.
      if (chunk instanceof Uint8Array && chunk.constructor !== Uint8Array) data[i] = new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    }
    return data as ChunkData[];
  }

  /** Time and count of a batch record, read from its header without unsealing. */
  batchHeader(where: string, bytes: Uint8Array): BatchHeader {
    checkHeader(where, bytes, BATCH_HEADER_BYTES, LOG_RECORD_VERSION);
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    const time = view.getFloat64(HEADER_BYTES, true);
    if (!Number.isFinite(time)) throw corrupt(where, 'batch time is not a finite number');
    const count = view.getUint32(HEADER_BYTES + TIME_BYTES, true);
    if (count === 0 || count > MAX_BATCH_CHUNKS) throw corrupt(where, `batch count ${count} is out of range`);
    return { time, count };
  }

  #requireCipher(where: string): RecordCipher {
    if (this.#cipher === undefined) throw new SluiceError('ERR_STORE_KEY', `Record ${where} is encrypted and the store has no key`);
    return this.#cipher;
  }

  #unseal(where: string, bytes: Uint8Array, offset: number, flags: number, aad: string, expectSealed: boolean): Uint8Array {
    const sealed = (flags & FLAG_SEALED) !== 0;
    if (sealed !== expectSealed) {
      throw corrupt(where, sealed ? 'record is encrypted but the store is not' : 'record is not encrypted in an encrypted store');
    }
    const body = bytes.subarray(offset);
    if (!sealed) return body;
    try {
      return this.#requireCipher(where).open(body, aad);
    } catch (err) {
      throw corrupt(where, 'encrypted record fails authentication (tampered, moved or written with another key)', err);
    }
  }
}

function aad(where: string, flags: number, time: number): string {
  return `${where}\u0000${flags}\u0000${time}`;
}

function batchAad(where: string, flags: number, time: number, count: number): string {
  return `${where}\u0000${flags}\u0000${time}\u0000${count}`;
}

function checkHeader(where: string, bytes: Uint8Array, headerBytes: number, supported = RECORD_VERSION): number {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength < 1) throw corrupt(where, 'value is empty');
  const version = bytes[0];
  if (version !== supported) {
    throw new SluiceError('ERR_STORE_VERSION', `Stored record ${where} has version ${String(version)}; this sluice reads version ${supported}`, {
      details: { record: where, version, supported },
    });
  }
  if (bytes.byteLength < headerBytes) throw corrupt(where, `value is ${bytes.byteLength} bytes, shorter than its ${headerBytes}-byte header`);
  const flags = bytes[1] as number;
  if ((flags & ~KNOWN_FLAGS) !== 0) throw corrupt(where, `unknown flags 0x${flags.toString(16)}`);
  return flags;
}

/** A FLAG_RAW payload: `count` uint32 LE lengths, then the bytes; each chunk a plain Uint8Array view. */
function splitRaw(where: string, payload: Uint8Array, count: number): ChunkData[] {
  const table = count * LENGTH_BYTES;
  if (payload.byteLength < table) throw corrupt(where, `raw batch is ${payload.byteLength} bytes, shorter than its ${count} lengths`);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const out = new Array<ChunkData>(count);
  let at = table;
  for (let i = 0; i < count; i++) {
    const length = view.getUint32(i * LENGTH_BYTES, true);
    if (at + length > payload.byteLength) throw corrupt(where, `raw chunk ${i} runs past the end of the record`);
    out[i] = new Uint8Array(payload.buffer, payload.byteOffset + at, length);
    at += length;
  }
  if (at !== payload.byteLength) throw corrupt(where, `raw batch has ${payload.byteLength - at} bytes after its last chunk`);
  return out;
}

function serializeBody(where: string, body: object): Buffer {
  try {
    return serialize(body);
  } catch (err) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Record ${where} cannot be stored: ${String((err as Error)?.message ?? err)}`, { cause: err });
  }
}

function serializeBatch(id: string, firstSeq: number, chunks: readonly ChunkData[]): Buffer {
  try {
    return serialize(chunks);
  } catch {
    // Rare path: find the chunk that cannot be stored, to name its seq.
    for (let i = 0; i < chunks.length; i++) serializeChunk(id, firstSeq + i, chunks[i] as ChunkData);
    throw new SluiceError('ERR_CHUNK_INVALID', `Chunks ${firstSeq}..${firstSeq + chunks.length - 1} of stream ${id} cannot be stored`, {
      details: { streamId: id, seq: firstSeq },
    });
  }
}

function serializeChunk(id: string, seq: number, data: ChunkData): Buffer {
  try {
    return serialize(data);
  } catch (err) {
    throw new SluiceError('ERR_CHUNK_INVALID', `Chunk ${seq} of stream ${id} cannot be stored: ${String((err as Error)?.message ?? err)}`, {
      cause: err,
      details: { streamId: id, seq },
    });
  }
}

// ---- Body validation: a record that decodes but has the wrong shape is corrupt. ----

class Check {
  constructor(
    private readonly where: string,
    private readonly body: Record<string, unknown>,
  ) {}

  private bad(field: string, expected: string): never {
    throw corrupt(this.where, `field \`${field}\` is not ${expected}`);
  }

  string(field: string): string {
    const v = this.body[field];
    if (typeof v !== 'string' || v.length === 0) this.bad(field, 'a non-empty string');
    return v;
  }

  integer(field: string): number {
    const v = this.body[field];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) this.bad(field, 'a non-negative integer');
    return v;
  }

  time(field: string): number {
    const v = this.body[field];
    if (typeof v !== 'number' || !Number.isFinite(v)) this.bad(field, 'a finite number');
    return v;
  }

  oneOf<T extends string>(field: string, allowed: readonly T[]): T {
    const v = this.body[field];
    if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) this.bad(field, `one of ${allowed.join(', ')}`);
    return v as T;
  }

  present(field: string): unknown {
    if (!(field in this.body)) this.bad(field, 'present');
    return this.body[field];
  }

  object(field: string): Record<string, unknown> {
    const v = this.body[field];
    if (!plainObject(v)) this.bad(field, 'an object');
    return v;
  }

  optionalError(field: string): StoredError | undefined {
    const v = this.body[field];
    if (v === undefined) return undefined;
    if (!plainObject(v) || typeof v.code !== 'string' || typeof v.message !== 'string') this.bad(field, 'an error { code, message }');
    return { code: v.code, message: v.message };
  }

  optionalRetention(field: string): RetentionPolicy | undefined {
    const v = this.body[field];
    if (v === undefined) return undefined;
    if (!plainObject(v)) this.bad(field, 'a retention policy');
    const out: RetentionPolicy = {};
    for (const name of RETENTION_FIELDS) {
      const n = v[name];
      if (n === undefined) continue;
      if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) this.bad(`${field}.${name}`, 'a non-negative integer');
      out[name] = n;
    }
    return out;
  }
}

export const RETENTION_FIELDS = ['maxChunks', 'maxBytes', 'maxAgeMs'] as const;

function checker(where: string, body: unknown): Check {
  if (!plainObject(body)) throw corrupt(where, 'body is not an object');
  return new Check(where, body);
}

export function validateStreamBody(where: string, body: unknown): StreamBody {
  const c = checker(where, body);
  const error = c.optionalError('error');
  const retention = c.optionalRetention('retention');
  return {
    id: c.string('id'),
    plugin: c.string('plugin'),
    action: c.string('action'),
    params: c.present('params') as ChunkData,
    options: c.object('options') as StreamRecord['options'],
    durability: c.oneOf('durability', STORE_DURABILITIES),
    ...(retention === undefined ? {} : { retention }),
    status: c.oneOf('status', STREAM_STATUSES),
    ...(error === undefined ? {} : { error }),
    createdAt: c.time('createdAt'),
    updatedAt: c.time('updatedAt'),
    head: c.integer('head'),
  };
}

export function validateCheckpoint(where: string, body: unknown): CheckpointRecord {
  const c = checker(where, body);
  return { streamId: c.string('streamId'), epoch: c.string('epoch'), seq: c.integer('seq'), state: c.present('state') as ChunkData, time: c.time('time') };
}

export function validateMeta(where: string, body: unknown): MetaRecord {
  const c = checker(where, body);
  const encrypted = (body as Record<string, unknown>).encrypted;
  if (typeof encrypted !== 'boolean') throw corrupt(where, 'field `encrypted` is not a boolean');
  return { epoch: c.string('epoch'), createdAt: c.time('createdAt'), encrypted };
}

export function keycheckBody(): object {
  return { check: KEYCHECK_TEXT };
}

export function isKeycheckBody(body: unknown): boolean {
  return plainObject(body) && body.check === KEYCHECK_TEXT;
}
