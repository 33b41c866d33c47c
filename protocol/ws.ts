/**
 * The client <-> server WebSocket protocol, version 1 (`sluice.v1`). One discriminated
 * union per direction, tagged by `type`, and a parser for each: the server parses
 * every client frame (`parseClientFrame`), the client SDK every server frame
 * (`parseServerFrame`). `protocol/WEBSOCKET.md` is the prose contract; the accept and
 * reject tables in `test/server-protocol.test.ts` pin these parsers.
 *
 * Every frame is a JSON text frame. Chunk data that holds bytes (a Uint8Array, at any
 * depth) travels as a tagged base64 object, see `encodeChunkData`.
 *
 * Pure TypeScript: no Node or package imports (the browser client bundles this file).
 */
import { assertInteger, assertNumber, assertObject, assertOneOf, assertString, fail, isObject, type Obj } from './assert.js';
import { isErrorCode, type ErrorCode, type WireError } from './errors.js';
import { parsePartialLimits, type Limits } from './limits.js';

export const WS_PROTOCOL_VERSION = 1;
/** The `Sec-WebSocket-Protocol` a v1 client offers and the server selects. */
export const WS_SUBPROTOCOL = 'sluice.v1';
/**
 * A second `Sec-WebSocket-Protocol` entry may carry the token (browsers cannot set an
 * `Authorization` header on a WebSocket): `sluice.token.<jwt>`. The server never echoes it.
 */
export const WS_TOKEN_SUBPROTOCOL_PREFIX = 'sluice.token.';

/**
 * Close codes the server uses. 1000-1011 are RFC 6455 codes; 4000-4999 are ours.
 * A close with an error code sends `<ERR_CODE>: <message>` as the close reason.
 */
export const CLOSE_CODES = Object.freeze({
  /** The client or server ended the connection normally. */
  NORMAL: 1000,
  /** The server is shutting down (SIGINT/SIGTERM); reconnect later. */
  GOING_AWAY: 1001,
  /** A frame was larger than the server's maximum payload (ERR_FRAME_TOO_LARGE); closed by uWS itself. */
  TOO_BIG: 1009,
  /** The server hit a bug; the reason holds the code. */
  INTERNAL: 1011,
  /** No frame and no subscription for the idle timeout. */
  IDLE: 4000,
  /** The token expired while the socket was open (ERR_UNAUTHORIZED). */
  UNAUTHORIZED: 4001,
  /** The socket's send buffer passed the hard limit (ERR_SLOW_CONSUMER). */
  SLOW_CONSUMER: 4008,
  /** The client kept sending control frames after being told it was rate limited (ERR_RATE_LIMITED). */
  RATE_LIMITED: 4029,
} as const);
export type CloseCode = (typeof CLOSE_CODES)[keyof typeof CLOSE_CODES];

/** Protocol bounds shared by both ends. */
export const WS_LIMITS = Object.freeze({
  /** Largest subscription number a client may pick. */
  maxSub: 2 ** 31 - 1,
  /** Largest credit one frame may grant (the server also caps outstanding credit). */
  maxCredit: 1 << 20,
  maxName: 256,
  maxStreamId: 256,
  maxEpoch: 256,
  maxPingId: 64,
});

export type WireDurability = 'none' | 'checkpoint' | 'log';
export type WirePriority = 'high' | 'normal' | 'low';
const DURABILITIES: readonly WireDurability[] = ['none', 'checkpoint', 'log'];
const PRIORITIES: readonly WirePriority[] = ['high', 'normal', 'low'];
const STREAM_ID_PATTERN = /^[A-Za-z0-9._:-]+$/;

/**
 * Options a client may pass with `start`. Deliberately narrower than the host's
 * StreamOptions: a client cannot pick the sandbox (that would let it run an
 * `isolate` plugin in a worker) nor pass a signal.
 */
export interface WireStartOptions {
  durability?: WireDurability;
  priority?: WirePriority;
  limits?: Partial<Limits>;
  window?: { chunks?: number; bytes?: number };
  id?: string;
}

// ---- client -> server --------------------------------------------------------------

/**
 * `sub` is a number the client picks, unique among its open subscriptions on this
 * connection; every server frame about that subscription carries it back.
 * `credit` is how many chunks the client grants up front (default 0: nothing flows
 * until a `credit` frame).
 */
