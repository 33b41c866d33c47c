/**
 * The chunk log: per stream, chunks keyed [streamId, seq], contiguous from the head
 * (the oldest seq retention kept) to the tail (the next seq).
 *
 * Group commit: appendChunks issues asynchronous LMDB puts and never a synchronous
 * commit; lmdb-js puts every write of one event turn into one transaction, so many
 * streams appending at once share a commit. The tail is reserved synchronously at call
 * time, so a caller may issue the next batch before the previous one committed.
 *
 * Invariant (no hole, no repeat): a batch starting past the tail is ERR_STORE_SEQ;
 * the part of a batch below the tail (a resumed plugin re-producing chunks it had
 * produced before its checkpoint... or after it) is dropped, and the rest appended.
 */
import type { Buffer } from 'node:buffer';
import { assertInteger } from '../../protocol/assert.js';
import type { ChunkData } from '../../protocol/chunk.js';
import { SluiceError } from '../../protocol/errors.js';
import type { Chunk } from '../types.js';
import { MAX_SEQ, type Engine, type LogKey } from './engine.js';
import { TABLES, corrupt, isFinished, keyText, type StreamBody } from './records.js';

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
    // Encode everything before the first put, so a chunk that cannot be stored leaves no partial batch.
    const time = Date.now();
    const values: Buffer[] = new Array<Buffer>(chunks.length - skip);
    let bytes = 0;
    for (let i = skip; i < chunks.length; i++) {
      const value = this.#engine.codec.encodeChunk(id, firstSeq + i, chunks[i] as ChunkData, time);
      values[i - skip] = value;
      bytes += value.byteLength;
    }
    const start = state.tail;
    let last: Promise<boolean> | undefined;
    for (let i = 0; i < values.length; i++) last = this.#engine.log.put([id, start + i], values[i] as Buffer);
    const end = start + values.length;
    state.tail = end;
    const commit = (last as Promise<boolean>).then(
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
    return values.length;
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
      for (const { key, value } of this.#engine.log.getRange({ start: [id, expected], end: [id, MAX_SEQ], limit })) {
        const [keyId, seq] = key;
        if (keyId !== id) break;
        const where = keyText(TABLES.log, [id, seq]);
        if (seq !== expected) throw corrupt(where, `the log of stream ${id} has no chunk ${expected} before it`);
        chunks.push({ seq, data: this.#engine.codec.decodeChunk(where, value).data });
        expected++;
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
    for (const key of this.#engine.log.getKeys({ start: [id, MAX_SEQ], end: [id, -1], reverse: true, limit: 1 })) {
      if (key[0] === id && typeof key[1] === 'number') tail = Math.max(tail, key[1] + 1);
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
