/**
 * Background upkeep: trimming chunk logs by their retention policy, removing streams,
 * and cleaning up finished streams by age.
 *
 * Everything runs in small asynchronous transactions (maintenanceBatchSize entries
 * each), awaited one after the other, so appends and readers interleave between
 * batches; nothing here takes a synchronous commit. A trim moves the stream's recorded
 * head and deletes the batch records wholly below it in the same transaction, so a
 * reader sees either both or neither and reports the removed range as a `gap`.
 *
 * Trims are exact to the chunk: the head may fall inside a batch record, which stays on
 * disk (readers skip the seqs below the head) until its last chunk is trimmed. maxBytes
 * charges each chunk an even share of its record's bytes (log.ts `chunkShare`), so the
 * bytes on disk exceed the policy by at most the kept part of one record. maxAgeMs is
 * per record: a batch's chunks share their append time.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { assertInteger } from '../../protocol/assert.js';
import { SluiceError, isSluiceError } from '../../protocol/errors.js';
import { MAX_SEQ, type Engine } from './engine.js';
import { chunkShare, recordsFrom, type ChunkLog, type LogState } from './log.js';
import { TABLES, isFinished, keyText, validateStreamBody, type RetentionPolicy, type StreamBody } from './records.js';

export interface RetentionResult {
  /** Chunks removed. */
  trimmed: number;
  /** Streams that had something removed. */
  streams: number;
}

export interface CleanupOptions {
  /** Remove streams that finished (done/failed/cancelled) and were last updated more than this many ms ago. */
  finishedOlderThanMs: number;
}

export interface CleanupResult {
  removed: number;
}

export class Maintenance {
  readonly #engine: Engine;
  readonly #log: ChunkLog;
  readonly #removals = new Map<string, Promise<boolean>>();
  #retention: Promise<RetentionResult> | undefined;

  constructor(engine: Engine, log: ChunkLog) {
    this.#engine = engine;
    this.#log = log;
  }