export type ClientFrame =
  | { type: 'start'; sub: number; plugin: string; action: string; params?: unknown; options?: WireStartOptions; credit?: number }
  /** `fromSeq`: first seq wanted (default 0); `epoch`: the store epoch the client's seqs belong to. */
  | { type: 'subscribe'; sub: number; streamId: string; fromSeq?: number; epoch?: string; credit?: number }
  | { type: 'credit'; sub: number; n: number }
  | { type: 'cancel'; sub: number }
  | { type: 'unsubscribe'; sub: number }
  | { type: 'ping'; id?: string };

export type ClientFrameType = ClientFrame['type'];
export const CLIENT_FRAME_TYPES: readonly ClientFrameType[] = ['start', 'subscribe', 'credit', 'cancel', 'unsubscribe', 'ping'];

// ---- server -> client --------------------------------------------------------------

export type EndStatus = 'done' | 'failed' | 'cancelled';
const END_STATUSES: readonly EndStatus[] = ['done', 'failed', 'cancelled'];

export type ServerFrame =
  /** The subscription is live. `seq` is the seq of the next chunk it will deliver. */
  | { type: 'started'; sub: number; streamId: string; epoch: string; durability: WireDurability; seq: number }
  /** Chunks `seq .. seq + data.length - 1`, in order (encoded with `encodeChunkData`). */
  | { type: 'chunks'; sub: number; seq: number; data: unknown[] }
  | { type: 'progress'; sub: number; fraction: number; message?: string }
  /** The stream finished; the subscription is closed. */
  | { type: 'end'; sub: number; status: EndStatus; error?: WireError }
  /**
   * An error. With `sub`, about that subscription, and when `fatal` the subscription is
   * gone (not found, forbidden, slow consumer). Without `sub`, about the connection
   * (a bad frame, rate limited): the connection stays open.
   */
  | { type: 'error'; sub?: number; fatal?: boolean; code: ErrorCode; message: string; details?: Record<string, unknown> }
  /** Chunks `fromSeq .. toSeq - 1` cannot be delivered; delivery goes on at `toSeq`. */
  | { type: 'gap'; sub: number; fromSeq: number; toSeq: number }
  /** The store was re-created: the client's seqs are void; delivery restarts at seq 0 of `epoch`. */
  | { type: 'reset'; sub: number; epoch: string }
  | { type: 'pong'; id?: string };

export type ServerFrameType = ServerFrame['type'];

// ---- parsers -----------------------------------------------------------------------

const CLIENT = 'ERR_FRAME_INVALID' as const;

function parseSub(value: unknown, field: string, code: ErrorCode): number {
  assertInteger(value, field, code, 1, WS_LIMITS.maxSub);
  return value;
}

function optCredit(value: unknown, field: string): number | undefined {
  if (value === undefined) return undefined;
  assertInteger(value, field, CLIENT, 0, WS_LIMITS.maxCredit);
  return value;
}

export function isValidStreamId(value: unknown): value is string {
  return typeof value === 'string' && value.length > 0 && value.length <= WS_LIMITS.maxStreamId && STREAM_ID_PATTERN.test(value);
}

function parseStartOptions(value: unknown): WireStartOptions | undefined {
  if (value === undefined) return undefined;
  assertObject(value, 'start.options', CLIENT);
  const allowed = ['durability', 'priority', 'limits', 'window', 'id'];
  for (const key of Object.keys(value)) {
    if (!allowed.includes(key)) fail(CLIENT, `start.options.${key}`, `absent (allowed: ${allowed.join(', ')})`, value[key]);
  }
  const out: WireStartOptions = {};
  if (value.durability !== undefined) {
    assertOneOf(value.durability, DURABILITIES, 'start.options.durability', CLIENT);
    out.durability = value.durability;
  }
  if (value.priority !== undefined) {
    assertOneOf(value.priority, PRIORITIES, 'start.options.priority', CLIENT);
    out.priority = value.priority;
  }
  if (value.limits !== undefined) out.limits = parsePartialLimits(value.limits, 'start.options.limits', CLIENT);
  if (value.window !== undefined) {
    const w = value.window;
    assertObject(w, 'start.options.window', CLIENT);
    const win: { chunks?: number; bytes?: number } = {};
    if (w.chunks !== undefined) {
      assertInteger(w.chunks, 'start.options.window.chunks', CLIENT, 1, 1 << 20);
      win.chunks = w.chunks;
    }
    if (w.bytes !== undefined) {
      assertInteger(w.bytes, 'start.options.window.bytes', CLIENT, 1, 1 << 30);
      win.bytes = w.bytes;
    }
    out.window = win;
  }
  if (value.id !== undefined) {
    if (!isValidStreamId(value.id)) fail(CLIENT, 'start.options.id', `a stream id ([A-Za-z0-9._:-], at most ${WS_LIMITS.maxStreamId} characters)`, value.id);
    out.id = value.id;
  }
  return out;
}

