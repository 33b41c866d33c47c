/**
 * Reading a durable stream: the chunks from `fromSeq` in order, live ones included,
 * then `end`; or an explicit `gap` (retention removed some) or `reset` (the store was
 * re-created, its epoch changed). Never a silent hole or repeat.
 *
 * Backpressure: one page (readPageSize chunks) is read from the log only when the
 * consumer has taken the previous one; nothing else is buffered. At the live tail the
 * reader parks on the stream's waiter (appendChunks, setStatus, retention and removal
 * wake it); no polling.
 *
 * Consistency: the stream record (status, head) and the page are read in one
 * synchronous step, so from one LMDB read snapshot: a trim commits its deletions and
 * the new head together, and a finished status commits after every chunk of the stream
 * (the host awaits its appends before it finishes a stream; appends after a finished
 * status are refused).
 */
import { assertInteger } from '../../protocol/assert.js';
import { SluiceError } from '../../protocol/errors.js';
import type { ReadEvent } from '../types.js';
import { MAX_SEQ, type Engine } from './engine.js';
import { notFound, type ChunkLog } from './log.js';
import { isFinished } from './records.js';

export interface ReadOptions {
  /** First seq wanted (the reader's last seen seq + 1). Default 0. */
  fromSeq?: number;
  /** The epoch the reader's position belongs to; when it is not the store's, a `reset` comes first and reading starts at 0. */
  epoch?: string;
  /** Aborting rejects the pending `next()` with `signal.reason`. */
  signal?: AbortSignal;
}

export function validateReadOptions(options: ReadOptions): void {
  if (options.fromSeq !== undefined) assertInteger(options.fromSeq, 'fromSeq', 'ERR_INVALID_ARGUMENT', 0, MAX_SEQ);
  if (options.epoch !== undefined && typeof options.epoch !== 'string') {
    throw new SluiceError('ERR_INVALID_ARGUMENT', 'Expected `epoch` to be a string');
  }
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', 'Expected `signal` to be an AbortSignal');
  }
}

export async function* readStream(engine: Engine, log: ChunkLog, id: string, options: ReadOptions): AsyncGenerator<ReadEvent, void, undefined> {
  const { signal } = options;
  signal?.throwIfAborted();
  engine.assertOpen();
  if (engine.getStreamBody(id) === undefined) throw notFound(id);
  let next = options.fromSeq ?? 0;
  if (options.epoch !== undefined && options.epoch !== engine.epoch) {
    yield { type: 'reset', epoch: engine.epoch };
    next = 0;
  }
  const pageSize = engine.options.readPageSize;
  for (;;) {
    signal?.throwIfAborted();
    engine.assertOpen();
    // One synchronous step: record and page from the same snapshot.
    const body = engine.getStreamBody(id);
    if (body === undefined) throw notFound(id);
    if (next < body.head) {
      const gap = { type: 'gap', fromSeq: next, toSeq: body.head } as const;
      next = body.head;
      yield gap;
      continue;
    }
    const page = log.readPage(id, next, pageSize, body.head);
    for (const chunk of page.chunks) {
      next = chunk.seq + 1;
      yield { type: 'chunk', seq: chunk.seq, data: chunk.data };
    }
    if (page.error !== undefined) throw page.error;
    if (page.chunks.length > 0) continue;
    if (isFinished(body.status)) {
      yield body.error === undefined ? { type: 'end', status: body.status } : { type: 'end', status: body.status, error: body.error };
      return;
    }
    // Registered in the same turn as the read: a commit resolving later wakes us.
    await engine.waiters.wait(id, signal);
  }
}
