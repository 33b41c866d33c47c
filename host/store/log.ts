/**
 * The chunk log: per stream, batch records keyed [streamId, firstSeq] (one record per
 * appended batch, records.ts has the layout), their chunks contiguous from the head
 * (the oldest seq retention kept) to the tail (the next seq). The head may fall inside
 * a record: retention trims chunk by chunk, deletes the records wholly below the head,
 * and readers skip the seqs below it in the record that holds it.
 *
 * Group commit: appendChunks issues one asynchronous LMDB put per batch and never a
 * synchronous commit; lmdb-js puts every write of one event turn into one transaction, so many
 * streams appending at once share a commit. The tail is reserved synchronously at call
 * time, so a caller may issue the next batch before the previous one committed.
 *
 * Invariant (no hole, no repeat): a batch starting past the tail is ERR_STORE_SEQ;
 * the part of a batch below the tail (a resumed plugin re-producing chunks it had
 * produced before its checkpoint... or after it) is dropped, and the rest appended.
 */
import { assertInteger } from '../../protocol/assert.js';
import type { ChunkData } from '../../protocol/chunk.js';
import { SluiceError } from '../../protocol/errors.js';
import type { Chunk } from '../types.js';
import { MAX_SEQ, type Engine, type LogKey } from './engine.js';
import { TABLES, corrupt, isFinished, keyText, type StreamBody } from './records.js';

/** One batch record of a stream's log, its header read without unsealing. */
export interface LogRecord {
  /** Seq of its first chunk (its key). */
  readonly first: number;
  readonly count: number;
  readonly time: number;
  readonly value: Uint8Array;
  readonly where: string;
}

/**
 * The stored bytes retention charges to chunk `index` of a record: an even share of the
 * record (header, lengths and encryption overhead included); the shares of a record add
 * up to its size exactly.
 */
export function chunkShare(record: LogRecord, index: number): number {
  const size = record.value.byteLength;
  return Math.floor((size * (index + 1)) / record.count) - Math.floor((size * index) / record.count);
}

/**
 * The records of stream `id` from the one holding `seq` (or the first after it), in
 * key order, at most `limit`. Synchronous, from the current read snapshot.
 */
export function* recordsFrom(engine: Engine, id: string, seq: number, limit: number): Generator<LogRecord> {
  let from = seq;
  for (const key of engine.log.getKeys({ start: [id, seq], end: [id, -1], reverse: true, limit: 1 })) {
    if (key[0] === id && typeof key[1] === 'number') from = key[1];
  }
  for (const { key, value } of engine.log.getRange({ start: [id, from], end: [id, MAX_SEQ], limit })) {
    if (key[0] !== id) return;
    const first = key[1];
    const where = keyText(TABLES.log, [id, first]);
    const { time, count } = engine.codec.batchHeader(where, value);
    yield { first, count, time, value, where };
  }
}

/** In-memory position of one stream's log; loaded from disk on first use. */
export interface LogState {
  readonly id: string;
  /** First kept seq as of the last committed trim. */
  head: number;
  /** Next seq to append, appends in flight included. */
  tail: number;
  /** Next seq after the last committed append. */
  committed: number;
  /** Stored bytes of [head, committed), once counted (retention by bytes counts them lazily). */
  bytes: number | undefined;
  /** The stream has a finished status: appends are refused. */
  finished: boolean;
  /** removeStream has started: appends are refused. */
  removed: boolean;
  /** The latest append's commit, so a fully deduplicated batch can wait for it. */
  lastCommit: Promise<void>;
}

export class ChunkLog {
  readonly #engine: Engine;
  readonly #states = new Map<string, LogState>();

  constructor(engine: Engine) {
    this.#engine = engine;
  }

  /** The stream's log position; ERR_STREAM_NOT_FOUND when the stream does not exist. */
  state(id: string): LogState {
    const known = this.#states.get(id);
    if (known !== undefined) {
      if (known.removed) throw notFound(id);
      return known;
    }
    const body = this.#engine.getStreamBody(id);
    if (body === undefined) throw notFound(id);
    const state = this.#load(body);
    this.#states.set(id, state);
    return state;
  }

  /** Forget a stream's position (after removal, or after a failed commit, to reload from disk). */
  evict(id: string): void {
    this.#states.delete(id);
  }

  /** Mark a stream finished or not; returns nothing and loads nothing if the stream is not in memory. */
  setFinished(id: string, finished: boolean): void {
    const state = this.#states.get(id);
    if (state !== undefined) state.finished = finished;
  }

