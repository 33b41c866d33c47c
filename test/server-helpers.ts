/**
 * Server test helpers: a small fake host implementing `ServerHost` (pull-based like the
 * real one: a plugin advances only while its consumer reads, plus a fixed prefetch
 * window), servers and `ws` clients that close themselves, and bounded waits.
 */
import { EventEmitter } from 'node:events';
import type { TestContext } from 'node:test';
import { Gauge, Registry } from 'prom-client';
import WebSocket from 'ws';
import { SluiceError } from '../protocol/errors.js';
import type { Chunk, Progress, ReadEvent, SluiceStream, StreamOptions, StreamResult, StreamStatus, PluginInfo, Durability } from '../host/types.js';
import type { ServerHost, ServerReadOptions, ServerStreamInfo } from '../host/server/types.js';
import { startServer, type ServerOptions, type SluiceServer } from '../host/server/server.js';
import { createToken, type TokenSpec } from '../host/server/auth.js';
import { WS_SUBPROTOCOL, WS_TOKEN_SUBPROTOCOL_PREFIX } from '../protocol/ws.js';

export const SECRET = 'test-secret-0123456789-abcdefghijklmnop';
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

type Gen = (params: Record<string, unknown>, ctx: { signal: AbortSignal; progress(p: Progress): void }) => AsyncGenerator<unknown>;

/** Fake plugins: `counter:count` ({n?, delayMs?, size?}), `counter:fail` ({after}), `bytes:make` ({n}), `other:count`. */
const PLUGINS: Record<string, Record<string, Gen>> = {
  counter: {
    async *count(p, ctx) {
      const n = typeof p.n === 'number' ? p.n : Number.POSITIVE_INFINITY;
      const pad = typeof p.size === 'number' ? 'x'.repeat(p.size) : undefined;
      for (let i = 0; i < n; i++) {
        if (typeof p.delayMs === 'number') await sleep(p.delayMs);
        if (ctx.signal.aborted) return;
        if (i % 10 === 0) ctx.progress({ fraction: Number.isFinite(n) ? i / n : 0 });
        yield pad === undefined ? { i } : { i, pad };
      }
    },
    async *fail(p) {
      const after = typeof p.after === 'number' ? p.after : 0;
      for (let i = 0; i < after; i++) yield { i };
      throw new SluiceError('ERR_PLUGIN_THREW', 'boom');
    },
  },
  bytes: {
    async *make(p) {
      const n = typeof p.n === 'number' ? p.n : 3;
      for (let i = 0; i < n; i++) yield { i, raw: new Uint8Array([i, 255, 0, 7]), $bytes: 'not a tag' };
    },
  },
  other: {
    async *count() {
      for (let i = 0; ; i++) yield i;
    },
  },
};

const PREFETCH = 16;

export class FakeStream extends EventEmitter implements SluiceStream {
  readonly id: string;
  readonly plugin: string;
  readonly action: string;
  readonly durability: Durability;
  status: StreamStatus = 'running';
  progress: Progress | undefined;
  /** Chunks the "plugin" produced so far. */
  produced = 0;
  /** Chunks handed to the consumer. */
  taken = 0;
  readonly result: Promise<StreamResult>;
  readonly log: unknown[] = [];
  #resolveResult!: (r: StreamResult) => void;
  readonly #gen: AsyncGenerator<unknown>;
  readonly #abort = new AbortController();
  readonly #buffer: Chunk[] = [];
  #producing = false;
  #end: { error?: SluiceError } | undefined;
  #iterating = false;
  #waiter: { resolve: (r: IteratorResult<Chunk>) => void; reject: (e: unknown) => void } | undefined;
  readonly #onLog: () => void;

