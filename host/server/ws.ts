/**
 * WebSocket connections: the upgrade (origin, version, token, connection limit, all
 * refused with an HTTP status and no socket), then one `Connection` per socket that
 * parses each frame at the boundary and drives its subscriptions.
 *
 * Backpressure, socket side: after every send we read `getBufferedAmount()`. Above
 * the high watermark the connection is *congested*: subscriptions stop sending and
 * their sources stop pulling. uWS calls `drain` as the buffer empties; below the low
 * watermark we resume. `getBufferedAmount()` counts only what uWS holds in user space,
 * not the kernel's socket buffer (often several MiB on loopback), so a stalled reader
 * is noticed only once the kernel buffer is full too; the watermarks bound what *we*
 * hold, which is what keeps host memory flat.
 */
import type { HttpRequest, HttpResponse, us_socket_context_t, WebSocket, WebSocketBehavior } from 'uWebSockets.js';
import { SluiceError, toWireError, type ErrorCode } from '../../protocol/errors.js';
import { CLOSE_CODES, decodeClientFrame, WS_SUBPROTOCOL, WS_TOKEN_SUBPROTOCOL_PREFIX, type ClientFrame, type ServerFrame } from '../../protocol/ws.js';
import { isExpired, mayCancel, mayRead, mayStart, ownedStreamId, type Authenticator, type Principal } from './auth.js';
import type { ResolvedServerConfig } from './config.js';
import { notFound, type StreamHub } from './hub.js';
import type { ServerMetrics } from './metrics.js';
import { TokenBucket } from './ratelimit.js';
import { errorFrame, type Outlet, type Subscription } from './subscription.js';
import type { Uws } from './native.js';

/** What uWS's `send` returns. */
const SEND_DROPPED = 2;
/**
 * uWS kills a socket whose frame passes `maxPayloadLength` without a close frame; we set
 * it to this multiple of `maxPayload` and close frames in between ourselves with 1009.
 */
const UWS_PAYLOAD_FACTOR = 4;
/** RFC 6455 limits a close reason to 123 bytes. */
const MAX_CLOSE_REASON = 123;

export interface WsContext {
  readonly uws: Uws;
  readonly hub: StreamHub;
  readonly auth: Authenticator;
  readonly config: ResolvedServerConfig;
  readonly metrics: ServerMetrics;
  readonly connections: Set<Connection>;
  pendingUpgrades: number;
  closing: boolean;
}

interface UserData {
  principal: Principal;
  conn?: Connection;
}

/** A subscription slot reserved while the stream is being looked up. */
interface Pending {
  readonly pending: true;
  readonly streamId: string;
  credit: number;
}

type Slot = Subscription | Pending;

function isPending(slot: Slot): slot is Pending {
  return (slot as Pending).pending === true;
}

const decoder = new TextDecoder('utf-8');
/** `{"type":"credit","sub":N,"n":N}` with room for whitespace; longer frames are not parsed before the rate limit. */
const MAX_CREDIT_FRAME_BYTES = 128;

export class Connection implements Outlet {
  readonly principal: Principal;
  readonly maxCredit: number;
  readonly #ws: WebSocket<UserData>;
  readonly #ctx: WsContext;
  readonly #slots = new Map<number, Slot>();
  readonly #bucket: TokenBucket;
  #congested = false;
  #closed = false;
  #strikes = 0;
  /** ERR_RATE_LIMITED was sent and the client has not calmed down since. */
  #told = false;
  /** Chunks sent on this connection whose credit the client has not returned yet. */
  #unreturned = 0;
  lastFrameAt = performance.now();

  constructor(ws: WebSocket<UserData>, principal: Principal, ctx: WsContext) {
    this.#ws = ws;
    this.principal = principal;
    this.#ctx = ctx;
    this.maxCredit = ctx.config.maxCredit;
    this.#bucket = new TokenBucket(ctx.config.rateLimit.burst, ctx.config.rateLimit.perSecond);
  }

  get writable(): boolean {
    return !this.#closed && !this.#congested;
  }

  get subscriptionCount(): number {
    return this.#slots.size;
  }

  // ---- Outlet ----------------------------------------------------------------------

  sendChunks(frame: string | Uint8Array, count: number): void {
    const t = this.#ctx.metrics.tallies;
    t.chunksOut += count;
    t.frameOut('chunks');
    this.#unreturned += count;
    this.#send(frame);
  }

