/**
 * The durable store: stream records, checkpoints and chunk logs of durable streams, in
 * one LMDB environment (layout and record format in records.ts).
 *
 * Durability, as the product promises it ("survives a kill -9 of the host"):
 * - `createStream`, `setStatus`, `putCheckpoint` resolve once their write is flushed to
 *   disk. Each takes its flush promise right after issuing its write, so a later write
 *   never waits for an earlier flush: concurrent checkpoints share commits and flushes.
 * - `appendChunks` resolves once its batch is committed (group commit: every append of
 *   one event turn shares one transaction); committed data survives a process kill but
 *   not necessarily a power cut. `flushed()` waits for the disk. Even with lmdb's
 *   overlappingSync a commit waits for a disk sync (measured with lmdb 3.5: a 256 KiB
 *   put commits in ~1 ms, as long as its flush, vs ~0.5 ms with noSync), so an append
 *   costs about one sync whatever its size: bigger batches, not more records, make the
 *   log fast. Chunk seqs below a
 *   flushed checkpoint's seq are on disk when they were appended before it.
 * - Nothing on the hot path takes a synchronous commit (one synchronous transaction per
 *   open creates the store's epoch).
 */
import { copyChunk, type ChunkData } from '../../protocol/chunk.js';
import { assertInteger, assertObject, assertOneOf, assertString, fail, isObject } from '../../protocol/assert.js';
import { SluiceError, isSluiceError } from '../../protocol/errors.js';
import type { Chunk, ReadEvent, StreamStatus } from '../types.js';
import { Engine, MAX_SEQ } from './engine.js';
import { ChunkLog } from './log.js';
import { DataLock } from './lock.js';
import { resolveStoreOptions, type StoreOptions } from './options.js';
import { readStream, validateReadOptions, type ReadOptions } from './reader.js';
import {
  RETENTION_FIELDS,
  STORE_DURABILITIES,
  STREAM_STATUSES,
  TABLES,
  UNFINISHED_STATUSES,
  corrupt,
  isFinished,
  keyText,
  validateCheckpoint,
  validateStreamBody,
  type CheckpointRecord,
  type RetentionPolicy,
  type StoreDurability,
  type StoredError,
  type StreamBody,
  type StreamRecord,
} from './records.js';
import { Maintenance, type CleanupOptions, type CleanupResult, type RetentionResult } from './retention.js';

export type { StoreOptions } from './options.js';
export { STORE_DEFAULTS, STORE_KEY_ENV } from './options.js';
export type { ReadOptions } from './reader.js';
export type { CleanupOptions, CleanupResult, RetentionResult } from './retention.js';
export type { CheckpointRecord, RetentionPolicy, StoreDurability, StoredError, StreamRecord } from './records.js';
export { UNFINISHED_STATUSES, isFinished } from './records.js';

const MAX_ID_LENGTH = 256;
// Ids are LMDB key parts: control characters would sort before the key separator.
const CONTROL_CHARS = /[\u0000-\u001f\u007f]/;

export interface CreateStreamInit {
  id: string;
  plugin: string;
  action: string;
  /** JSON-compatible data or Uint8Array. Default null. */
  params?: ChunkData;
  /** Serializable stream options (sandbox, limits, window, priority...); no AbortSignal. */
  options?: { [key: string]: ChunkData };
  durability: StoreDurability;
  retention?: RetentionPolicy;
  /** Initial status. Default 'queued'. */
  status?: 'queued' | 'running';
}

export interface CheckpointInit {
  streamId: string;
  /** The seq the action resumes from (chunks below it were produced). */
  seq: number;
  state: ChunkData;
}

export interface ListStreamsFilter {
  status?: StreamStatus | readonly StreamStatus[];
}

/**
 * The durable store of sluice. Open one per data folder; close it when done.
 *
 * @example
 * ```ts
 * await using store = await Store.open({ path: './data' });
 * await store.createStream({ id: 's1', plugin: 'echo', action: 'count', params: { n: 3 }, durability: 'log' });
 * await store.appendChunks('s1', 0, ['a', 'b', 'c']);
 * await store.setStatus('s1', 'done');
 * for await (const event of store.read('s1')) console.log(event); // 3 chunks, then { type: 'end', status: 'done' }
 * ```
 */
export class Store implements AsyncDisposable {
  readonly #engine: Engine;
  readonly #lock: DataLock | undefined;
  readonly #log: ChunkLog;
  readonly #maintenance: Maintenance;
  #timer: NodeJS.Timeout | undefined;
  #maintaining = false;
  #closing: Promise<void> | undefined;

