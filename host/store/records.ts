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
 * | `log`         | `[id, seq]`      | chunk record                   |
 *
 * Every value starts with a version byte (RECORD_VERSION) and a flags byte:
 *
 *     object record: [version][flags][payload]
 *     chunk record:  [version][flags][time: float64 LE][payload]
 *
 * The payload is the body in V8's serialization format (node:v8, documented as
 * backward-compatible and safe to store; it round-trips nested Uint8Arrays and keeps a
 * `__proto__` key as data, which msgpackr renames), or for a chunk whose data is a
 * Uint8Array the raw bytes (FLAG_RAW), so binary vs JSON data is unambiguous. With a
 * key, the payload is sealed with AES-256-GCM (FLAG_SEALED, see crypto.ts); the table,
 * the key, the flags and the chunk time are authenticated with it.
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
export const FLAG_SEALED = 0b01;
export const FLAG_RAW = 0b10;
const KNOWN_FLAGS = FLAG_SEALED | FLAG_RAW;
const HEADER_BYTES = 2;
const TIME_BYTES = 8;
const CHUNK_HEADER_BYTES = HEADER_BYTES + TIME_BYTES;

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

export interface DecodedChunk {
  readonly data: ChunkData;
  readonly time: number;
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
    const payload = this.#unseal(where, bytes, HEADER_BYTES, flags, 0, seal);
    try {
      return deserialize(payload);
    } catch (err) {
      throw corrupt(where, 'payload does not deserialize', err);
    }
  }

  /** Hot path: the key text is only built when sealing or failing. */
  encodeChunk(id: string, seq: number, data: ChunkData, time: number): Buffer {
    let flags = this.#cipher === undefined ? 0 : FLAG_SEALED;
    let plain: Uint8Array;
    if (data instanceof Uint8Array) {
      flags |= FLAG_RAW;
      plain = data;
    } else {
      plain = serializeChunk(id, seq, data);
    }
    const sealed = (flags & FLAG_SEALED) !== 0;
    const out = Buffer.allocUnsafe(CHUNK_HEADER_BYTES + (sealed ? SEAL_OVERHEAD : 0) + plain.byteLength);
    out[0] = RECORD_VERSION;
    out[1] = flags;
    out.writeDoubleLE(time, HEADER_BYTES);
    if (sealed) {
      const where = keyText(TABLES.log, [id, seq]);
      this.#requireCipher(where).sealInto(plain, aad(where, flags, time), out, CHUNK_HEADER_BYTES);
    } else {
      out.set(plain, CHUNK_HEADER_BYTES);
    }
    return out;
  }

  decodeChunk(where: string, bytes: Uint8Array): DecodedChunk {
    const flags = checkHeader(where, bytes, CHUNK_HEADER_BYTES);
    const time = chunkTimeUnchecked(bytes);
    if (!Number.isFinite(time)) throw corrupt(where, 'chunk time is not a finite number');
    const payload = this.#unseal(where, bytes, CHUNK_HEADER_BYTES, flags, time, this.#cipher !== undefined);
    if (flags & FLAG_RAW) {
      // A plain Uint8Array, never a Buffer: what the plugin yielded is what the reader gets.
      return { data: new Uint8Array(payload.buffer, payload.byteOffset, payload.byteLength), time };
    }
    let data: unknown;
    try {
      data = deserialize(payload);
    } catch (err) {
      throw corrupt(where, 'chunk data does not deserialize', err);
    }
    if (data instanceof Uint8Array) throw corrupt(where, 'serialized chunk data is a Uint8Array without the raw-bytes flag');
    return { data: data as ChunkData, time };
  }

  /** The append time of a chunk record, read from its header without unsealing. */
  chunkTime(where: string, bytes: Uint8Array): number {
    checkHeader(where, bytes, CHUNK_HEADER_BYTES);
    return chunkTimeUnchecked(bytes);
  }

  #requireCipher(where: string): RecordCipher {
    if (this.#cipher === undefined) throw new SluiceError('ERR_STORE_KEY', `Record ${where} is encrypted and the store has no key`);
    return this.#cipher;
  }

  #unseal(where: string, bytes: Uint8Array, offset: number, flags: number, time: number, expectSealed: boolean): Uint8Array {
    const sealed = (flags & FLAG_SEALED) !== 0;
    if (sealed !== expectSealed) {
      throw corrupt(where, sealed ? 'record is encrypted but the store is not' : 'record is not encrypted in an encrypted store');
    }
    const body = bytes.subarray(offset);
    if (!sealed) return body;
    try {
      return this.#requireCipher(where).open(body, aad(where, flags, time));
    } catch (err) {
      throw corrupt(where, 'encrypted record fails authentication (tampered, moved or written with another key)', err);
    }
  }
}

function aad(where: string, flags: number, time: number): string {
  return `${where}\u0000${flags}\u0000${time}`;
}

function checkHeader(where: string, bytes: Uint8Array, headerBytes: number): number {
  if (!(bytes instanceof Uint8Array) || bytes.byteLength < 1) throw corrupt(where, 'value is empty');
  const version = bytes[0];
  if (version !== RECORD_VERSION) {
    throw new SluiceError('ERR_STORE_VERSION', `Stored record ${where} has version ${String(version)}; this sluice reads version ${RECORD_VERSION}`, {
      details: { record: where, version, supported: RECORD_VERSION },
    });
  }
  if (bytes.byteLength < headerBytes) throw corrupt(where, `value is ${bytes.byteLength} bytes, shorter than its ${headerBytes}-byte header`);
  const flags = bytes[1] as number;
  if ((flags & ~KNOWN_FLAGS) !== 0) throw corrupt(where, `unknown flags 0x${flags.toString(16)}`);
  return flags;
}

function chunkTimeUnchecked(bytes: Uint8Array): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength).getFloat64(HEADER_BYTES, true);
}

function serializeBody(where: string, body: object): Buffer {
  try {
    return serialize(body);
  } catch (err) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Record ${where} cannot be stored: ${String((err as Error)?.message ?? err)}`, { cause: err });
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