/**
 * Parse one client frame (already JSON-decoded). Throws ERR_FRAME_INVALID naming the
 * field; the server answers with an `error` frame and keeps the connection.
 */
export function parseClientFrame(data: unknown): ClientFrame {
  assertObject(data, 'frame', CLIENT);
  switch (data.type) {
    case 'start': {
      const sub = parseSub(data.sub, 'start.sub', CLIENT);
      assertString(data.plugin, 'start.plugin', CLIENT, WS_LIMITS.maxName);
      assertString(data.action, 'start.action', CLIENT, WS_LIMITS.maxName);
      const frame: ClientFrame = { type: 'start', sub, plugin: data.plugin, action: data.action };
      if (data.params !== undefined) frame.params = data.params;
      const options = parseStartOptions(data.options);
      if (options !== undefined) frame.options = options;
      const credit = optCredit(data.credit, 'start.credit');
      if (credit !== undefined) frame.credit = credit;
      return frame;
    }
    case 'subscribe': {
      const sub = parseSub(data.sub, 'subscribe.sub', CLIENT);
      if (!isValidStreamId(data.streamId)) fail(CLIENT, 'subscribe.streamId', 'a stream id', data.streamId);
      const frame: ClientFrame = { type: 'subscribe', sub, streamId: data.streamId };
      if (data.fromSeq !== undefined) {
        assertInteger(data.fromSeq, 'subscribe.fromSeq', CLIENT);
        frame.fromSeq = data.fromSeq;
      }
      // '' is a host without a store's epoch: the same as none.
      if (data.epoch !== undefined && data.epoch !== '') {
        assertString(data.epoch, 'subscribe.epoch', CLIENT, WS_LIMITS.maxEpoch);
        frame.epoch = data.epoch;
      }
      const credit = optCredit(data.credit, 'subscribe.credit');
      if (credit !== undefined) frame.credit = credit;
      return frame;
    }
    case 'credit': {
      const sub = parseSub(data.sub, 'credit.sub', CLIENT);
      assertInteger(data.n, 'credit.n', CLIENT, 1, WS_LIMITS.maxCredit);
      return { type: 'credit', sub, n: data.n };
    }
    case 'cancel':
      return { type: 'cancel', sub: parseSub(data.sub, 'cancel.sub', CLIENT) };
    case 'unsubscribe':
      return { type: 'unsubscribe', sub: parseSub(data.sub, 'unsubscribe.sub', CLIENT) };
    case 'ping': {
      if (data.id === undefined) return { type: 'ping' };
      assertString(data.id, 'ping.id', CLIENT, WS_LIMITS.maxPingId);
      return { type: 'ping', id: data.id };
    }
    default:
      return fail(CLIENT, 'frame.type', `one of ${CLIENT_FRAME_TYPES.map((t) => `'${t}'`).join(', ')}`, data.type);
  }
}

/** Decode a text frame's JSON, mapping a syntax error to ERR_FRAME_INVALID. */
export function decodeClientFrame(text: string): ClientFrame {
  let data: unknown;
  try {
    data = JSON.parse(text);
  } catch {
    return fail(CLIENT, 'frame', 'JSON text', text);
  }
  return parseClientFrame(data);
}

const SERVER = 'ERR_PROTOCOL' as const;

function parseFrameError(data: Obj): WireError {
  if (!isErrorCode(data.code)) fail(SERVER, 'error.code', 'a known error code', data.code);
  const wire: WireError = { code: data.code, message: typeof data.message === 'string' ? data.message : data.code };
  if (isObject(data.details)) wire.details = data.details;
  return wire;
}

/**
 * Parse one server frame (client side). A server that speaks another protocol version
 * or sends garbage surfaces as ERR_PROTOCOL. Chunk data is still encoded; decode it
 * with `decodeChunkData`.
 */