  private constructor(engine: Engine, lock: DataLock | undefined) {
    this.#engine = engine;
    this.#lock = lock;
    this.#log = new ChunkLog(engine);
    this.#maintenance = new Maintenance(engine, this.#log);
    const interval = engine.options.maintenanceIntervalMs;
    if (interval > 0) {
      this.#timer = setInterval(() => void this.#maintain(), interval);
      this.#timer.unref();
    }
  }

  /**
   * Open (or create) the store in `options.path`. Throws ERR_STORE_KEY for a wrong or
   * missing key, ERR_STORE_CORRUPT / ERR_STORE_VERSION for unreadable metadata, and
   * with `exclusive`, ERR_STORE_LOCKED while another host has the folder.
   */
  static async open(options: StoreOptions): Promise<Store> {
    const resolved = resolveStoreOptions(options);
    const lock = resolved.exclusive ? await DataLock.acquire(resolved.path) : undefined;
    try {
      return new Store(await Engine.open(resolved), lock);
    } catch (err) {
      await lock?.release();
      throw err;
    }
  }

  /** Random id made when the store was created; a re-created folder has another. */
  get epoch(): string {
    return this.#engine.epoch;
  }

  get path(): string {
    return this.#engine.options.path;
  }

  get encrypted(): boolean {
    return this.#engine.codec.sealed;
  }

  get closed(): boolean {
    return this.#engine.closed;
  }

  // ---- Stream records ----

  /** Record a new durable stream; resolves once flushed. An existing id is ERR_INVALID_ARGUMENT. */
  async createStream(init: CreateStreamInit): Promise<StreamRecord> {
    this.#engine.assertOpen();
    const body = validateCreate(init);
    const id = body.id;
    if (this.#engine.streams.doesExist(id)) throw exists(id);
    for (const key of this.#engine.log.getKeys({ start: [id, 0], end: [id, MAX_SEQ], limit: 1 })) {
      if (key[0] === id) throw corrupt(keyText(TABLES.log, key), `stream ${id} does not exist but its log has chunks`);
    }
    let raced = false;
    const value = this.#engine.encodeStreamBody(body);
    await this.#engine.transaction(() => {
      raced = this.#engine.streams.doesExist(id);
      if (!raced) void this.#engine.streams.put(id, value);
    });
    if (raced) throw exists(id);
    await this.#engine.flushed();
    // What was stored, as getStream will return it (plain objects, not the validated copies).
    return publicRecord(this.#engine.decodeStreamBody(id, value));
  }

  getStream(id: string): StreamRecord | undefined {
    this.#engine.assertOpen();
    assertStreamId(id, 'id');
    const body = this.#engine.getStreamBody(id);
    return body === undefined ? undefined : publicRecord(body);
  }