  constructor(id: string, plugin: string, action: string, params: unknown, durability: Durability, onLog: () => void) {
    super();
    this.id = id;
    this.plugin = plugin;
    this.action = action;
    this.durability = durability;
    this.#onLog = onLog;
    this.result = new Promise((r) => (this.#resolveResult = r));
    const fn = PLUGINS[plugin]?.[action];
    const ctx = { signal: this.#abort.signal, progress: (p: Progress) => ((this.progress = p), this.emit('progress', p)) };
    this.#gen = fn === undefined ? failing(new SluiceError('ERR_PLUGIN_NOT_FOUND')) : fn((params ?? {}) as Record<string, unknown>, ctx);
    this.#produce();
  }

  #produce(): void {
    if (this.#producing || this.#end !== undefined || this.#buffer.length >= PREFETCH) return;
    this.#producing = true;
    void (async () => {
      try {
        while (this.#end === undefined && this.#buffer.length < PREFETCH) {
          const r = await this.#gen.next();
          if (this.#end !== undefined) return;
          if (r.done === true) {
            this.#finish('done');
            return;
          }
          const chunk = { seq: this.produced++, data: r.value as never };
          this.#buffer.push(chunk);
          if (this.durability === 'log') {
            this.log.push(chunk.data);
            this.#onLog();
          }
          this.#wake();
        }
      } catch (err) {
        this.#finish('failed', err instanceof SluiceError ? err : new SluiceError('ERR_PLUGIN_THREW', String(err)));
      } finally {
        this.#producing = false;
      }
    })();
  }

  #finish(status: 'done' | 'failed' | 'cancelled', error?: SluiceError): void {
    if (this.#end !== undefined) return;
    this.#end = error === undefined ? {} : { error };
    this.status = status;
    this.#abort.abort();
    void this.#gen.return(undefined).catch(() => undefined);
    const result: StreamResult = { status, chunks: this.produced, bytes: 0 };
    if (error !== undefined) result.error = error;
    this.#resolveResult(result);
    this.emit('status', status);
    this.#onLog();
    this.#wake();
  }

  #wake(): void {
    const w = this.#waiter;
    if (w === undefined) return;
    const c = this.#buffer.shift();
    if (c !== undefined) {
      this.#waiter = undefined;
      this.taken++;
      w.resolve({ value: c, done: false });
      this.#produce();
      return;
    }
    if (this.#end !== undefined) {
      this.#waiter = undefined;
      const err = this.#end.error;
      this.#end = {};
      if (err !== undefined) w.reject(err);
      else w.resolve({ value: undefined, done: true });
    }
  }

  [Symbol.asyncIterator](): AsyncIterator<Chunk> {
    if (this.#iterating) throw new SluiceError('ERR_STREAM_CONSUMED');
    this.#iterating = true;
    return {
      next: () =>
        new Promise((resolve, reject) => {
          this.#waiter = { resolve, reject };
          this.#wake();
        }),
      return: async () => {
        void this.cancel('consumer stopped');
        return { value: undefined, done: true };
      },
    };
  }

  async cancel(_reason?: string): Promise<StreamResult> {
    this.#buffer.length = 0;
    this.#finish('cancelled', new SluiceError('ERR_CANCELLED'));
    return this.result;
  }

  /** Finished with this status, for streamInfo. */
  get finalStatus(): StreamStatus {
    return this.status;
  }
}

async function* failing(err: Error): AsyncGenerator<unknown> {
  throw err;
}

export class FakeHost implements ServerHost {
  readonly metricsRegistry = new Registry();
  readonly epoch = 'fake-epoch-1';
  readonly streams = new Map<string, FakeStream>();
  readonly #logWaiters = new Set<() => void>();
  closed = false;

  constructor() {
    new Gauge({ name: 'fake_host_streams', help: 'streams', registers: [this.metricsRegistry], collect: () => undefined });
  }

  plugins(): PluginInfo[] {
    return Object.entries(PLUGINS).map(([name, actions]) => ({
      name,
      version: '1.0.0',
      sandbox: 'worker',
      path: `/fake/${name}.js`,
      manifest: { name, version: '1.0.0' },
      actions: Object.fromEntries(Object.keys(actions).map((a) => [a, { kind: 'stream' as const }])),
    }));
  }

  stream(plugin: string, action: string, params?: unknown, options: StreamOptions = {}): SluiceStream {
    const id = options.id ?? `s-${this.streams.size}`;
    if (this.streams.get(id)?.status === 'running') throw new SluiceError('ERR_INVALID_ARGUMENT', `duplicate id ${id}`);
    const s = new FakeStream(id, plugin, action, params, options.durability ?? 'none', () => this.#notify());
    this.streams.set(id, s);
    return s;
  }

  #notify(): void {
    for (const w of [...this.#logWaiters]) w();
  }

  getStream(id: string): SluiceStream | undefined {
    const s = this.streams.get(id);
    return s !== undefined && s.status === 'running' ? s : undefined;
  }

  async *read(id: string, opts: ServerReadOptions): AsyncIterable<ReadEvent> {
    const s = this.streams.get(id);
    if (s === undefined || s.durability !== 'log') throw new SluiceError('ERR_STREAM_NOT_FOUND');
    if (opts.epoch !== undefined && opts.epoch !== this.epoch) {
      yield { type: 'reset', epoch: this.epoch };
    }
    let seq = opts.epoch !== undefined && opts.epoch !== this.epoch ? 0 : (opts.fromSeq ?? 0);
    for (;;) {
      opts.signal?.throwIfAborted();
      if (seq < s.log.length) {
        yield { type: 'chunk', seq, data: s.log[seq] as never };
        seq++;
        continue;
      }
      if (s.status !== 'running') {
        const r = await s.result;
        yield r.error === undefined ? { type: 'end', status: r.status } : { type: 'end', status: r.status, error: { code: r.error.code, message: r.error.message } };
        return;
      }
      await new Promise<void>((resolve) => {
        const w = (): void => {
          this.#logWaiters.delete(w);
          opts.signal?.removeEventListener('abort', w);
          resolve();
        };
        this.#logWaiters.add(w);
        opts.signal?.addEventListener('abort', w, { once: true });
      });
    }
  }

  async streamInfo(id: string): Promise<ServerStreamInfo | undefined> {
    const s = this.streams.get(id);
    if (s === undefined) return undefined;
    return { id, plugin: s.plugin, action: s.action, status: s.status, durability: s.durability, chunks: s.produced };
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const s of this.streams.values()) if (s.status === 'running') await s.cancel();
  }
}

export async function startTestServer(t: TestContext, host: ServerHost = new FakeHost(), options: ServerOptions = {}): Promise<SluiceServer> {
  const server = await startServer(host, { host: '127.0.0.1', port: 0, secret: SECRET, ...options });
  t.after(() => server.close());
  return server;
}

export function token(spec: TokenSpec = {}): Promise<string> {
  return createToken(SECRET, { plugins: ['*'], streams: ['own'], ...spec });
}

/** A raw `ws` client that records every frame it gets. */
export class RawClient {
  readonly ws: WebSocket;
  readonly frames: Record<string, unknown>[] = [];
  closeCode: number | undefined;
  closeReason = '';
  readonly #listeners = new Set<() => void>();

  constructor(ws: WebSocket) {
    this.ws = ws;
    ws.on('message', (data, isBinary) => {
      this.frames.push(isBinary ? { binary: true } : (JSON.parse(data.toString()) as Record<string, unknown>));
      this.#notify();
    });
    ws.on('close', (code, reason) => {
      this.closeCode = code;
      this.closeReason = reason.toString();
      this.#notify();
    });
  }

  #notify(): void {
    for (const l of [...this.#listeners]) l();
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** Wait until `predicate` holds over the frames so far (bounded). */
  waitFor<T>(predicate: (c: RawClient) => T | undefined | false, timeoutMs = 5000, what = 'condition'): Promise<T> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const v = predicate(this);
        if (v !== undefined && v !== false) {
          cleanup();
          resolve(v);
          return true;
        }
        return false;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out waiting for ${what}; frames: ${JSON.stringify(this.frames.slice(-5))}, close ${this.closeCode}`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.#listeners.delete(listener);
      };
      const listener = (): void => {
        check();
      };
      this.#listeners.add(listener);
      check();
    });
  }

  frame(pred: (f: Record<string, unknown>) => boolean, what = 'frame', timeoutMs = 5000): Promise<Record<string, unknown>> {
    return this.waitFor((c) => c.frames.find(pred), timeoutMs, what);
  }

  closed(timeoutMs = 5000): Promise<number> {
    return this.waitFor((c) => c.closeCode, timeoutMs, 'close');
  }

  /** Seqs of every chunk received on `sub`, in order. */
  seqs(sub: number): number[] {
    const out: number[] = [];
    for (const f of this.frames) {
      if (f.type === 'chunks' && f.sub === sub) {
        const data = f.data as unknown[];
        for (let i = 0; i < data.length; i++) out.push((f.seq as number) + i);
      }
    }
    return out;
  }
}

export interface RawOptions {
  token?: string | undefined;
  via?: 'header' | 'query' | 'protocol';
  protocols?: string[];
  headers?: Record<string, string>;
}

/** Open a raw client; rejects with the HTTP status when the upgrade is refused. */
export function rawConnect(t: TestContext, server: SluiceServer, opts: RawOptions = {}): Promise<RawClient> {
  const via = opts.via ?? 'header';
  let url = server.wsUrl;
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  let protocols = opts.protocols ?? [WS_SUBPROTOCOL];
  if (opts.token !== undefined) {
    if (via === 'header') headers.authorization = `Bearer ${opts.token}`;
    else if (via === 'query') url += `?token=${encodeURIComponent(opts.token)}`;
    else protocols = [...protocols, `${WS_TOKEN_SUBPROTOCOL_PREFIX}${opts.token}`];
  }
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, protocols, { headers });
    const client = new RawClient(ws);
    ws.once('open', () => {
      t.after(() => ws.terminate());
      resolve(client);
    });
    ws.once('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (d: Buffer) => (body += d.toString()));
      res.on('end', () => reject(Object.assign(new Error(`HTTP ${res.statusCode}`), { status: res.statusCode, body })));
    });
    ws.once('error', (err) => reject(err));
  });
}

/** HTTP helper against the server. */
export async function http(server: SluiceServer, method: string, path: string, opts: { token?: string; body?: unknown; rawBody?: string; headers?: Record<string, string> } = {}): Promise<{ status: number; body: any; text: string; headers: Headers }> {
  const headers: Record<string, string> = { ...(opts.headers ?? {}) };
  if (opts.token !== undefined) headers.authorization = `Bearer ${opts.token}`;
  let body: string | undefined = opts.rawBody;
  if (opts.body !== undefined) {
    body = JSON.stringify(opts.body);
    headers['content-type'] = 'application/json';
  }
  const res = await fetch(`${server.url}${path}`, { method, headers, body, signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, body: parsed, text, headers: res.headers };
}