  get #batch(): number {
    return this.#engine.options.maintenanceBatchSize;
  }

  /**
   * Apply every stream's retention policy once. Errors of single streams are collected,
   * the first is thrown at the end. A call while a run is in flight joins that run
   * (runs never overlap: the byte counts assume one trimmer).
   */
  runRetention(now = Date.now()): Promise<RetentionResult> {
    if (this.#retention !== undefined) return this.#retention;
    const run = this.#runRetention(now).finally(() => {
      this.#retention = undefined;
    });
    this.#retention = run;
    return run;
  }

  /** Settles when the retention run in flight (if any) has stopped. */
  async idle(): Promise<void> {
    await Promise.allSettled([this.#retention, ...this.#removals.values()]);
  }

  async #runRetention(now: number): Promise<RetentionResult> {
    const result: RetentionResult = { trimmed: 0, streams: 0 };
    const errors: unknown[] = [];
    for await (const body of this.#eachStream(errors)) {
      if (body.durability !== 'log' || body.retention === undefined) continue;
      try {
        const n = await this.#trimStream(body.id, body.retention, now);
        if (n > 0) {
          result.trimmed += n;
          result.streams++;
        }
      } catch (err) {
        if (isSluiceError(err, 'ERR_STREAM_NOT_FOUND')) continue; // removed meanwhile
        errors.push(err);
      }
    }
    throwCollected(errors, 'retention');
    return result;
  }

  /** Remove finished streams older than the given age; returns how many were removed. */
  async cleanup(options: CleanupOptions, now = Date.now()): Promise<CleanupResult> {
    assertInteger(options?.finishedOlderThanMs, 'finishedOlderThanMs', 'ERR_INVALID_ARGUMENT', 0);
    const cutoff = now - options.finishedOlderThanMs;
    const errors: unknown[] = [];
    let removed = 0;
    for await (const body of this.#eachStream(errors)) {
      if (!isFinished(body.status) || body.updatedAt > cutoff) continue;
      try {
        if (await this.removeStream(body.id)) removed++;
      } catch (err) {
        errors.push(err);
      }
    }
    throwCollected(errors, 'cleanup');
    return { removed };
  }

  /** Trim one stream's log head by `policy`, batch by batch; returns the chunks removed. */
  async #trimStream(id: string, policy: RetentionPolicy, now: number): Promise<number> {
    let total = 0;
    for (;;) {
      if (this.#engine.closed) return total;
      const state = this.#log.state(id);
      if (policy.maxBytes !== undefined && state.bytes === undefined) await this.#countBytes(state);
      if (state.removed || this.#engine.closed) return total;
      const { newHead, removedBytes, drop } = this.#plan(state, policy, now);
      if (newHead <= state.head) return total;
      const oldHead = state.head;
      let applied = false;
      await this.#engine.transaction(() => {
        const body = this.#engine.getStreamBody(id);
        if (body === undefined || body.head !== oldHead) return;
        for (const first of drop) void this.#engine.log.remove([id, first]);
        void this.#engine.streams.put(id, this.#engine.encodeStreamBody({ ...body, head: newHead }));
        applied = true;
      });
      if (!applied) return total;
      state.head = newHead;
      if (state.bytes !== undefined) state.bytes -= removedBytes;
      total += newHead - oldHead;
      await nextTurn();
    }
  }

  /**
   * Remove a stream, its checkpoint and its log. The log goes first, in batches that
   * also move the head (a crash midway leaves a consistent, shorter stream), the
   * record and checkpoint last, in one transaction. Concurrent calls share one run.
   */
  removeStream(id: string): Promise<boolean> {
    const running = this.#removals.get(id);
    if (running !== undefined) return running;
    const removal = this.#remove(id).finally(() => this.#removals.delete(id));
    this.#removals.set(id, removal);
    return removal;
  }

  async #remove(id: string): Promise<boolean> {
    let state: LogState;
    try {
      state = this.#log.state(id);
    } catch (err) {
      if (isSluiceError(err, 'ERR_STREAM_NOT_FOUND')) return false;
      throw err;
    }
    state.removed = true; // appends are refused from here on
    this.#engine.waiters.notify(id);
    await state.lastCommit;
    for (;;) {
      this.#engine.assertOpen();
      let end = -1;
      const keys: number[] = [];
      for (const { key, value } of this.#engine.log.getRange({ start: [id, 0], end: [id, MAX_SEQ], limit: this.#batch })) {
        if (key[0] !== id) break;
        keys.push(key[1]);
        end = key[1] + this.#engine.codec.batchHeader(keyText(TABLES.log, key), value).count;
      }
      if (keys.length === 0) break;
      await this.#engine.transaction(() => {
        for (const first of keys) void this.#engine.log.remove([id, first]);
        const body = this.#engine.getStreamBody(id);
        if (body !== undefined && body.head < end) void this.#engine.streams.put(id, this.#engine.encodeStreamBody({ ...body, head: end }));
      });
      await nextTurn();
    }
    await this.#engine.transaction(() => {
      void this.#engine.streams.remove(id);
      void this.#engine.checkpoints.remove(id);
    });
    this.#log.evict(id);
    this.#engine.waiters.notify(id);
    return true;
  }

  /**
   * The new head by `policy`, looking at most maintenanceBatchSize records from the
   * head; `drop` lists the records wholly below it.
   */
  #plan(state: LogState, policy: RetentionPolicy, now: number): { newHead: number; removedBytes: number; drop: number[] } {
    const keepFrom = policy.maxChunks === undefined ? 0 : state.committed - policy.maxChunks;
    const cutoff = policy.maxAgeMs === undefined ? -Infinity : now - policy.maxAgeMs;
    const maxBytes = policy.maxBytes;
    const stored = state.bytes ?? 0;
    let newHead = state.head;
    let removedBytes = 0;
    const drop: number[] = [];
    for (const record of recordsFrom(this.#engine, state.id, state.head, this.#batch)) {
      if (record.first >= state.committed) break;
      const expired = record.time < cutoff;
      const end = Math.min(record.first + record.count, state.committed);
      let seq = Math.max(record.first, newHead);
      for (; seq < end; seq++) {
        const old = expired || seq < keepFrom || (maxBytes !== undefined && stored - removedBytes > maxBytes);
        if (!old) break;
        removedBytes += chunkShare(record, seq - record.first);
      }
      newHead = Math.max(newHead, seq);
      if (seq < record.first + record.count) break;
      drop.push(record.first);
    }
    return { newHead, removedBytes, drop };
  }

  /**
   * Count the stored bytes of [head, committed) once, a batch of records per event
   * turn. Appends that commit meanwhile move `committed` and are counted by a later
   * batch; the last batch ends synchronously at the current `committed`, after which
   * append callbacks add their own bytes.
   */
  async #countBytes(state: LogState): Promise<void> {
    let from = state.head;
    let bytes = 0;
    for (;;) {
      let counted = 0;
      for (const record of recordsFrom(this.#engine, state.id, from, this.#batch)) {
        if (record.first >= state.committed) break;
        const end = record.first + record.count;
        for (let seq = Math.max(record.first, from); seq < end; seq++) bytes += chunkShare(record, seq - record.first);
        from = end;
        counted++;
      }
      if (counted < this.#batch) break;
      await nextTurn();
      if (state.removed || this.#engine.closed) return;
    }
    if (state.bytes === undefined) state.bytes = bytes;
  }

  async *#eachStream(errors: unknown[]): AsyncGenerator<StreamBody> {
    let after: string | undefined;
    for (;;) {
      if (this.#engine.closed) return;
      const page: StreamBody[] = [];
      let last: string | undefined;
      const range = after === undefined ? { limit: this.#batch } : { start: after, limit: this.#batch + 1 };
      for (const { key, value } of this.#engine.streams.getRange(range)) {
        if (key === after) continue;
        last = key;
        const where = keyText(TABLES.streams, key);
        try {
          page.push(validateStreamBody(where, this.#engine.codec.decodeObject(where, value)));
        } catch (err) {
          errors.push(err);
        }
      }
      for (const body of page) yield body;
      if (last === undefined) return;
      after = last;
      await nextTurn();
    }
  }
}

function throwCollected(errors: unknown[], what: string): void {
  if (errors.length === 0) return;
  const first = errors[0];
  if (errors.length === 1) throw first;
  const code = isSluiceError(first) ? first.code : 'ERR_STORE_IO';
  throw new SluiceError(code, `${errors.length} streams failed in ${what}; the first: ${(first as Error)?.message ?? String(first)}`, {
    cause: first,
    details: { failures: errors.length },
  });
}