  /** Every stream, or those with the given status(es): `listStreams({ status: UNFINISHED_STATUSES })`. */
  listStreams(filter: ListStreamsFilter = {}): StreamRecord[] {
    this.#engine.assertOpen();
    assertObject(filter, 'filter', 'ERR_INVALID_ARGUMENT');
    let wanted: readonly StreamStatus[] | undefined;
    if (filter.status !== undefined) {
      const given: unknown = filter.status;
      const list: unknown = typeof given === 'string' ? [given] : given;
      if (!Array.isArray(list)) fail('ERR_INVALID_ARGUMENT', 'status', 'a status or an array of statuses', given);
      for (const status of list) assertOneOf(status, STREAM_STATUSES, 'status', 'ERR_INVALID_ARGUMENT');
      wanted = list as StreamStatus[];
    }
    const out: StreamRecord[] = [];
    for (const { key, value } of this.#engine.streams.getRange({})) {
      const where = keyText(TABLES.streams, key);
      const body = validateStreamBody(where, this.#engine.codec.decodeObject(where, value));
      if (wanted === undefined || wanted.includes(body.status)) out.push(publicRecord(body));
    }
    return out;
  }

  /** Set the status (and error); resolves once flushed. A finished status refuses further appends and ends readers once drained. */
  async setStatus(id: string, status: StreamStatus, error?: StoredError | SluiceError): Promise<StreamRecord> {
    this.#engine.assertOpen();
    assertStreamId(id, 'id');
    assertOneOf(status, STREAM_STATUSES, 'status', 'ERR_INVALID_ARGUMENT');
    const stored = error === undefined ? undefined : toStoredError(error);
    const now = Date.now();
    this.#log.setFinished(id, isFinished(status));
    const body = await this.#engine.updateStream(id, (old) => {
      const { error: _dropped, ...rest } = old;
      return stored === undefined ? { ...rest, status, updatedAt: now } : { ...rest, status, error: stored, updatedAt: now };
    });
    if (body === undefined) throw notFound(id);
    this.#engine.waiters.notify(id);
    await this.#engine.flushed();
    return publicRecord(body);
  }

  /** Remove a stream with its checkpoint and log (in small batches). Resolves false when there was no such stream. */
  async removeStream(id: string): Promise<boolean> {
    this.#engine.assertOpen();
    assertStreamId(id, 'id');
    return this.#maintenance.removeStream(id);
  }

  // ---- Checkpoints ----

  /** Store the stream's latest checkpoint; resolves once flushed to disk. */
  async putCheckpoint(init: CheckpointInit): Promise<CheckpointRecord> {
    this.#engine.assertOpen();
    assertObject(init, 'checkpoint', 'ERR_INVALID_ARGUMENT');
    assertStreamId(init.streamId, 'streamId');
    assertInteger(init.seq, 'seq', 'ERR_INVALID_ARGUMENT', 0, MAX_SEQ);
    if (init.state === undefined) fail('ERR_INVALID_ARGUMENT', 'state', 'JSON-compatible data or a Uint8Array', init.state);
    this.#log.state(init.streamId); // ERR_STREAM_NOT_FOUND
    const record: CheckpointRecord = { streamId: init.streamId, epoch: this.#engine.epoch, seq: init.seq, state: init.state, time: Date.now() };
    const value = this.#engine.codec.encodeObject(keyText(TABLES.checkpoints, init.streamId), record);
    const committed = this.#engine.checkpoints.put(init.streamId, value);
    const flushed = this.#engine.flushed();
    await committed;
    await flushed;
    return record;
  }

  getCheckpoint(streamId: string): CheckpointRecord | undefined {
    this.#engine.assertOpen();
    assertStreamId(streamId, 'streamId');
    const where = keyText(TABLES.checkpoints, streamId);
    const bytes = this.#engine.checkpoints.get(streamId);
    if (bytes === undefined) return undefined;
    const record = validateCheckpoint(where, this.#engine.codec.decodeObject(where, bytes));
    if (record.streamId !== streamId) throw corrupt(where, `it names stream ${record.streamId}`);
    return record;
  }

  // ---- Chunk log ----

  /**
   * Append chunks `firstSeq ..`; resolves with how many were new once they are
   * committed. Seqs below the log's tail are dropped (a resumed plugin's re-produced
   * chunks); `firstSeq` past the tail is ERR_STORE_SEQ. Chunks must already be valid
   * ChunkData (the host copies plugin output with copyChunk); they are not re-checked.
   */
  appendChunks(streamId: string, firstSeq: number, chunks: readonly ChunkData[]): Promise<number> {
    try {
      assertStreamId(streamId, 'streamId');
      return this.#log.append(streamId, firstSeq, chunks);
    } catch (err) {
      return Promise.reject(err);
    }
  }

  /** Resolves when every write issued so far is flushed to disk. */
  flushed(): Promise<void> {
    this.#engine.assertOpen();
    return this.#engine.flushed();
  }

  /** The next seq to append (appends in flight included). */
  logTail(streamId: string): number {
    this.#engine.assertOpen();
    assertStreamId(streamId, 'streamId');
    return this.#log.state(streamId).tail;
  }

  /** The oldest seq retention kept (0 until something was trimmed). */
  logHead(streamId: string): number {
    this.#engine.assertOpen();
    assertStreamId(streamId, 'streamId');
    return this.#log.state(streamId).head;
  }

  /** Up to `limit` committed chunks with seq >= max(fromSeq, head), synchronously. */
  readRange(streamId: string, fromSeq: number, limit: number): Chunk[] {
    this.#engine.assertOpen();
    assertStreamId(streamId, 'streamId');
    assertInteger(fromSeq, 'fromSeq', 'ERR_INVALID_ARGUMENT', 0, MAX_SEQ);
    assertInteger(limit, 'limit', 'ERR_INVALID_ARGUMENT', 1, 100_000);
    const body = this.#engine.getStreamBody(streamId);
    if (body === undefined) throw notFound(streamId);
    const page = this.#log.readPage(streamId, fromSeq, limit, body.head);
    if (page.error !== undefined) throw page.error;
    return page.chunks;
  }

  /**
   * Read a stream from `fromSeq`: its chunks, live ones included, then `end` once it is
   * finished and drained; `gap` where retention removed chunks; `reset` first when
   * `epoch` is not this store's. Pages are read as the consumer pulls.
   */
  read(streamId: string, options: ReadOptions = {}): AsyncIterable<ReadEvent> {
    this.#engine.assertOpen();
    assertStreamId(streamId, 'streamId');
    assertObject(options, 'options', 'ERR_INVALID_ARGUMENT');
    validateReadOptions(options);
    return readStream(this.#engine, this.#log, streamId, options);
  }

  // ---- Upkeep ----

  /** Apply every stream's retention policy once (the maintenance timer calls this). */
  runRetention(): Promise<RetentionResult> {
    this.#engine.assertOpen();
    return this.#maintenance.runRetention();
  }

  /** Remove finished streams last updated more than `finishedOlderThanMs` ago. */
  cleanup(options: CleanupOptions): Promise<CleanupResult> {
    this.#engine.assertOpen();
    return this.#maintenance.cleanup(options);
  }

  async #maintain(): Promise<void> {
    if (this.#maintaining || this.#engine.closed) return;
    this.#maintaining = true;
    try {
      await this.#maintenance.runRetention();
      const age = this.#engine.options.finishedRetentionMs;
      if (age !== undefined && !this.#engine.closed) await this.#maintenance.cleanup({ finishedOlderThanMs: age });
    } catch (err) {
      if (!isSluiceError(err, 'ERR_STORE_CLOSED')) this.#engine.options.onMaintenanceError(err);
    } finally {
      this.#maintaining = false;
    }
  }

  // ---- Lifecycle ----

  /** Stop upkeep, wake readers (they reject with ERR_STORE_CLOSED), flush and close. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    try {
      await this.#engine.close(() => this.#maintenance.idle());
    } finally {
      await this.#lock?.release();
    }
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

function notFound(id: string): SluiceError {
  return new SluiceError('ERR_STREAM_NOT_FOUND', `Stream ${id} is not in the store`, { details: { streamId: id } });
}

function exists(id: string): SluiceError {
  return new SluiceError('ERR_INVALID_ARGUMENT', `Stream ${id} already exists in the store`, { details: { streamId: id } });
}

function assertStreamId(value: unknown, field: string): asserts value is string {
  assertString(value, field, 'ERR_INVALID_ARGUMENT', MAX_ID_LENGTH);
  if (CONTROL_CHARS.test(value)) fail('ERR_INVALID_ARGUMENT', field, 'a string without control characters', value);
}

function publicRecord(body: StreamBody): StreamRecord {
  const { head: _head, ...record } = body;
  return record;
}

function toStoredError(error: unknown): StoredError {
  if (!isObject(error) || typeof error.code !== 'string' || typeof error.message !== 'string') {
    fail('ERR_INVALID_ARGUMENT', 'error', 'an error with string `code` and `message`', error);
  }
  return { code: error.code, message: error.message };
}

function validData(value: unknown, field: string): ChunkData {
  try {
    return copyChunk(value, undefined, field).data;
  } catch (err) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', (err as Error).message, { cause: err, details: { field } });
  }
}

function validateRetention(value: unknown): RetentionPolicy | undefined {
  if (value === undefined) return undefined;
  assertObject(value, 'retention', 'ERR_INVALID_ARGUMENT');
  const out: RetentionPolicy = {};
  for (const key of Object.keys(value)) {
    if (!(RETENTION_FIELDS as readonly string[]).includes(key)) fail('ERR_INVALID_ARGUMENT', `retention.${key}`, 'not set (unknown field)', value[key]);
  }
  for (const name of RETENTION_FIELDS) {
    const n = value[name];
    if (n === undefined) continue;
    assertInteger(n, `retention.${name}`, 'ERR_INVALID_ARGUMENT', 0);
    out[name] = n;
  }
  return out;
}

function validateCreate(init: CreateStreamInit): StreamBody {
  assertObject(init, 'stream', 'ERR_INVALID_ARGUMENT');
  assertStreamId(init.id, 'id');
  assertString(init.plugin, 'plugin', 'ERR_INVALID_ARGUMENT');
  assertString(init.action, 'action', 'ERR_INVALID_ARGUMENT');
  assertOneOf(init.durability, STORE_DURABILITIES, 'durability', 'ERR_INVALID_ARGUMENT');
  const status = init.status ?? 'queued';
  assertOneOf(status, UNFINISHED_STATUSES, 'status', 'ERR_INVALID_ARGUMENT');
  const options = init.options ?? {};
  assertObject(options, 'options', 'ERR_INVALID_ARGUMENT');
  const retention = validateRetention(init.retention);
  const now = Date.now();
  return {
    id: init.id,
    plugin: init.plugin,
    action: init.action,
    params: validData(init.params ?? null, 'params'),
    options: validData(options, 'options') as StreamRecord['options'],
    durability: init.durability,
    ...(retention === undefined ? {} : { retention }),
    status,
    createdAt: now,
    updatedAt: now,
    head: 0,
  };
}
