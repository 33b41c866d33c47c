/**
 * `sluice/client`: the WebSocket client SDK. Runs in browsers and Node 20: it uses the
 * global `WebSocket` when there is one, else the constructor you pass (`ws`'s).
 * No Node imports.
 *
 * - `client.start(plugin, action, params, options)` and `client.subscribe(streamId,
 *   { fromSeq, epoch })` return a `ClientStream`: an async iterable of `{ seq, data }`,
 *   iterable once.
 * - Credit: each stream grants the server `window` chunks and returns credit as the
 *   application takes chunks, so a reader that stops reading stops the server (and,
 *   for a non-durable stream, the plugin) after at most `window` chunks.
 * - Reconnect: when the socket drops, the client reconnects with exponential backoff
 *   and resubscribes every open stream from the seq after the last one it saw.
 * - Contiguity: the client checks seqs itself. Duplicates are dropped; a hole (a
 *   `gap` frame, or a seq jump) is surfaced as a `gap` event, a store re-creation as a
 *   `reset` event (listen with `stream.on('gap' | 'reset' | 'progress', fn)`); both are
 *   also kept in `stream.gaps` / `stream.resets`. The iterator itself yields only chunks.
 * - A stream that ends `failed` or `cancelled` makes the iterator throw a `SluiceError`
 *   with the server's code, after the chunks before it.
 *
 * @example
 * import { connect } from 'sluice/client';
 * const client = await connect('ws://127.0.0.1:8080/ws', { token });
 * const stream = client.start('counter', 'count', { n: 10 });
 * for await (const { seq, data } of stream) console.log(seq, data);
 * await client.close();
 */
import { fromWireError, SluiceError, type ErrorCode, type WireError } from '../protocol/errors.js';
import {
  CLOSE_CODES,
  decodeChunkData,
  parseServerFrame,
  WS_SUBPROTOCOL,
  WS_TOKEN_SUBPROTOCOL_PREFIX,
  type ClientFrame,
  type ServerFrame,
  type WireStartOptions,
} from '../protocol/ws.js';

export { CLOSE_CODES, WS_SUBPROTOCOL } from '../protocol/ws.js';
export type { WireStartOptions } from '../protocol/ws.js';

/** The part of the WHATWG WebSocket the client uses (`ws`'s WebSocket has it too). */
export interface WebSocketLike {
  readonly readyState: number;
  readonly protocol: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

export interface ConnectOptions {
  /** Bearer token (sent as a `sluice.token.<token>` subprotocol entry, or `?token=`). */
  token?: string;
  /** How the token travels; `'protocol'` works in browsers, which cannot set headers. Default `'protocol'`. */
  tokenTransport?: 'protocol' | 'query';
  /** WebSocket constructor when there is no global one (Node 20: `import WebSocket from 'ws'`). */
  WebSocket?: WebSocketConstructor;
  /** Chunks each stream may have in flight (the credit window). Default 256. */
  window?: number;
  /** Reconnect with backoff after an unexpected close; `false` to fail streams instead. */
  reconnect?: false | { initialDelayMs?: number; maxDelayMs?: number; maxAttempts?: number };
  /** Connection-level errors (a rejected frame, rate limiting). Default: ignored. */
  onError?: (err: SluiceError) => void;
}

export interface SubscribeOptions {
  /** First seq wanted (default 0). */
  fromSeq?: number;
  /** Store epoch the seqs belong to (from a previous `stream.epoch`). */
  epoch?: string;
}

export interface ClientChunk<T = unknown> {
  seq: number;
  data: T;
}

export interface StreamEventMap {
  gap: { fromSeq: number; toSeq: number };
  reset: { epoch: string };
  progress: { fraction: number; message?: string };
  started: { streamId: string; epoch: string };
}

const DEFAULT_WINDOW = 256;
const DEFAULT_RECONNECT = Object.freeze({ initialDelayMs: 100, maxDelayMs: 5000, maxAttempts: Number.POSITIVE_INFINITY });
/** Close codes after which reconnecting cannot help. */
const FINAL_CLOSE_CODES: ReadonlySet<number> = new Set([CLOSE_CODES.UNAUTHORIZED]);
const OPEN = 1;

function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID !== undefined) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

