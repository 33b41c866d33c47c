/**
 * The data path between the host and a sandbox: one discriminated union per
 * direction, tagged by `type`. Both ends parse what they receive (`parseToSandbox`,
 * `parseFromSandbox`): a sandbox is untrusted, and a host message that fails to parse
 * means a bug worth a coded error rather than undefined behaviour.
 *
 * Per-chunk traffic is `batch` one way and `credit` the other; everything else is
 * rare. The control plane (load a plugin, health, stats) is comlink, not this.
 */
import { assertInteger, assertNumber, assertObject, assertOneOf, assertString, fail, isObject, type Obj } from './assert.js';
import { isErrorCode, type WireError } from './errors.js';
import type { Limits } from './limits.js';
import { parseWindow, type Window } from './credit.js';
import { checkPacking, unpackChunks, type PackedBytes } from './chunk.js';

export type ActionKind = 'unary' | 'stream';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';
export const LOG_LEVELS: readonly LogLevel[] = ['debug', 'info', 'warn', 'error'];

export interface Resume {
  /** Seq of the first chunk the resumed run will produce (chunks 0..seq-1 were delivered). */
  seq: number;
  state: unknown;
}

/**
 * What is left of a stream's `maxBytes` for one run, counted as the host counts it, so
 * the sandbox can stop its plugin at the chunk that passes the limit instead of a
 * window later. The host still enforces the limit (and reports it) on what arrives.
 */
export interface ByteBudget {
  /**
   * Chunks from this seq on count. Below it, a resumed plugin re-produces chunks the
   * stream already delivered; the host drops those and does not count them either.
   */
  fromSeq: number;
  /** Estimated bytes (protocol/chunk.ts) the counted chunks may total. */
  left: number;
}

/** Everything a sandbox needs to run one stream. */
export interface StartSpec {
  streamId: string;
  action: string;
  params: unknown;
  window: Window;
  /** Only the limits a sandbox enforces itself; wall, idle, bytes and chunk counts are the host's. */
  limits: Pick<Limits, 'maxChunkBytes' | 'memoryMb' | 'cpuMs'>;
  /** Set when the stream has a `maxBytes`. */
  byteBudget?: ByteBudget;
  resume?: Resume;
  /** The action consumes an input stream (`params.input`), fed with credit the other way. */
  input?: { window: Window };
}

// ---- host -> sandbox -------------------------------------------------------------

export type ToSandbox =
  /**
   * More credit. `buffers` hands back the packed-bytes buffers of batches the host has
   * fully consumed, for the sandbox to pack into again instead of allocating: only where
   * they move without a copy (a worker's MessagePort), at most MAX_RECYCLED_BUFFERS.
   */
  | { type: 'credit'; chunks: number; bytes: number; buffers?: ArrayBuffer[] }
  | { type: 'cancel'; reason: string }
  /** Input items `firstSeq ..`, sent only against input credit. */
  | { type: 'input'; firstSeq: number; chunks: unknown[]; bytes: number }
  | { type: 'input-end' }
  | { type: 'input-error'; error: WireError };

// ---- sandbox -> host -------------------------------------------------------------

export type FromSandbox =
  /**
   * Chunks `firstSeq .. firstSeq + batchCount(batch) - 1`, in order. `bytes` is their
   * estimated total size. Without `packed`, `chunks` holds every chunk. With it,
   * `packed.sizes` has an entry per chunk, the byte chunks it lists are in its buffer,
   * and `chunks` holds only the others, in order (PackedBytes). `parseFromSandbox` gives
   * each packed chunk its own Uint8Array, in place, unless asked to keep the packing.
   */
  | { type: 'batch'; firstSeq: number; chunks: unknown[]; bytes: number; largest: number; packed?: PackedBytes }
  | { type: 'progress'; fraction: number; message?: string }
  /** State after the first `seq` chunks; always sent after the batch holding chunk seq-1. */
  | { type: 'checkpoint'; seq: number; state: unknown }
  | { type: 'log'; level: LogLevel; message: string }
  /** The action finished; `kind` says whether it was unary or streaming. */
  | { type: 'end'; kind: ActionKind }
  | { type: 'error'; error: WireError }
  /** The plugin consumed input: the host may send this much more. */
  | { type: 'input-credit'; chunks: number; bytes: number };