  sendFrame(frame: ServerFrame): void {
    this.#ctx.metrics.tallies.frameOut(frame.type);
    if (frame.type === 'error') this.#ctx.metrics.error(frame.code);
    this.#send(JSON.stringify(frame));
  }

  cork(fn: () => void): void {
    if (this.#closed) fn();
    else this.#ws.cork(fn);
  }

  released(subscription: Subscription): void {
    if (this.#slots.get(subscription.sub) !== subscription) return;
    this.#slots.delete(subscription.sub);
    this.#ctx.metrics.subscriptions.dec();
  }

  #send(frame: string | Uint8Array): void {
    if (this.#closed) return;
    // Text frames either way: uWS copies bytes out at once (into the socket or its buffer).
    const result = this.#ws.send(frame, false, false);
    this.#ctx.metrics.tallies.bytesOut += typeof frame === 'string' ? frame.length : frame.byteLength;
    const buffered = this.#ws.getBufferedAmount();
    if (result === SEND_DROPPED || buffered > this.#ctx.config.watermarks.hard) {
      this.#ctx.metrics.slowConsumers.inc();
      this.#ctx.metrics.error('ERR_SLOW_CONSUMER');
      this.end(CLOSE_CODES.SLOW_CONSUMER, 'ERR_SLOW_CONSUMER', `send buffer passed ${this.#ctx.config.watermarks.hard} bytes`);
      return;
    }
    if (!this.#congested && buffered > this.#ctx.config.watermarks.high) {
      this.#congested = true;
      this.#ctx.metrics.backpressurePauses.inc();
    }
  }

  // ---- socket events ---------------------------------------------------------------

  onDrain(): void {
    if (this.#closed || !this.#congested) return;
    if (this.#ws.getBufferedAmount() > this.#ctx.config.watermarks.low) return;
    this.#congested = false;
    for (const slot of [...this.#slots.values()]) if (!isPending(slot)) slot.pump();
  }

  onClose(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const slot of [...this.#slots.values()]) if (!isPending(slot)) slot.close();
    this.#slots.clear();
    this.#ctx.connections.delete(this);
    this.#ctx.metrics.connections.dec();
  }

  /** Close the socket with `code` and a reason `<ERR_CODE>: <message>`. */
  end(code: number, errorCode: ErrorCode | undefined, message: string): void {
    if (this.#closed) return;
    const reason = (errorCode === undefined ? message : `${errorCode}: ${message}`).slice(0, MAX_CLOSE_REASON);
    // end() runs the close handler synchronously, which calls onClose().
    this.#ws.end(code, reason);
  }

  onMessage(message: ArrayBuffer, isBinary: boolean): void {
    if (this.#closed) return;
    this.lastFrameAt = performance.now();
    const earned = this.#earnedCredit(message, isBinary);
    if (earned !== undefined) {
      this.#ctx.metrics.tallies.frameIn('credit');
      this.#handle(earned);
      return;
    }
    if (!this.#bucket.take()) {
      this.#strikes++;
      if (this.#strikes === 1 && !this.#told) {
        this.#told = true;
        this.sendFrame(errorFrame('ERR_RATE_LIMITED', `More than ${this.#ctx.config.rateLimit.perSecond} frames per second; frames are being dropped`));
      }
      if (this.#strikes > this.#ctx.config.rateLimit.burst) this.end(CLOSE_CODES.RATE_LIMITED, 'ERR_RATE_LIMITED', 'kept flooding after ERR_RATE_LIMITED');
      return;
    }
    // A client that refills to half a bucket has stopped flooding; one that merely gets
    // the odd token through (a steady flood above the refill rate) keeps its strikes.
    if (this.#bucket.level >= this.#bucket.burst / 2) {
      this.#strikes = 0;
      this.#told = false;
    }
    if (message.byteLength > this.#ctx.config.maxPayload) {
      // uWS's own limit is a multiple of ours and drops the TCP connection without a close
      // frame (the client sees 1006); under it we close properly with 1009 and the code.
      this.#ctx.metrics.error('ERR_FRAME_TOO_LARGE');
      this.end(CLOSE_CODES.TOO_BIG, 'ERR_FRAME_TOO_LARGE', `frame of ${message.byteLength} bytes, limit ${this.#ctx.config.maxPayload}`);
      return;
    }
    if (isBinary) {
      this.#ctx.metrics.tallies.frameIn('invalid');
      this.sendFrame(errorFrame('ERR_FRAME_INVALID', 'Binary frames are not part of sluice.v1; send JSON text frames'));
      return;
    }
    let frame: ClientFrame;
    try {
      frame = decodeClientFrame(decoder.decode(message));
    } catch (err) {
      this.#ctx.metrics.tallies.frameIn('invalid');
      const wire = toWireError(err, false, 'ERR_FRAME_INVALID');
      this.sendFrame(errorFrame(wire.code, wire.message, undefined, false, wire.details));
      return;
    }
    this.#ctx.metrics.tallies.frameIn(frame.type);
    this.#handle(frame);
  }

  /**
   * A credit frame that returns credit for chunks this connection was sent is the flow
   * control the server asked for, not a frame the client chose to send, so it bypasses the
   * rate limit: a fast reader with a small window returns credit hundreds of times a
   * second, and one dropped credit frame would stall its stream for good. Credit beyond
   * what was sent pays a token like any other frame.
   */
  #earnedCredit(message: ArrayBuffer, isBinary: boolean): Extract<ClientFrame, { type: 'credit' }> | undefined {
    if (isBinary || this.#unreturned === 0 || message.byteLength > MAX_CREDIT_FRAME_BYTES) return undefined;
    let frame: ClientFrame;
    try {
      frame = decodeClientFrame(decoder.decode(message));
    } catch {
      return undefined;
    }
    if (frame.type !== 'credit' || frame.n > this.#unreturned) return undefined;
    this.#unreturned -= frame.n;
    return frame;
  }

  // ---- frames ----------------------------------------------------------------------

  #handle(frame: ClientFrame): void {
    switch (frame.type) {
      case 'start':
        return this.#start(frame);
      case 'subscribe':
        return this.#subscribe(frame);
      case 'credit': {
        const slot = this.#slots.get(frame.sub);
        // Unknown subs are ignored: a credit races with the `end` that closed it.
        if (slot === undefined) return;
        if (isPending(slot)) slot.credit = Math.min(slot.credit + frame.n, this.maxCredit);
        else slot.grant(frame.n);
        return;
      }
      case 'cancel':
        return this.#cancel(frame.sub);
      case 'unsubscribe': {
        const slot = this.#slots.get(frame.sub);
        if (slot === undefined) return;
        if (isPending(slot)) this.#slots.delete(frame.sub);
        else slot.close();
        return;
      }
      case 'ping':
        this.sendFrame(frame.id === undefined ? { type: 'pong' } : { type: 'pong', id: frame.id });
        return;
      default: {
        const never: never = frame;
        return never;
      }
    }
  }

  /** Common checks for start/subscribe; false when an error was sent. */
  #admit(sub: number): boolean {
    if (this.#slots.has(sub)) {
      this.sendFrame(errorFrame('ERR_FRAME_INVALID', `Subscription number ${sub} is already in use on this connection`, undefined, false, { sub }));
      return false;
    }
    if (this.#slots.size >= this.#ctx.config.maxSubscriptions) {
      this.sendFrame(errorFrame('ERR_TOO_MANY_SUBSCRIPTIONS', `A connection may hold ${this.#ctx.config.maxSubscriptions} subscriptions`, sub, true));
      return false;
    }
    if (isExpired(this.principal)) {
      this.end(CLOSE_CODES.UNAUTHORIZED, 'ERR_UNAUTHORIZED', 'token expired');
      return false;
    }
    return true;
  }

  #start(frame: Extract<ClientFrame, { type: 'start' }>): void {
    if (!this.#admit(frame.sub)) return;
    if (!mayStart(this.principal, frame.plugin, frame.action)) {
      this.sendFrame(errorFrame('ERR_FORBIDDEN', `Token does not allow starting ${frame.plugin}:${frame.action}`, frame.sub, true));
      return;
    }
    const id = ownedStreamId(this.principal, frame.options?.id);
    try {
      // Start is idempotent per id: a start resent after a reconnect joins the stream it started.
      if (this.#ctx.hub.liveStream(id) === undefined) this.#ctx.hub.start(id, frame.plugin, frame.action, frame.params, frame.options);
    } catch (err) {
      const wire = toWireError(err, false, 'ERR_INVALID_ARGUMENT');
      this.sendFrame(errorFrame(wire.code, wire.message, frame.sub, true, wire.details));
      return;
    }
    void this.#attach(frame.sub, id, 0, undefined, frame.credit ?? 0);
  }

  #subscribe(frame: Extract<ClientFrame, { type: 'subscribe' }>): void {
    if (!this.#admit(frame.sub)) return;
    if (!mayRead(this.principal, frame.streamId)) {
      // Exactly what an unknown id gets: a token cannot probe for streams it may not see.
      const err = notFound(frame.streamId);
      this.sendFrame(errorFrame(err.code, err.message, frame.sub, true));
      return;
    }
    void this.#attach(frame.sub, frame.streamId, frame.fromSeq ?? 0, frame.epoch, frame.credit ?? 0);
  }

  async #attach(sub: number, streamId: string, fromSeq: number, epoch: string | undefined, credit: number): Promise<void> {
    const pending: Pending = { pending: true, streamId, credit: Math.min(credit, this.maxCredit) };
    this.#slots.set(sub, pending);
    try {
      const attached = await this.#ctx.hub.attach(this, sub, streamId, fromSeq, epoch, 0);
      if (this.#closed || this.#slots.get(sub) !== pending) {
        // Unsubscribed (or disconnected) while we looked the stream up.
        attached.subscription?.close();
        return;
      }
      for (const f of attached.frames) this.sendFrame(f);
      const s = attached.subscription;
      if (s === undefined) {
        this.#slots.delete(sub);
        return;
      }
      this.#slots.set(sub, s);
      this.#ctx.metrics.subscriptions.inc();
      s.start();
      if (pending.credit > 0) s.grant(pending.credit);
    } catch (err) {
      if (this.#slots.get(sub) === pending) this.#slots.delete(sub);
      if (this.#closed) return;
      const wire = toWireError(err, false, 'ERR_STREAM_NOT_FOUND');
      this.sendFrame(errorFrame(wire.code, wire.message, sub, true));
    }
  }

  #cancel(sub: number): void {
    const slot = this.#slots.get(sub);
    if (slot === undefined) return;
    if (!mayCancel(this.principal, slot.streamId)) {
      this.sendFrame(errorFrame('ERR_FORBIDDEN', `Token does not allow cancelling stream ${slot.streamId}`, sub, false));
      return;
    }
    // The subscription sees the result as its `end` frame (status cancelled).
    this.#ctx.hub.cancel(slot.streamId, 'cancelled by client').catch((err: unknown) => {
      const wire = toWireError(err, false, 'ERR_CANCELLED');
      this.sendFrame(errorFrame(wire.code, wire.message, sub, false));
    });
  }
}

// ---- upgrade -------------------------------------------------------------------------

/** Reject an upgrade with an HTTP status and a coded JSON body; no socket is made. */
function refuse(res: HttpResponse, aborted: { value: boolean }, status: string, code: ErrorCode, message: string): void {
  if (aborted.value) return;
  res.cork(() => {
    res.writeStatus(status).writeHeader('content-type', 'application/json').end(JSON.stringify({ error: { code, message } }), true);
  });
}

export function originAllowed(origin: string, allowed: readonly string[]): boolean {
  // Non-browser clients send no Origin; the token is their credential.
  return origin === '' || allowed.includes('*') || allowed.includes(origin);
}

/** The token from `Authorization: Bearer`, a `sluice.token.` subprotocol entry, or `?token=`. */
export function extractToken(authorization: string, offered: readonly string[], query: string | undefined): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  if (m !== null) return m[1];
  const entry = offered.find((p) => p.startsWith(WS_TOKEN_SUBPROTOCOL_PREFIX));
  if (entry !== undefined) return entry.slice(WS_TOKEN_SUBPROTOCOL_PREFIX.length);
  return query === undefined || query === '' ? undefined : query;
}

export function createWsBehavior(ctx: WsContext): WebSocketBehavior<UserData> {
  const { config, metrics } = ctx;
  const reject = (res: HttpResponse, aborted: { value: boolean }, status: string, err: SluiceError): void => {
    metrics.upgradesRejected.inc({ code: err.code });
    refuse(res, aborted, status, err.code, err.message);
  };
  return {
    maxPayloadLength: config.maxPayload * UWS_PAYLOAD_FACTOR,
    // We close at `watermarks.hard` ourselves; uWS's own limit only backs that up.
    maxBackpressure: config.watermarks.hard + 2 * config.batch.bytes,
    closeOnBackpressureLimit: 0,
    // Dead-peer detection; uWS pings automatically well within it.
    idleTimeout: 120,
    sendPingsAutomatically: true,
    compression: ctx.uws.DISABLED,

    upgrade: (res: HttpResponse, req: HttpRequest, context: us_socket_context_t) => {
      const aborted = { value: false };
      res.onAborted(() => {
        aborted.value = true;
      });
      // req is only valid in this synchronous part: copy everything now.
      const key = req.getHeader('sec-websocket-key');
      const protocolHeader = req.getHeader('sec-websocket-protocol');
      const extensions = req.getHeader('sec-websocket-extensions');
      const origin = req.getHeader('origin');
      const authorization = req.getHeader('authorization');
      const queryToken = req.getQuery('token');
      const offered = protocolHeader.split(',').map((p) => p.trim()).filter((p) => p !== '');

      if (ctx.closing) return reject(res, aborted, '503 Service Unavailable', new SluiceError('ERR_HOST_CLOSED', 'Server is shutting down'));
      if (!originAllowed(origin, config.allowedOrigins)) {
        return reject(res, aborted, '403 Forbidden', new SluiceError('ERR_FORBIDDEN', `Origin ${JSON.stringify(origin)} is not allowed`));
      }
      const versions = offered.filter((p) => /^sluice\.v\d+$/.test(p));
      if (versions.length > 0 && !versions.includes(WS_SUBPROTOCOL)) {
        return reject(res, aborted, '400 Bad Request', new SluiceError('ERR_INVALID_ARGUMENT', `Unsupported protocol ${versions.join(', ')}; this server speaks ${WS_SUBPROTOCOL}`));
      }
      if (ctx.connections.size + ctx.pendingUpgrades >= config.maxConnections) {
        return reject(res, aborted, '503 Service Unavailable', new SluiceError('ERR_TOO_MANY_CONNECTIONS', `Connection limit (${config.maxConnections}) reached`));
      }
      const token = extractToken(authorization, offered, queryToken);
      ctx.pendingUpgrades++;
      ctx.auth.verify(token).then(
        (principal) => {
          ctx.pendingUpgrades--;
          if (aborted.value) return;
          if (ctx.closing) return reject(res, aborted, '503 Service Unavailable', new SluiceError('ERR_HOST_CLOSED', 'Server is shutting down'));
          res.cork(() => {
            res.upgrade<UserData>({ principal }, key, offered.includes(WS_SUBPROTOCOL) ? WS_SUBPROTOCOL : '', extensions, context);
          });
        },
        (err: unknown) => {
          ctx.pendingUpgrades--;
          reject(res, aborted, '401 Unauthorized', err instanceof SluiceError ? err : new SluiceError('ERR_UNAUTHORIZED', undefined, { cause: err }));
        },
      );
    },

    open: (ws) => {
      const data = ws.getUserData();
      const conn = new Connection(ws, data.principal, ctx);
      data.conn = conn;
      ctx.connections.add(conn);
      metrics.connections.inc();
      metrics.connectionsTotal.inc();
    },

    message: (ws, message, isBinary) => {
      ws.getUserData().conn?.onMessage(message, isBinary);
    },

    drain: (ws) => {
      ws.getUserData().conn?.onDrain();
    },

    close: (ws) => {
      const conn = ws.getUserData().conn;
      if (conn === undefined) return;
      conn.onClose();
    },
  };
}

/** Close idle connections (no frame, no subscription) and those whose token expired. */
export function sweepConnections(ctx: WsContext, now = performance.now()): void {
  const idle = ctx.config.idleTimeoutMs;
  for (const conn of [...ctx.connections]) {
    if (isExpired(conn.principal)) conn.end(CLOSE_CODES.UNAUTHORIZED, 'ERR_UNAUTHORIZED', 'token expired');
    else if (idle > 0 && conn.subscriptionCount === 0 && now - conn.lastFrameAt > idle) conn.end(CLOSE_CODES.IDLE, undefined, 'idle');
  }
}
