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
  /**
   * Run `fn`, whose sends leave in one write: outside uWS's own callbacks (a flush on a
   * timer) every send is otherwise a syscall of its own.
   */
  cork(fn: () => void): void;
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

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COMMA = 0x2c;
const OPEN_BRACE = 0x7b;
const CLOSE_BRACE = 0x7d;
const OPEN_BRACKET = 0x5b;
const CLOSE_BRACKET = 0x5d;

/**
 * Several chunks' JSON in one `JSON.stringify` call (per call it costs about as much
 * as the encoding of a small chunk): `text` is each chunk's JSON followed by a comma,
 * `lengths[i]` the characters of chunk i, its comma included. Each piece is exactly
 * what `encodeChunkJson` gives for that chunk.
 */
export function encodeChunksJson(datas: readonly unknown[]): { text: string; lengths: number[] } {
  let values: unknown[] | undefined;
  for (let i = 0; i < datas.length; i++) {
    const v = encodeChunkData(datas[i], bufferToBase64);
    if (v !== datas[i]) (values ??= datas.slice())[i] = v;
  }
  // In an array, `undefined` becomes `null`, as `encodeChunkJson` makes it.
  const json = JSON.stringify(values ?? datas);
  // Split at the array's own commas. JSON.stringify adds no whitespace, and only a
  // string can hide a structural character: skip strings whole (a quote inside one is
  // escaped, so it follows an odd run of backslashes).
  const lengths: number[] = [];
  const last = json.length - 1;
  let depth = 0;
  let start = 1;
  for (let i = 1; i < last; i++) {
    const c = json.charCodeAt(i);
    if (c === QUOTE) i = closingQuote(json, i);
    else if (c === COMMA) {
      if (depth === 0) {
        lengths.push(i + 1 - start);
        start = i + 1;
      }
    } else if (c === OPEN_BRACE || c === OPEN_BRACKET) depth++;
    else if (c === CLOSE_BRACE || c === CLOSE_BRACKET) depth--;
  }
  if (datas.length > 0) lengths.push(last + 1 - start);
  return { text: datas.length === 0 ? '' : `${json.slice(1, last)},`, lengths };
}

function closingQuote(json: string, open: number): number {
  let q = json.indexOf('"', open + 1);
  for (;;) {
    if (json.charCodeAt(q - 1) !== BACKSLASH) return q;
    let k = q - 2;
    while (json.charCodeAt(k) === BACKSLASH) k--;
    if ((q - 1 - k) % 2 === 0) return q;
    q = json.indexOf('"', q + 1);
  }
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
