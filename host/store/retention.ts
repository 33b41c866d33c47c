/**
 * Background upkeep: trimming chunk logs by their retention policy, removing streams,
 * and cleaning up finished streams by age.
 *
 * Everything runs in small asynchronous transactions (maintenanceBatchSize entries
 * each), awaited one after the other, so appends and readers interleave between
 * batches; nothing here takes a synchronous commit. A trim deletes the oldest chunks
 * and moves the stream's recorded head in the same transaction, so a reader sees
 * either both or neither and reports the removed range as a `gap`.
 */
import { setImmediate as nextTurn } from 'node:timers/promises';
import { assertInteger } from '../../protocol/assert.js';
import { SluiceError, isSluiceError } from '../../protocol/errors.js';
import { MAX_SEQ, type Engine } from './engine.js';
import type { ChunkLog, LogState } from './log.js';
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
      const { newHead, removedBytes } = this.#plan(state, policy, now);
      if (newHead <= state.head) return total;
      const oldHead = state.head;
      let applied = false;
      await this.#engine.transaction(() => {
        const body = this.#engine.getStreamBody(id);
        if (body === undefined || body.head !== oldHead) return;
        for (let seq = oldHead; seq < newHead; seq++) void this.#engine.log.remove([id, seq]);
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
      let last = -1;
      const keys: number[] = [];
      for (const key of this.#engine.log.getKeys({ start: [id, 0], end: [id, MAX_SEQ], limit: this.#batch })) {
        if (key[0] !== id) break;
        keys.push(key[1]);
        last = key[1];
      }
      if (keys.length === 0) break;
      await this.#engine.transaction(() => {
        for (const seq of keys) void this.#engine.log.remove([id, seq]);
        const body = this.#engine.getStreamBody(id);
        if (body !== undefined && body.head <= last) void this.#engine.streams.put(id, this.#engine.encodeStreamBody({ ...body, head: last + 1 }));
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

  #plan(state: LogState, policy: RetentionPolicy, now: number): { newHead: number; removedBytes: number } {
    const id = state.id;
    const keepFrom = policy.maxChunks === undefined ? 0 : state.committed - policy.maxChunks;
    const cutoff = policy.maxAgeMs === undefined ? -Infinity : now - policy.maxAgeMs;
    const maxBytes = policy.maxBytes;
    const stored = state.bytes ?? 0;
    let newHead = state.head;
    let removedBytes = 0;
    for (const { key, value } of this.#engine.log.getRange({ start: [id, state.head], end: [id, state.committed], limit: this.#batch })) {
      if (key[0] !== id) break;
      const seq = key[1];
      const old =
        seq < keepFrom ||
        (maxBytes !== undefined && stored - removedBytes > maxBytes) ||
        (cutoff > -Infinity && this.#engine.codec.chunkTime(keyText(TABLES.log, [id, seq]), value) < cutoff);
      if (!old) break;
      removedBytes += value.byteLength;
      newHead = seq + 1;
    }
    return { newHead, removedBytes };
  }

  /**
   * Count the stored bytes of [head, committed) once, a batch per event turn. Appends
   * that commit meanwhile move `committed` and are counted by a later batch; the last
   * batch ends synchronously at the current `committed`, after which append callbacks
   * add their own bytes.
   */
  async #countBytes(state: LogState): Promise<void> {
    const id = state.id;
    let from = state.head;
    let bytes = 0;
    for (;;) {
      let counted = 0;
      for (const { key, value } of this.#engine.log.getRange({ start: [id, from], end: [id, state.committed], limit: this.#batch })) {
        if (key[0] !== id) break;
        bytes += value.byteLength;
        from = key[1] + 1;
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