export function parseServerFrame(data: unknown): ServerFrame {
  assertObject(data, 'frame', SERVER);
  switch (data.type) {
    case 'started': {
      const sub = parseSub(data.sub, 'started.sub', SERVER);
      assertString(data.streamId, 'started.streamId', SERVER, WS_LIMITS.maxStreamId);
      if (typeof data.epoch !== 'string') fail(SERVER, 'started.epoch', 'a string', data.epoch);
      assertOneOf(data.durability, DURABILITIES, 'started.durability', SERVER);
      assertInteger(data.seq, 'started.seq', SERVER);
      return { type: 'started', sub, streamId: data.streamId, epoch: data.epoch, durability: data.durability, seq: data.seq };
    }
    case 'chunks': {
      const sub = parseSub(data.sub, 'chunks.sub', SERVER);
      assertInteger(data.seq, 'chunks.seq', SERVER);
      if (!Array.isArray(data.data) || data.data.length === 0) fail(SERVER, 'chunks.data', 'a non-empty array', data.data);
      return { type: 'chunks', sub, seq: data.seq, data: data.data };
    }
    case 'progress': {
      const sub = parseSub(data.sub, 'progress.sub', SERVER);
      assertNumber(data.fraction, 'progress.fraction', SERVER, 0, 1);
      const frame: ServerFrame = { type: 'progress', sub, fraction: data.fraction };
      if (typeof data.message === 'string') frame.message = data.message;
      return frame;
    }
    case 'end': {
      const sub = parseSub(data.sub, 'end.sub', SERVER);
      assertOneOf(data.status, END_STATUSES, 'end.status', SERVER);
      const frame: ServerFrame = { type: 'end', sub, status: data.status };
      if (data.error !== undefined) {
        assertObject(data.error, 'end.error', SERVER);
        frame.error = parseFrameError(data.error);
      }
      return frame;
    }
    case 'error': {
      const wire = parseFrameError(data);
      const frame: ServerFrame = { type: 'error', code: wire.code, message: wire.message };
      if (data.sub !== undefined) frame.sub = parseSub(data.sub, 'error.sub', SERVER);
      if (data.fatal === true) frame.fatal = true;
      if (wire.details !== undefined) frame.details = wire.details;
      return frame;
    }
    case 'gap': {
      const sub = parseSub(data.sub, 'gap.sub', SERVER);
      assertInteger(data.fromSeq, 'gap.fromSeq', SERVER);
      assertInteger(data.toSeq, 'gap.toSeq', SERVER);
      if (data.toSeq <= data.fromSeq) fail(SERVER, 'gap.toSeq', `an integer greater than fromSeq (${data.fromSeq})`, data.toSeq);
      return { type: 'gap', sub, fromSeq: data.fromSeq, toSeq: data.toSeq };
    }
    case 'reset': {
      const sub = parseSub(data.sub, 'reset.sub', SERVER);
      if (typeof data.epoch !== 'string') fail(SERVER, 'reset.epoch', 'a string', data.epoch);
      return { type: 'reset', sub, epoch: data.epoch };
    }
    case 'pong':
      return typeof data.id === 'string' ? { type: 'pong', id: data.id } : { type: 'pong' };
    default:
      return fail(SERVER, 'frame.type', 'a sluice.v1 server frame type', data.type);
  }
}

// ---- chunk data encoding -----------------------------------------------------------

/** Tag of a byte string: `{ "$bytes": "<base64>" }` is a Uint8Array. */
export const BYTES_TAG = '$bytes';
/** Escape of a plain object that would otherwise read as a tag: `{ "$literal": { "$bytes": "x" } }`. */
export const LITERAL_TAG = '$literal';

const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_INDEX = (() => {
  const index = new Int16Array(128).fill(-1);
  for (let i = 0; i < B64.length; i++) index[B64.charCodeAt(i)] = i;
  return index;
})();

/** Standard base64 with padding; pure TS so browsers and isolates need no Buffer. */
export function bytesToBase64(bytes: Uint8Array): string {
  let out = '';
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8) | bytes[i + 2]!;
    out += B64[n >> 18]! + B64[(n >> 12) & 63]! + B64[(n >> 6) & 63]! + B64[n & 63]!;
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i]! << 16;
    out += `${B64[n >> 18]!}${B64[(n >> 12) & 63]!}==`;
  } else if (rest === 2) {
    const n = (bytes[i]! << 16) | (bytes[i + 1]! << 8);
    out += `${B64[n >> 18]!}${B64[(n >> 12) & 63]!}${B64[(n >> 6) & 63]!}=`;
  }
  return out;
}