  async append(id: string, firstSeq: number, chunks: readonly ChunkData[]): Promise<number> {
    this.#engine.assertOpen();
    assertInteger(firstSeq, 'firstSeq', 'ERR_INVALID_ARGUMENT', 0, MAX_SEQ);
    if (!Array.isArray(chunks)) throw new SluiceError('ERR_INVALID_ARGUMENT', 'Expected `chunks` to be an array');
    const state = this.state(id);
    if (state.finished) {
      throw new SluiceError('ERR_INVALID_ARGUMENT', `Stream ${id} is finished; its log takes no more chunks`, { details: { streamId: id } });
    }
    if (firstSeq > state.tail) {
      throw new SluiceError('ERR_STORE_SEQ', `Stream ${id}: chunk ${firstSeq} would leave a hole, the log's next seq is ${state.tail}`, {
        details: { streamId: id, expected: state.tail, got: firstSeq },
      });
    }
    const skip = state.tail - firstSeq;
    if (skip >= chunks.length) {
      await state.lastCommit;
      return 0;
    }
    // One record for the new part of the batch, encoded before the put: a chunk that
    // cannot be stored leaves no partial batch.
    const time = Date.now();
    const start = state.tail;
    const fresh = skip === 0 ? chunks : chunks.slice(skip);
    const value = this.#engine.codec.encodeBatch(id, start, fresh, time);
    const bytes = value.byteLength;
    const put = this.#engine.log.put([id, start], value);
    const end = start + fresh.length;
    state.tail = end;
    const commit = put.then(
      () => {
        if (end > state.committed) state.committed = end;
        if (state.bytes !== undefined) state.bytes += bytes;
        this.#engine.waiters.notify(id);
      },
      (err: unknown) => {
        // The in-memory tail ran ahead of the disk: forget it and reload on next use.
        if (this.#states.get(id) === state) this.evict(id);
        throw new SluiceError('ERR_STORE_IO', `Stream ${id}: committing chunks ${start}..${end - 1} failed: ${String((err as Error)?.message ?? err)}`, {
          cause: err,
        });
      },
    );
    state.lastCommit = commit.catch(() => undefined);
    await commit;
    return fresh.length;
  }

  /**
   * Committed chunks with seq >= max(fromSeq, head), at most `limit`, from the current
   * read snapshot. Seqs must run contiguously: a missing one is ERR_STORE_CORRUPT, never
   * a silent hole. The chunks before a bad record are returned with the error, so a
   * reader can deliver them before it fails.
   */
  readPage(id: string, fromSeq: number, limit: number, head: number): { chunks: Chunk[]; error?: SluiceError } {
    const chunks: Chunk[] = [];
    let expected = Math.max(fromSeq, head);
    try {
      // Each record holds at least one chunk: limit + 1 records cover a page.
      for (const record of recordsFrom(this.#engine, id, expected, limit + 1)) {
        if (record.first > expected) throw corrupt(record.where, `the log of stream ${id} has no chunk ${expected} before it`);
        if (record.first < expected && chunks.length > 0) throw corrupt(record.where, `it overlaps chunk ${expected - 1} of the record before it`);
        // The record before `expected` when it ends there (or the page starts past the tail).
        if (record.first + record.count <= expected) continue;
        const data = this.#engine.codec.decodeBatch(record.where, record.value);
        const stop = Math.min(record.count, expected - record.first + (limit - chunks.length));
        for (let i = expected - record.first; i < stop; i++) chunks.push({ seq: record.first + i, data: data[i] as ChunkData });
        expected = record.first + stop;
        if (chunks.length >= limit) break;
      }
    } catch (err) {
      if (!(err instanceof SluiceError)) throw err;
      return { chunks, error: err };
    }
    return { chunks };
  }

  #load(body: StreamBody): LogState {
    const id = body.id;
    let tail = body.head;
    for (const { key, value } of this.#engine.log.getRange({ start: [id, MAX_SEQ], end: [id, -1], reverse: true, limit: 1 })) {
      if (key[0] !== id || typeof key[1] !== 'number') continue;
      const { count } = this.#engine.codec.batchHeader(keyText(TABLES.log, key), value);
      tail = Math.max(tail, key[1] + count);
    }
    return {
      id,
      head: body.head,
      tail,
      committed: tail,
      bytes: undefined,
      finished: isFinished(body.status),
      removed: false,
      lastCommit: Promise.resolve(),
    };
  }
}

export function notFound(id: string): SluiceError {
  return new SluiceError('ERR_STREAM_NOT_FOUND', `Stream ${id} is not in the store`, { details: { streamId: id } });
}

export type { LogKey };