/** How many chunks a batch carries: packed ones included. */
export function batchCount(batch: { chunks: unknown[]; packed?: PackedBytes | undefined }): number {
  return batch.packed === undefined ? batch.chunks.length : batch.packed.sizes.length;
}

export const MAX_LOG_MESSAGE = 8192;
/** Spent batch buffers one credit message may carry back to the sandbox. */
export const MAX_RECYCLED_BUFFERS = 4;

export function parseToSandbox(data: unknown): ToSandbox {
  assertObject(data, 'message', 'ERR_PROTOCOL');
  switch (data.type) {
    case 'credit':
      assertInteger(data.chunks, 'credit.chunks', 'ERR_PROTOCOL');
      assertInteger(data.bytes, 'credit.bytes', 'ERR_PROTOCOL');
      if (data.buffers === undefined) return { type: 'credit', chunks: data.chunks, bytes: data.bytes };
      if (!Array.isArray(data.buffers) || data.buffers.length > MAX_RECYCLED_BUFFERS || !data.buffers.every((b) => b instanceof ArrayBuffer)) {
        fail('ERR_PROTOCOL', 'credit.buffers', `an array of at most ${MAX_RECYCLED_BUFFERS} ArrayBuffers`, data.buffers);
      }
      return { type: 'credit', chunks: data.chunks, bytes: data.bytes, buffers: data.buffers as ArrayBuffer[] };
    case 'cancel':
      return { type: 'cancel', reason: typeof data.reason === 'string' ? data.reason : 'cancelled' };
    case 'input':
      assertInteger(data.firstSeq, 'input.firstSeq', 'ERR_PROTOCOL');
      if (!Array.isArray(data.chunks)) fail('ERR_PROTOCOL', 'input.chunks', 'an array', data.chunks);
      assertInteger(data.bytes, 'input.bytes', 'ERR_PROTOCOL');
      return { type: 'input', firstSeq: data.firstSeq, chunks: data.chunks, bytes: data.bytes };
    case 'input-end':
      return { type: 'input-end' };
    case 'input-error':
      return { type: 'input-error', error: parseWireError(data.error) };
    default:
      return fail('ERR_PROTOCOL', 'message.type', 'a host message type', data.type);
  }
}

export function parseWireError(value: unknown, field = 'error'): WireError {
  assertObject(value, field, 'ERR_PROTOCOL');
  if (!isErrorCode(value.code)) fail('ERR_PROTOCOL', `${field}.code`, 'a known error code', value.code);
  const message = typeof value.message === 'string' ? value.message.slice(0, MAX_LOG_MESSAGE) : String(value.code);
  const wire: WireError = { code: value.code, message };
  if (value.retriable === true) wire.retriable = true;
  if (typeof value.stack === 'string') wire.stack = value.stack.slice(0, 8 * MAX_LOG_MESSAGE);
  if (isObject(value.details)) wire.details = value.details;
  return wire;
}

/**
 * Parse a message from a sandbox. Chunk contents are not inspected here: the sandbox
 * boundary (the worker runtime or the isolate's supervisor) already copied and
 * validated them; this checks the envelope the host relies on.
 */