export function base64ToBytes(text: string): Uint8Array {
  if (text.length % 4 !== 0) fail(SERVER, BYTES_TAG, 'base64 with padding', text);
  const pad = text.endsWith('==') ? 2 : text.endsWith('=') ? 1 : 0;
  const out = new Uint8Array((text.length / 4) * 3 - pad);
  let o = 0;
  for (let i = 0; i < text.length; i += 4) {
    const n = sextet(text, i) << 18 | sextet(text, i + 1) << 12 | (i + 2 < text.length - pad ? sextet(text, i + 2) : 0) << 6 | (i + 3 < text.length - pad ? sextet(text, i + 3) : 0);
    if (o < out.length) out[o++] = n >> 16;
    if (o < out.length) out[o++] = (n >> 8) & 255;
    if (o < out.length) out[o++] = n & 255;
  }
  return out;
}

function sextet(text: string, i: number): number {
  const c = text.charCodeAt(i);
  const v = c < 128 ? B64_INDEX[c]! : -1;
  if (v < 0) fail(SERVER, BYTES_TAG, 'base64', text);
  return v;
}

function isTagShaped(obj: object): boolean {
  const keys = Object.keys(obj);
  return keys.length === 1 && (keys[0] === BYTES_TAG || keys[0] === LITERAL_TAG);
}

/** True when `value` holds something JSON cannot carry as is (bytes, or a tag-shaped object). */
function needsEncoding(value: unknown): boolean {
  if (typeof value !== 'object' || value === null) return false;
  if (value instanceof Uint8Array) return true;
  if (Array.isArray(value)) {
    for (const item of value) if (needsEncoding(item)) return true;
    return false;
  }
  if (isTagShaped(value)) return true;
  for (const key in value) if (needsEncoding((value as Obj)[key])) return true;
  return false;
}

function encodeValue(value: unknown, toBase64: (b: Uint8Array) => string): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (value instanceof Uint8Array) return { [BYTES_TAG]: toBase64(value) };
  if (Array.isArray(value)) return value.map((v) => encodeValue(v, toBase64));
  // Null prototype: a `__proto__` key stays data (chunks are copied the same way).
  const out = Object.create(null) as Obj;
  for (const key of Object.keys(value)) out[key] = encodeValue((value as Obj)[key], toBase64);
  return isTagShaped(value) ? { [LITERAL_TAG]: out } : out;
}

/**
 * Chunk data -> JSON-compatible value. A Uint8Array anywhere becomes
 * `{ "$bytes": base64 }`; a plain object whose only key is `$bytes` or `$literal` is
 * wrapped in `{ "$literal": ... }` so it cannot be mistaken for a tag. Everything else
 * is returned as is (no copy), which is the common case.
 */
export function encodeChunkData(value: unknown, toBase64: (b: Uint8Array) => string = bytesToBase64): unknown {
  return needsEncoding(value) ? encodeValue(value, toBase64) : value;
}

/** Inverse of `encodeChunkData`. */
export function decodeChunkData(value: unknown): unknown {
  if (typeof value !== 'object' || value === null) return value;
  if (Array.isArray(value)) {
    let out: unknown[] | undefined;
    for (let i = 0; i < value.length; i++) {
      const d = decodeChunkData(value[i]);
      if (d !== value[i]) (out ??= value.slice())[i] = d;
    }
    return out ?? value;
  }
  const obj = value as Obj;
  const keys = Object.keys(obj);
  if (keys.length === 1 && keys[0] === BYTES_TAG) {
    if (typeof obj[BYTES_TAG] !== 'string') fail(SERVER, BYTES_TAG, 'a base64 string', obj[BYTES_TAG]);
    return base64ToBytes(obj[BYTES_TAG]);
  }
  if (keys.length === 1 && keys[0] === LITERAL_TAG) {
    const inner = obj[LITERAL_TAG];
    assertObject(inner, LITERAL_TAG, SERVER);
    return decodeFields(inner);
  }
  return decodeFields(obj);
}

function decodeFields(obj: Obj): Obj {
  let out: Obj | undefined;
  for (const key of Object.keys(obj)) {
    const d = decodeChunkData(obj[key]);
    // defineProperty: a `__proto__` key in parsed JSON is data and must stay data.
    if (d !== obj[key]) Object.defineProperty((out ??= { ...obj }), key, { value: d, enumerable: true, writable: true, configurable: true });
  }
  return out ?? obj;
}