function closedError(code: ErrorCode, message: string): SluiceError {
  return new SluiceError(code, message);
}

type Listener<T> = (value: T) => void;

/**
 * One stream as the client sees it. Iterable once; `cancel()` stops the plugin,
 * breaking out of the loop only unsubscribes.
 */
export class ClientStream<T = unknown> implements AsyncIterable<ClientChunk<T>> {
  /** Server-side stream id, once `started` arrived. */
  streamId: string | undefined;
  epoch: string | undefined;
  readonly gaps: { fromSeq: number; toSeq: number }[] = [];
  readonly resets: { epoch: string }[] = [];
  /** @internal */ readonly sub: number;
  /** @internal */ readonly startFrame: Extract<ClientFrame, { type: 'start' }> | undefined;
  /** @internal Next seq expected. */ nextSeq: number;
  /** @internal */ acked = false;
  readonly #client: SluiceClient;
  readonly #queue: ClientChunk<T>[] = [];
  #queueHead = 0;
  #waiter: { resolve: (r: IteratorResult<ClientChunk<T>>) => void; reject: (e: unknown) => void } | undefined;
  #ended: { error?: SluiceError } | undefined;
  #iterating = false;
  /** Chunks taken (or dropped) since credit was last returned. */
  #consumed = 0;
  readonly #listeners = new Map<keyof StreamEventMap, Set<Listener<never>>>();
  readonly #started: Promise<string>;
  #resolveStarted!: (id: string) => void;
  #rejectStarted!: (e: unknown) => void;