export function parseFromSandbox(data: unknown, options: { keepPacked?: boolean } = {}): FromSandbox {
  assertObject(data, 'message', 'ERR_PROTOCOL');
  switch (data.type) {
    case 'batch': {
      assertInteger(data.firstSeq, 'batch.firstSeq', 'ERR_PROTOCOL');
      if (!Array.isArray(data.chunks)) fail('ERR_PROTOCOL', 'batch.chunks', 'an array', data.chunks);
      // Empty only when every chunk is packed (checkPacking then requires at least one).
      if (data.chunks.length === 0 && data.packed === undefined) fail('ERR_PROTOCOL', 'batch.chunks', 'a non-empty array', data.chunks);
      assertInteger(data.bytes, 'batch.bytes', 'ERR_PROTOCOL');
      assertInteger(data.largest, 'batch.largest', 'ERR_PROTOCOL');
      const batch: FromSandbox = { type: 'batch', firstSeq: data.firstSeq, chunks: data.chunks as unknown[], bytes: data.bytes, largest: data.largest };
      if (data.packed !== undefined) {
        const packed = checkPacking(batch.chunks, data.packed);
        if (options.keepPacked === true) batch.packed = packed;
        else batch.chunks = unpackChunks(batch.chunks, packed);
      }
      return batch;
    }
    case 'progress': {
      assertNumber(data.fraction, 'progress.fraction', 'ERR_PROTOCOL', 0, 1);
      const msg: FromSandbox = { type: 'progress', fraction: data.fraction };
      if (data.message !== undefined) {
        assertString(data.message, 'progress.message', 'ERR_PROTOCOL', MAX_LOG_MESSAGE);
        msg.message = data.message;
      }
      return msg;
    }
    case 'checkpoint':
      assertInteger(data.seq, 'checkpoint.seq', 'ERR_PROTOCOL');
      return { type: 'checkpoint', seq: data.seq, state: data.state };
    case 'log':
      assertOneOf(data.level, LOG_LEVELS, 'log.level', 'ERR_PROTOCOL');
      if (typeof data.message !== 'string') fail('ERR_PROTOCOL', 'log.message', 'a string', data.message);
      return { type: 'log', level: data.level, message: data.message.slice(0, MAX_LOG_MESSAGE) };
    case 'end':
      assertOneOf(data.kind, ['unary', 'stream'] as const, 'end.kind', 'ERR_PROTOCOL');
      return { type: 'end', kind: data.kind };
    case 'error':
      return { type: 'error', error: parseWireError(data.error) };
    case 'input-credit':
      assertInteger(data.chunks, 'input-credit.chunks', 'ERR_PROTOCOL');
      assertInteger(data.bytes, 'input-credit.bytes', 'ERR_PROTOCOL');
      return { type: 'input-credit', chunks: data.chunks, bytes: data.bytes };
    default:
      return fail('ERR_PROTOCOL', 'message.type', 'a sandbox message type', data.type);
  }
}

/** Parse a StartSpec at the sandbox side (it arrives as a task argument or over a pipe). */
export function parseStartSpec(data: unknown): StartSpec {
  assertObject(data, 'start', 'ERR_PROTOCOL');
  assertString(data.streamId, 'start.streamId', 'ERR_PROTOCOL');
  assertString(data.action, 'start.action', 'ERR_PROTOCOL');
  const limits = data.limits as Obj | undefined;
  assertObject(limits, 'start.limits', 'ERR_PROTOCOL');
  assertInteger(limits.maxChunkBytes, 'start.limits.maxChunkBytes', 'ERR_PROTOCOL');
  assertInteger(limits.memoryMb, 'start.limits.memoryMb', 'ERR_PROTOCOL');
  assertInteger(limits.cpuMs, 'start.limits.cpuMs', 'ERR_PROTOCOL');
  const spec: StartSpec = {
    streamId: data.streamId,
    action: data.action,
    params: data.params,
    window: parseWindow(data.window, 'start.window'),
    limits: { maxChunkBytes: limits.maxChunkBytes, memoryMb: limits.memoryMb, cpuMs: limits.cpuMs },
  };
  if (data.byteBudget !== undefined) {
    const b = data.byteBudget as Obj;
    assertObject(b, 'start.byteBudget', 'ERR_PROTOCOL');
    assertInteger(b.fromSeq, 'start.byteBudget.fromSeq', 'ERR_PROTOCOL');
    assertInteger(b.left, 'start.byteBudget.left', 'ERR_PROTOCOL');
    spec.byteBudget = { fromSeq: b.fromSeq, left: b.left };
  }
  if (data.resume !== undefined) {
    const r = data.resume as Obj;
    assertObject(r, 'start.resume', 'ERR_PROTOCOL');
    assertInteger(r.seq, 'start.resume.seq', 'ERR_PROTOCOL');
    spec.resume = { seq: r.seq, state: r.state };
  }
  if (data.input !== undefined) {
    const input = data.input as Obj;
    assertObject(input, 'start.input', 'ERR_PROTOCOL');
    spec.input = { window: parseWindow(input.window, 'start.input.window') };
  }
  return spec;
}
