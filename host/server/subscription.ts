/**
 * What a subscription needs from its connection, and what a connection needs from a
 * subscription. Both kinds (fan-out of a live stream, reader of a durable log) send
 * chunks only while the client has granted credit *and* the socket is under its high
 * watermark; `pump()` is called again when either changes.
 */
import { toWireError, type ErrorCode, type WireError } from '../../protocol/errors.js';
import type { EndStatus, ServerFrame } from '../../protocol/ws.js';
import { encodeChunkData } from '../../protocol/ws.js';

export interface Outlet {
  /** Open and under the high watermark. */
  readonly writable: boolean;
  /**
   * Send a pre-encoded `chunks` frame of `count` chunks: text, or its UTF-8 bytes. Bytes
   * may be a view of a reused buffer: send (or copy) them before returning.
   */
  sendChunks(frame: string | Uint8Array, count: number): void;
  /** Send a control frame (not subject to credit; small and rare). */
  sendFrame(frame: ServerFrame): void;
  /** The subscription finished (end sent, or dropped); forget it. */
  released(subscription: Subscription): void;
  /** Largest outstanding credit per subscription. */
  readonly maxCredit: number;
}

export interface Subscription {
  readonly sub: number;
  readonly streamId: string;
  /** Begin producing (after the `started` frame went out). */
  start(): void;
  grant(n: number): void;
  /** Try to send what credit and the socket allow. */
  pump(): void;
  /** Stop without sending anything (unsubscribe, socket closed). Idempotent. */
  close(): void;
}

const bufferToBase64 = (b: Uint8Array): string => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');

/** One chunk as it sits in a `data` array of a `chunks` frame. */
export function encodeChunkJson(data: unknown): string {
  return JSON.stringify(encodeChunkData(data, bufferToBase64)) ?? 'null';
}

export function chunksFrameText(sub: number, seq: number, jsons: readonly string[]): string {
  return `{"type":"chunks","sub":${sub},"seq":${seq},"data":[${jsons.join(',')}]}`;
}

export interface EndInfo {
  status: EndStatus;
  error?: WireError;
}

/** How a stream's iterator ending (or throwing) reads on the wire. */
export function endFromThrown(err: unknown): EndInfo {
  const error = toWireError(err, false, 'ERR_PLUGIN_THREW');
  return { status: error.code === 'ERR_CANCELLED' ? 'cancelled' : 'failed', error };
}

export function endFrame(sub: number, end: EndInfo): ServerFrame {
  return end.error === undefined ? { type: 'end', sub, status: end.status } : { type: 'end', sub, status: end.status, error: end.error };
}

export function errorFrame(code: ErrorCode, message: string, sub?: number, fatal = false, details?: Record<string, unknown>): ServerFrame {
  const frame: ServerFrame = { type: 'error', code, message };
  if (sub !== undefined) frame.sub = sub;
  if (fatal) frame.fatal = true;
  if (details !== undefined) frame.details = details;
  return frame;
}