  /** @internal */
  constructor(client: SluiceClient, sub: number, startFrame: Extract<ClientFrame, { type: 'start' }> | undefined, streamId: string | undefined, options: SubscribeOptions) {
    this.#client = client;
    this.sub = sub;
    this.startFrame = startFrame;
    this.streamId = streamId;
    this.epoch = options.epoch;
    this.nextSeq = options.fromSeq ?? 0;
    this.#started = new Promise((resolve, reject) => {
      this.#resolveStarted = resolve;
      this.#rejectStarted = reject;
    });
    // Nobody may await `id`; an unobserved rejection must not crash Node.
    this.#started.catch(() => undefined);
  }

  /** Resolves with the stream id once the server has started (or found) the stream. */
  get id(): Promise<string> {
    return this.#started;
  }

  get ended(): boolean {
    return this.#ended !== undefined;
  }

  on<E extends keyof StreamEventMap>(event: E, listener: Listener<StreamEventMap[E]>): this {
    let set = this.#listeners.get(event);
    if (set === undefined) this.#listeners.set(event, (set = new Set()));
    set.add(listener as Listener<never>);
    return this;
  }

  off<E extends keyof StreamEventMap>(event: E, listener: Listener<StreamEventMap[E]>): this {
    this.#listeners.get(event)?.delete(listener as Listener<never>);
    return this;
  }

  #emit<E extends keyof StreamEventMap>(event: E, value: StreamEventMap[E]): void {
    for (const l of this.#listeners.get(event) ?? []) (l as Listener<StreamEventMap[E]>)(value);
  }

  /** Cancel the stream on the server (needs a token that may cancel it). */
  async cancel(): Promise<void> {
    if (this.#ended !== undefined) return;
    this.#client.send({ type: 'cancel', sub: this.sub });
  }

  /** Credit the server may still use, given what is queued here. */
  /** @internal */ freeWindow(): number {
    return Math.max(0, this.#client.window - (this.#queue.length - this.#queueHead));
  }

  /** @internal */ onFrame(frame: ServerFrame): void {
    switch (frame.type) {
      case 'started':
        this.streamId = frame.streamId;
        if (this.epoch !== undefined && this.epoch !== frame.epoch && frame.durability !== 'log') this.nextSeq = frame.seq;
        this.epoch = frame.epoch;
        if (frame.seq > this.nextSeq) this.#gap(this.nextSeq, frame.seq);
        this.acked = true;
        this.#resolveStarted(frame.streamId);
        this.#emit('started', { streamId: frame.streamId, epoch: frame.epoch });
        return;
      case 'chunks': {
        let seq = frame.seq;
        for (const raw of frame.data) {
          if (seq < this.nextSeq) {
            // A duplicate (e.g. resent after a reconnect): drop it, but it used credit.
            this.#consumed++;
          } else {
            if (seq > this.nextSeq) this.#gap(this.nextSeq, seq);
            this.#queue.push({ seq, data: decodeChunkData(raw) as T });
            this.nextSeq = seq + 1;
          }
          seq++;
        }
        this.#maybeGrant();
        this.#wake();
        return;
      }
      case 'gap':
        if (frame.toSeq > this.nextSeq) this.#gap(Math.max(frame.fromSeq, this.nextSeq), frame.toSeq);
        return;
      case 'reset':
        this.resets.push({ epoch: frame.epoch });
        this.epoch = frame.epoch;
        this.nextSeq = 0;
        this.#emit('reset', { epoch: frame.epoch });
        return;
      case 'progress':
        this.#emit('progress', frame.message === undefined ? { fraction: frame.fraction } : { fraction: frame.fraction, message: frame.message });
        return;
      case 'end':
        this.#finish(frame.status === 'done' ? undefined : frame.error !== undefined ? fromWireError(frame.error) : closedError('ERR_CANCELLED', `Stream ${frame.status}`));
        return;
      case 'error':
        if (frame.fatal === true) this.#finish(fromWireError({ code: frame.code, message: frame.message, ...(frame.details === undefined ? {} : { details: frame.details }) } as WireError));
        else this.#client.reportError(fromWireError({ code: frame.code, message: frame.message }));
        return;
      case 'pong':
        return;
      default: {
        const never: never = frame;
        return never;
      }
    }
  }

  #gap(fromSeq: number, toSeq: number): void {
    const gap = { fromSeq, toSeq };
    this.gaps.push(gap);
    this.nextSeq = toSeq;
    this.#emit('gap', gap);
  }

  /** @internal The connection is gone for good. */
  fail(err: SluiceError): void {
    this.#finish(err);
  }

  #finish(error: SluiceError | undefined): void {
    if (this.#ended !== undefined) return;
    this.#ended = error === undefined ? {} : { error };
    if (error !== undefined) this.#rejectStarted(error);
    this.#client.forget(this as unknown as ClientStream<unknown>);
    this.#wake();
  }

  #maybeGrant(): void {
    if (this.#ended !== undefined || !this.acked) return;
    if (this.#consumed * 2 >= this.#client.window) {
      const n = this.#consumed;
      this.#consumed = 0;
      this.#client.send({ type: 'credit', sub: this.sub, n });
    }
  }

  #take(): ClientChunk<T> | undefined {
    if (this.#queueHead >= this.#queue.length) return undefined;
    const item = this.#queue[this.#queueHead]!;
    this.#queue[this.#queueHead++] = undefined as unknown as ClientChunk<T>;
    if (this.#queueHead > 1024 && this.#queueHead * 2 > this.#queue.length) {
      this.#queue.splice(0, this.#queueHead);
      this.#queueHead = 0;
    }
    this.#consumed++;
    this.#maybeGrant();
    return item;
  }

  #wake(): void {
    const waiter = this.#waiter;
    if (waiter === undefined) return;
    const item = this.#take();
    if (item !== undefined) {
      this.#waiter = undefined;
      waiter.resolve({ value: item, done: false });
      return;
    }
    if (this.#ended !== undefined) {
      this.#waiter = undefined;
      const err = this.#ended.error;
      this.#ended = {};
      if (err !== undefined) waiter.reject(err);
      else waiter.resolve({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<ClientChunk<T>> {
    if (this.#iterating) throw new SluiceError('ERR_STREAM_CONSUMED', 'A client stream can be iterated only once');
    this.#iterating = true;
    return {
      next: () =>
        new Promise((resolve, reject) => {
          this.#waiter = { resolve, reject };
          this.#wake();
        }),
      return: async () => {
        if (this.#ended === undefined) {
          this.#client.send({ type: 'unsubscribe', sub: this.sub });
          this.#ended = {};
          this.#client.forget(this as unknown as ClientStream<unknown>);
        }
        return { value: undefined, done: true };
      },
    };
  }
}

/** A connection to a sluice server. Create with `connect()`. */
export class SluiceClient {
  readonly url: string;
  readonly window: number;
  readonly #options: ConnectOptions;
  readonly #WebSocket: WebSocketConstructor;
  readonly #streams = new Map<number, ClientStream<unknown>>();
  #ws: WebSocketLike | undefined;
  #nextSub = 1;
  #closed = false;
  #attempt = 0;
  #reconnectTimer: ReturnType<typeof setTimeout> | undefined;

  /** @internal use `connect()` */
  constructor(url: string, options: ConnectOptions, WebSocketImpl: WebSocketConstructor) {
    this.url = url;
    this.#options = options;
    this.#WebSocket = WebSocketImpl;
    this.window = options.window ?? DEFAULT_WINDOW;
  }

  /** Whether the socket is open right now. */
  get connected(): boolean {
    return this.#ws?.readyState === OPEN;
  }

  /** @internal */
  open(): Promise<void> {
    return new Promise((resolve, reject) => {
      let protocols: string[] = [WS_SUBPROTOCOL];
      let url = this.url;
      const token = this.#options.token;
      if (token !== undefined) {
        if (this.#options.tokenTransport === 'query') url += `${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`;
        else protocols = [WS_SUBPROTOCOL, `${WS_TOKEN_SUBPROTOCOL_PREFIX}${token}`];
      }
      let settled = false;
      let opened = false;
      let ws: WebSocketLike;
      try {
        ws = new this.#WebSocket(url, protocols);
      } catch (err) {
        reject(new SluiceError('ERR_INVALID_ARGUMENT', `Cannot open ${this.url}: ${String((err as Error)?.message ?? err)}`, { cause: err }));
        return;
      }
      this.#ws = ws;
      ws.onopen = () => {
        settled = true;
        opened = true;
        this.#attempt = 0;
        this.#resubscribe();
        resolve();
      };
      const fail = (ev: unknown): void => {
        if (settled) return;
        settled = true;
        const err = connectError(ev);
        // A browser hides why an upgrade failed; ask the HTTP API, which says.
        if (err.code === 'ERR_HOST_CLOSED') void diagnoseRefusal(this.url, token).then((why) => reject(why ?? err));
        else reject(err);
      };
      ws.onerror = fail;
      ws.onmessage = (ev) => this.#onMessage(ev.data);
      ws.onclose = (ev) => {
        if (this.#ws !== ws) return;
        this.#ws = undefined;
        fail(ev);
        // A socket that never opened is this attempt failing: open()'s caller decides what next.
        if (opened) this.#onClose(ev.code, ev.reason);
      };
    });
  }

  #onMessage(data: unknown): void {
    if (typeof data !== 'string') {
      this.reportError(new SluiceError('ERR_PROTOCOL', 'Server sent a binary frame; sluice.v1 frames are JSON text'));
      return;
    }
    let frame: ServerFrame;
    try {
      frame = parseServerFrame(JSON.parse(data));
    } catch (err) {
      this.reportError(err instanceof SluiceError ? err : new SluiceError('ERR_PROTOCOL', 'Server sent a frame that is not JSON'));
      return;
    }
    if (frame.type === 'pong') return;
    if (frame.type === 'error' && frame.sub === undefined) {
      this.reportError(fromWireError({ code: frame.code, message: frame.message }));
      return;
    }
    const stream = this.#streams.get(frame.sub!);
    if (stream === undefined) return;
    try {
      stream.onFrame(frame);
    } catch (err) {
      stream.fail(err instanceof SluiceError ? err : new SluiceError('ERR_PROTOCOL', String(err)));
    }
  }

  #onClose(code: number, reason: string): void {
    if (this.#closed) return;
    const reconnect = this.#options.reconnect;
    if (reconnect === false || FINAL_CLOSE_CODES.has(code)) {
      this.#failAll(closeError(code, reason));
      return;
    }
    this.#scheduleReconnect(code, reason);
  }

  #scheduleReconnect(code: number, reason: string): void {
    const r = { ...DEFAULT_RECONNECT, ...(this.#options.reconnect || {}) };
    if (this.#attempt >= r.maxAttempts) {
      this.#failAll(closeError(code, reason));
      return;
    }
    const base = Math.min(r.maxDelayMs, r.initialDelayMs * 2 ** this.#attempt);
    const delay = base / 2 + Math.random() * (base / 2);
    this.#attempt++;
    this.#reconnectTimer = setTimeout(() => {
      this.#reconnectTimer = undefined;
      if (this.#closed) return;
      this.open().catch((err: unknown) => {
        const e = err instanceof SluiceError ? err : new SluiceError('ERR_HOST_CLOSED', String(err));
        if (e.code === 'ERR_UNAUTHORIZED' || e.code === 'ERR_FORBIDDEN') this.#failAll(e);
        else this.#scheduleReconnect(code, reason);
      });
    }, delay);
  }

  /** After (re)connecting: every open stream continues from the seq after the last one seen. */
  #resubscribe(): void {
    for (const s of this.#streams.values()) {
      const credit = s.freeWindow();
      if (s.streamId !== undefined) {
        const frame: ClientFrame = { type: 'subscribe', sub: s.sub, streamId: s.streamId, fromSeq: s.nextSeq, credit };
        if (s.epoch !== undefined && s.epoch !== '') frame.epoch = s.epoch;
        this.send(frame);
      } else if (s.startFrame !== undefined) {
        // Never acknowledged: start again with the same requested id, which the server treats as the same stream.
        this.send({ ...s.startFrame, credit });
      }
    }
  }

  #failAll(err: SluiceError): void {
    for (const s of [...this.#streams.values()]) s.fail(err);
  }

  /** @internal */
  reportError(err: SluiceError): void {
    this.#options.onError?.(err);
  }

  /** @internal */
  send(frame: ClientFrame): void {
    const ws = this.#ws;
    // While disconnected, frames are dropped: the resubscribe after reconnecting restates everything.
    if (ws === undefined || ws.readyState !== OPEN) return;
    ws.send(JSON.stringify(frame));
  }

  /** @internal */
  forget(stream: ClientStream<unknown>): void {
    if (this.#streams.get(stream.sub) === stream) this.#streams.delete(stream.sub);
  }

  #assertOpen(): void {
    if (this.#closed) throw new SluiceError('ERR_HOST_CLOSED', 'Client is closed');
  }

  /**
   * Start `plugin:action` and read its chunks.
   * @example
   * for await (const { data } of client.start('counter', 'count', { n: 3 })) console.log(data);
   */
  start<T = unknown>(plugin: string, action: string, params?: unknown, options: WireStartOptions = {}): ClientStream<T> {
    this.#assertOpen();
    const sub = this.#nextSub++;
    // A client-chosen id makes a start resent after a reconnect find the same stream.
    const frame: Extract<ClientFrame, { type: 'start' }> = { type: 'start', sub, plugin, action, options: { ...options, id: options.id ?? randomId() }, credit: this.window };
    if (params !== undefined) frame.params = params;
    const stream = new ClientStream<T>(this, sub, frame, undefined, {});
    this.#streams.set(sub, stream as ClientStream<unknown>);
    this.send(frame);
    return stream;
  }

  /** Read a stream by id, from `fromSeq` (default 0). */
  subscribe<T = unknown>(streamId: string, options: SubscribeOptions = {}): ClientStream<T> {
    this.#assertOpen();
    const sub = this.#nextSub++;
    const stream = new ClientStream<T>(this, sub, undefined, streamId, options);
    this.#streams.set(sub, stream as ClientStream<unknown>);
    const frame: ClientFrame = { type: 'subscribe', sub, streamId, fromSeq: stream.nextSeq, credit: this.window };
    if (options.epoch !== undefined && options.epoch !== '') frame.epoch = options.epoch;
    this.send(frame);
    return stream;
  }

  /** Close the socket (1000) and end every stream with ERR_HOST_CLOSED. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#reconnectTimer !== undefined) clearTimeout(this.#reconnectTimer);
    this.#failAll(new SluiceError('ERR_HOST_CLOSED', 'Client closed'));
    const ws = this.#ws;
    this.#ws = undefined;
    ws?.close(CLOSE_CODES.NORMAL, 'client closed');
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}

function connectError(ev: unknown): SluiceError {
  const message = String((ev as { message?: unknown; error?: { message?: unknown } })?.message ?? (ev as { error?: { message?: unknown } })?.error?.message ?? 'connection failed');
  // Browsers hide the HTTP status of a refused upgrade; `ws` puts it in the message.
  if (/\b401\b/.test(message)) return new SluiceError('ERR_UNAUTHORIZED', `Server refused the token: ${message}`);
  if (/\b403\b/.test(message)) return new SluiceError('ERR_FORBIDDEN', `Server refused the connection: ${message}`);
  return new SluiceError('ERR_HOST_CLOSED', `Cannot connect: ${message}`, { details: { retriable: true } });
}

const DIAGNOSE_TIMEOUT_MS = 5000;

/**
 * Why did the server refuse the upgrade? Browsers report every refusal as the same
 * opaque error (no HTTP status), so a bad token would look like a server that is down
 * and be retried forever. The HTTP API answers the same token and Origin with a status:
 * 401 (token) or 403 (scope or Origin). A request the browser blocks by CORS while the
 * server answers `/healthz` before and after it means this page's Origin is not allowed.
 * Undefined when there is no `fetch`, the server does not answer, or no clear answer
 * (the caller keeps its retriable error).
 */
async function diagnoseRefusal(wsUrl: string, token: string | undefined): Promise<SluiceError | undefined> {
  const f = (globalThis as { fetch?: (url: string, init?: Record<string, unknown>) => Promise<{ status: number }> }).fetch;
  if (f === undefined) return undefined;
  let base: URL;
  try {
    base = new URL(wsUrl);
    base.protocol = base.protocol === 'wss:' ? 'https:' : 'http:';
  } catch {
    return undefined;
  }
  const signal = typeof AbortSignal !== 'undefined' && typeof AbortSignal.timeout === 'function' ? AbortSignal.timeout(DIAGNOSE_TIMEOUT_MS) : undefined;
  const url = (path: string): string => new URL(path, base).toString();
  // An opaque answer: resolves whenever the server answers at all, whatever CORS says.
  const reachable = (): Promise<boolean> =>
    f(url('/healthz'), { mode: 'no-cors', signal }).then(
      () => true,
      () => false,
    );
  if (!(await reachable())) return undefined;
  try {
    const res = await f(url('/api/plugins'), { headers: token === undefined ? {} : { authorization: `Bearer ${token}` }, signal });
    if (res.status === 401) return new SluiceError('ERR_UNAUTHORIZED', 'Server refused the token (HTTP 401)');
    if (res.status === 403) return new SluiceError('ERR_FORBIDDEN', 'Server refused the connection (HTTP 403)');
    return undefined;
  } catch {
    // Answering before and after but not to this request: the browser blocked it (CORS),
    // so this page's Origin is not allowed. A server restarting meanwhile is not.
    if (!(await reachable())) return undefined;
    return new SluiceError('ERR_FORBIDDEN', "Server refused this page's Origin (not in the server's allowedOrigins)");
  }
}

function closeError(code: number, reason: string): SluiceError {
  const m = /^(ERR_[A-Z_]+): /.exec(reason);
  const known = m !== null ? (m[1] as ErrorCode) : undefined;
  try {
    if (known !== undefined) return new SluiceError(known, reason);
  } catch {
    // Not a code this client knows: fall through.
  }
  return new SluiceError('ERR_HOST_CLOSED', `Connection closed (${code}${reason === '' ? '' : `: ${reason}`})`);
}

/**
 * Connect to a sluice server's WebSocket endpoint (`ws://host:port/ws`).
 * @example
 * import WebSocket from 'ws';
 * const client = await connect('ws://127.0.0.1:8080/ws', { token, WebSocket });
 */
export async function connect(url: string, options: ConnectOptions = {}): Promise<SluiceClient> {
  const impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  if (impl === undefined) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', 'No WebSocket: this runtime has no global WebSocket; pass `WebSocket` (e.g. from the `ws` package)');
  }
  if (options.window !== undefined && (!Number.isInteger(options.window) || options.window < 1 || options.window > 1 << 20)) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`window\` to be a positive integer, got ${String(options.window)}`);
  }
  const client = new SluiceClient(url, options, impl);
  await client.open();
  return client;
}
