/**
 * Question: what does the sluice server cost on top of a bare uWS socket, and what
 * does uWS buy over a `ws` server in front of the same host?
 *
 * Three servers deliver the same stream of `chunks` frames (sluice.v1) to 100 `ws`
 * clients in a separate process (bench/ws-load.ts), each client starting its own
 * stream and returning credit like the SDK:
 * - e2e: `startServer` over a synthetic in-process host (a plugin stand-in that yields
 *   ready chunks; the sandbox hop is measured elsewhere, this isolates the server);
 * - raw uWS: a bare uWS app pushing pre-serialised frames of the same size and batch
 *   composition, with plain drain-based backpressure and no protocol;
 * - ws host: the same host and protocol behind a `ws` WebSocketServer.
 * Reported as ratios of chunks per second: after one warm-up run each, every round runs
 * the three once, in an order that rotates, each after a forced GC; the ratio is taken
 * per round and the median over rounds reported, with the smallest and largest as the
 * error bar. Then 1,000 sockets held on one server with the server process's RSS. Last,
 * `ws_e2e_real_plugin_chunks_per_s`: the same 100 clients served by the real host with a
 * real worker plugin making the stand-in's chunks (the issue's "plugin -> server -> 100
 * clients" as a user runs it; no baseline, a rate to read beside `ws_e2e_chunks_per_s`).
 *
 * Export `benchWs()`; run directly with `node dist/bench/ws.js`. Knobs (env):
 * BENCH_WS_CHUNKS (chunks per client, default 20000), BENCH_WS_WINDOW (client credit
 * window, default 1024), BENCH_WS_SERVER (JSON server options merged in),
 * BENCH_WS_ROUNDS (default 5), BENCH_WS_ONLY=e2e (skip the baselines), BENCH_WS_DEBUG
 * (print CPU, frame counts and per-round ratios).
 *
 * What the ratios mean: each client has its own stream, so nothing is shared between
 * subscribers and every chunk is JSON-encoded once for its one subscriber, in the e2e
 * server and in the `ws` host alike. The raw baseline sends pre-serialised frames: no
 * per-chunk work at all (~60-80 ns of server CPU per chunk, all of it sends), so it
 * measures the client process (~210 ns of client CPU per chunk).
 *
 * The stand-in (SyntheticStream) models HostStream's consumer side: batches of 128
 * produced against a 256-chunk credit window, arriving a macrotask after the credit,
 * data objects made on arrival, `{ seq, data }` made and credit returned on take. Its
 * `next()` costs ~125-150 ns per chunk in isolation (the earlier stand-in, which made
 * each chunk inside `next()`, cost ~70: chunks that wait in a batch survive a scavenge,
 * as they do in HostStream); its `takeBuffered` ~33 ns. The e2e server takes what is
 * buffered with `takeBuffered` and encodes each take in one `JSON.stringify`
 * (`encodeChunksJson`); so does the `ws` host (`takeBuffered`, one encoding per take,
 * `await next()` only when nothing is buffered), so the two differ in transport and in
 * what the sluice server adds (fan-out ring, per-subscriber framing, auth, limits).
 *
 * What is left in the e2e server's CPU per chunk (BENCH_WS_DEBUG; ~500 ns on a loaded
 * 2-core machine, ~400 in-process without sockets): `JSON.stringify` of the chunk
 * (~150-175 in a block; V8 11 has no fast path for it), splitting the block at its
 * commas (~50), the stand-in (~35), `encodeChunkData`'s check for bytes and tags
 * (~20), GC (~13%), ring and frame copies. The JSON encoding alone is about as much
 * server CPU per chunk as the client spends, so with ~250 chunks per frame e2e stays
 * well under the raw baseline (which encodes nothing) and under 4x the `ws` host: see
 * the per-round ratios BENCH_WS_DEBUG prints.
 */
import { spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { createServer, type Server } from 'node:http';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import type { AddressInfo, Socket } from 'node:net';
import { Gauge, Registry } from 'prom-client';
import { WebSocketServer, type WebSocket as WsSocket } from 'ws';
import { SluiceError } from '../protocol/errors.js';
import type { Chunk, PluginInfo, ReadEvent, SluiceStream, StreamOptions, StreamResult, StreamStatus, Progress } from '../host/types.js';
import type { ServerHost, ServerStreamInfo } from '../host/server/types.js';
import { startServer } from '../host/server/server.js';
import { asServerHost } from '../host/server/adapter.js';
import { Sluice } from '../host/host.js';
import { createToken } from '../host/server/auth.js';
import { loadNativeUws } from '../host/server/native.js';
import { chunksFrameText, encodeChunkJson, encodeChunksJson } from '../host/server/subscription.js';

const CLIENTS = 100;
const CHUNKS_PER_CLIENT = Number(process.env.BENCH_WS_CHUNKS ?? 20_000);
const WINDOW = Number(process.env.BENCH_WS_WINDOW ?? 1024);
const HOLD_CLIENTS = 1000;
const SECRET = 'bench-secret-0123456789-abcdefghijklmnop';
const PAYLOAD = 'x'.repeat(64);
const LOAD_SCRIPT = fileURLToPath(new URL('./ws-load.js', import.meta.url));
const REAL_PLUGINS = fileURLToPath(new URL('../../bench/fixtures/plugins', import.meta.url));
const DEADLINE_MS = 20_000;
const MIB = 1024 * 1024;
const ROUNDS = Number(process.env.BENCH_WS_ROUNDS ?? 5);

/**
 * A full GC before each run, so one contender's garbage is not collected on the next
 * one's clock (as in bench/core.ts: the runner cannot pass --expose-gc).
 */
const collectGarbage: () => void = (() => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as unknown;
  return typeof gc === 'function' ? (gc as () => void) : () => undefined;
})();

// ---- a synthetic host: the plugin stand-in ------------------------------------------

/** HostStream's defaults: a window of 256 chunks, batches of half a window (sandbox/driver.ts). */
const STANDIN_WINDOW = 256;
const STANDIN_BATCH = STANDIN_WINDOW / 2;

/**
 * A plugin that yields ready chunks, seen through a HostStream-shaped queue: the
 * "sandbox" produces only against credit (a window of 256), its batches of 128 arrive
 * one macrotask after the credit that allowed them (a MessagePort message), each
 * chunk's data is a fresh object made on arrival (what deserialisation costs), and the
 * consumer's take wraps it in `{ seq, data }` and returns credit at half a window, as
 * `HostStream.#take` does. `next()` resolves at once while chunks are buffered and
 * waits for the next batch otherwise; `takeBuffered` takes what is buffered. So both
 * servers pay what they would pay a real host with an infinitely fast plugin, minus
 * the sandbox hop (measured in bench/core.ts).
 */
export class SyntheticStream extends EventEmitter implements SluiceStream {
  readonly plugin = 'synthetic';
  readonly action = 'emit';
  status: StreamStatus = 'running';
  readonly progress: Progress | undefined = undefined;
  readonly result: Promise<StreamResult>;
  #resolve!: (r: StreamResult) => void;
  /** Seq of the next chunk the consumer takes, and the next one the "sandbox" produces. */
  #seq = 0;
  #produced = 0;
  /** Credit the sandbox holds, and what the consumer took since credit was last returned. */
  #credit = STANDIN_WINDOW;
  #consumed = 0;
  #batches: { firstSeq: number; data: unknown[]; pos: number }[] = [];
  #arrival: NodeJS.Immediate | undefined;
  #waiter: ((r: IteratorResult<Chunk>) => void) | undefined;
  constructor(
    readonly id: string,
    readonly n: number,
  ) {
    super();
    this.result = new Promise((r) => (this.#resolve = r));
    this.#schedule();
  }

  /** The sandbox produces what its credit allows, delivered one macrotask later. */
  #schedule(): void {
    if (this.#arrival !== undefined || this.#credit === 0 || this.#produced >= this.n) return;
    this.#arrival = setImmediate(() => {
      this.#arrival = undefined;
      while (this.#credit > 0 && this.#produced < this.n) {
        const count = Math.min(STANDIN_BATCH, this.#credit, this.n - this.#produced);
        const data: unknown[] = new Array(count);
        for (let i = 0; i < count; i++) data[i] = { i: this.#produced + i, payload: PAYLOAD };
        this.#batches.push({ firstSeq: this.#produced, data, pos: 0 });
        this.#produced += count;
        this.#credit -= count;
      }
      const w = this.#waiter;
      if (w !== undefined) {
        this.#waiter = undefined;
        w(this.#take()!);
      }
    });
  }

  #take(): IteratorResult<Chunk> | undefined {
    const batch = this.#batches[0];
    if (batch === undefined) return undefined;
    const chunk = { seq: batch.firstSeq + batch.pos, data: batch.data[batch.pos] as Chunk['data'] };
    if (++batch.pos === batch.data.length) this.#batches.shift();
    this.#seq = chunk.seq + 1;
    this.#returnCredit(1, false);
    return { value: chunk, done: false };
  }

  #returnCredit(n: number, now: boolean): void {
    this.#consumed += n;
    if (!now && this.#consumed * 2 < STANDIN_WINDOW) return;
    this.#credit += this.#consumed;
    this.#consumed = 0;
    this.#schedule();
  }

  takeBuffered(max: number): Chunk[] {
    const out: Chunk[] = [];
    if (this.#waiter !== undefined) return out;
    while (out.length < max) {
      const batch = this.#batches[0];
      if (batch === undefined) break;
      const stop = Math.min(batch.data.length, batch.pos + max - out.length);
      for (let i = batch.pos; i < stop; i++) out.push({ seq: batch.firstSeq + i, data: batch.data[i] as Chunk['data'] });
      this.#returnCredit(stop - batch.pos, false);
      batch.pos = stop;
      if (stop === batch.data.length) this.#batches.shift();
    }
    if (out.length > 0) this.#seq = out[out.length - 1]!.seq + 1;
    return out;
  }

  [Symbol.asyncIterator](): AsyncIterator<Chunk> {
    return {
      next: () => {
        const r = this.#take();
        if (r !== undefined) return Promise.resolve(r);
        if (this.#seq >= this.n) {
          if (this.status === 'running') {
            this.status = 'done';
            this.#resolve({ status: 'done', chunks: this.n, bytes: 0 });
          }
          return Promise.resolve({ value: undefined, done: true });
        }
        // The consumer waits: return what it took so far rather than at half a window.
        this.#returnCredit(0, true);
        return new Promise((resolve) => (this.#waiter = resolve));
      },
      return: async () => {
        void this.cancel();
        return { value: undefined, done: true };
      },
    };
  }
  async cancel(): Promise<StreamResult> {
    if (this.#arrival !== undefined) clearImmediate(this.#arrival);
    this.#arrival = undefined;
    this.#batches = [];
    if (this.status === 'running') {
      this.status = 'cancelled';
      this.#resolve({ status: 'cancelled', chunks: this.#seq, bytes: 0, error: new SluiceError('ERR_CANCELLED') });
    }
    return this.result;
  }
}

/** Ticks one chunk every `ms` forever (for the held connections). */
class TickingStream extends SyntheticStream {
  override [Symbol.asyncIterator](): AsyncIterator<Chunk> {
    let seq = 0;
    return {
      next: () => new Promise((resolve) => setTimeout(() => resolve({ value: { seq: seq++, data: { tick: seq } }, done: false }), 50)),
      return: async () => ({ value: undefined, done: true }),
    };
  }
}

class SyntheticHost implements ServerHost {
  readonly metricsRegistry = new Registry();
  readonly epoch = 'bench';
  readonly #streams = new Map<string, SyntheticStream>();
  #next = 0;
  constructor() {
    new Gauge({ name: 'bench_host', help: 'bench', registers: [this.metricsRegistry] });
  }
  plugins(): PluginInfo[] {
    return [{ name: 'synthetic', version: '1.0.0', sandbox: 'worker', path: '/bench', manifest: { name: 'synthetic', version: '1.0.0' }, actions: { emit: { kind: 'stream' }, tick: { kind: 'stream' } } }];
  }
  stream(_plugin: string, action: string, params?: unknown, options: StreamOptions = {}): SluiceStream {
    const id = options.id ?? `s${this.#next++}`;
    const n = (params as { n?: number } | undefined)?.n ?? 0;
    const s = action === 'tick' ? new TickingStream(id, 0) : new SyntheticStream(id, n);
    this.#streams.set(id, s);
    void s.result.then(() => this.#streams.delete(id));
    return s;
  }
  getStream(id: string): SluiceStream | undefined {
    return this.#streams.get(id);
  }
  read(): AsyncIterable<ReadEvent> {
    throw new SluiceError('ERR_STREAM_NOT_FOUND');
  }
  async streamInfo(id: string): Promise<ServerStreamInfo | undefined> {
    const s = this.#streams.get(id);
    return s === undefined ? undefined : { id, plugin: s.plugin, action: s.action, status: s.status, durability: 'none', chunks: 0 };
  }
  async close(): Promise<void> {}
}

// ---- the load process --------------------------------------------------------------

interface LoadResult {
  chunks: number;
  frames: number;
  ms: number;
}

function runLoad(url: string, token: string): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const spec = { mode: 'load', url, token, clients: CLIENTS, chunks: CHUNKS_PER_CLIENT, window: WINDOW, deadlineMs: DEADLINE_MS };
    const child = spawn(process.execPath, [LOAD_SCRIPT, JSON.stringify(spec)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.on('exit', () => {
      try {
        const r = JSON.parse(out.trim()) as LoadResult & { error?: string };
        if (r.error !== undefined) reject(new Error(r.error));
        else resolve(r);
      } catch (err) {
        reject(new Error(`load process output: ${out} (${String(err)})`));
      }
    });
  });
}

// ---- baseline: bare uWS ------------------------------------------------------------

async function rawUws(chunksPerFrame: number): Promise<{ url: string; close(): void }> {
  const uws = loadNativeUws();
  const jsons: string[] = [];
  for (let i = 0; i < CHUNKS_PER_CLIENT; i++) jsons.push(encodeChunkJson({ i, payload: PAYLOAD }));
  const frames: string[] = [];
  for (let seq = 0; seq < CHUNKS_PER_CLIENT; seq += chunksPerFrame) frames.push(chunksFrameText(1, seq, jsons.slice(seq, seq + chunksPerFrame)));
  const END = '{"type":"end","sub":1,"status":"done"}';
  const HIGH = 256 * 1024;
  interface State {
    next: number;
    ws?: unknown;
  }
  const pump = (ws: { send(m: string): number; getBufferedAmount(): number; getUserData(): State }): void => {
    const st = ws.getUserData();
    while (st.next < frames.length && ws.getBufferedAmount() < HIGH) ws.send(frames[st.next++]!);
    if (st.next === frames.length) {
      st.next++;
      ws.send(END);
    }
  };
  const app = uws.App().ws<State>('/ws', {
    maxPayloadLength: 64 * 1024,
    maxBackpressure: 64 * MIB,
    upgrade: (res, req, ctx) => {
      res.upgrade<State>({ next: 0 }, req.getHeader('sec-websocket-key'), 'sluice.v1', req.getHeader('sec-websocket-extensions'), ctx);
    },
    message: (ws, msg) => {
      if (Buffer.from(msg).toString('latin1', 0, 14) === '{"type":"start') pump(ws);
    },
    drain: (ws) => pump(ws),
  });
  const port = await new Promise<number>((resolve, reject) =>
    app.listen('127.0.0.1', 0, (ls) => (ls === false ? reject(new Error('listen')) : resolve(uws.us_socket_local_port(ls as never)))),
  );
  return { url: `ws://127.0.0.1:${port}/ws`, close: () => (app as unknown as { close(): void }).close() };
}

// ---- baseline: the same host behind `ws` -------------------------------------------

async function wsHost(host: ServerHost): Promise<{ url: string; close(): Promise<void> }> {
  const server: Server = createServer();
  const wss = new WebSocketServer({ server, path: '/ws', perMessageDeflate: false, handleProtocols: () => 'sluice.v1' });
  const HIGH = 256 * 1024;
  const LOW = 64 * 1024;
  wss.on('connection', (ws: WsSocket) => {
    let credit = 0;
    let wake: (() => void) | undefined;
    const socket = (ws as unknown as { _socket: Socket })._socket;
    socket.on('drain', () => {
      if (ws.bufferedAmount <= LOW) wake?.();
    });
    const waitForDemand = (): Promise<void> => new Promise((r) => (wake = r));
    ws.on('message', (data: Buffer) => {
      const frame = JSON.parse(data.toString()) as { type: string; n?: number; params?: unknown; credit?: number };
      if (frame.type === 'credit') {
        credit += frame.n ?? 0;
        wake?.();
      } else if (frame.type === 'start') {
        credit += frame.credit ?? 0;
        const stream = host.stream('synthetic', 'emit', frame.params);
        void (async () => {
          const it = stream[Symbol.asyncIterator]();
          let batch: string[] = [];
          let batched = 0;
          let first = 0;
          const flush = (): void => {
            if (batch.length === 0) return;
            ws.send(chunksFrameText(1, first, batch));
            batch = [];
            batched = 0;
          };
          for (;;) {
            if (credit === 0 || ws.bufferedAmount > HIGH) {
              flush();
              await waitForDemand();
              continue;
            }
            // What is buffered, in one call and one encoding, as the e2e server takes it;
            // `next()` only when nothing is.
            const buffered = stream.takeBuffered?.(Math.min(credit, 256 - batch.length)) ?? [];
            if (buffered.length > 0) {
              if (batch.length === 0) first = buffered[0]!.seq;
              const { text } = encodeChunksJson(buffered.map((c) => c.data));
              batch.push(text.slice(0, -1));
              batched += buffered.length;
              credit -= buffered.length;
              if (batched >= 256) flush();
              continue;
            }
            const r = await it.next();
            if (r.done === true) break;
            if (batch.length === 0) first = r.value.seq;
            batch.push(encodeChunkJson(r.value.data));
            batched++;
            credit--;
            if (batched >= 256) flush();
          }
          flush();
          ws.send('{"type":"end","sub":1,"status":"done"}');
        })();
      }
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const port = (server.address() as AddressInfo).port;
  return {
    url: `ws://127.0.0.1:${port}/ws`,
    close: () =>
      new Promise<void>((r) => {
        for (const c of wss.clients) c.terminate();
        wss.close();
        server.close(() => r());
      }),
  };
}

// ---- held connections --------------------------------------------------------------

async function holdClients(url: string, token: string, streamId: string): Promise<{ ready: Promise<void>; release(): Promise<void> }> {
  const spec = { mode: 'hold', url, token, clients: HOLD_CLIENTS, chunks: 0, window: 4, streamId, deadlineMs: DEADLINE_MS };
  const child = spawn(process.execPath, [LOAD_SCRIPT, JSON.stringify(spec)], { stdio: ['pipe', 'pipe', 'inherit'] });
  const ready = new Promise<void>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error('hold: clients did not open in time')), DEADLINE_MS);
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (out.includes('\n')) {
        clearTimeout(timer);
        const r = JSON.parse(out.trim()) as { open?: number; error?: string };
        if (r.open === HOLD_CLIENTS) resolve();
        else reject(new Error(`hold: ${out}`));
      }
    });
  });
  return {
    ready,
    release: () =>
      new Promise<void>((resolve) => {
        child.on('exit', () => resolve());
        child.stdin.end();
      }),
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Median of the per-round values. */
function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

export const targets = { ws_e2e_vs_raw_uws: '>= 0.7', ws_e2e_vs_ws_host: '>= 4' };

export async function benchWs(): Promise<Record<string, number>> {
  const token = await createToken(SECRET, { plugins: ['*'], streams: ['*'] });
  const host = new SyntheticHost();
  const debug = process.env.BENCH_WS_DEBUG !== undefined;
  const rate = (r: LoadResult): number => r.chunks / (r.ms / 1000);

  // e2e first: its average batch size shapes the raw baseline's frames.
  const extra = process.env.BENCH_WS_SERVER === undefined ? {} : (JSON.parse(process.env.BENCH_WS_SERVER) as object);
  const server = await startServer(host, { host: '127.0.0.1', port: 0, secret: SECRET, maxConnections: 5000, idleTimeoutMs: 0, rateLimit: { burst: 1000, perSecond: 10_000 }, ...extra });
  await runLoad(server.wsUrl, token); // warm-up
  const metrics = await server.metrics.metrics();
  const framesOut = Number(/sluice_server_frames_out_total\{type="chunks"\} (\d+)/.exec(metrics)?.[1] ?? 0);
  const chunksOut = Number(/sluice_server_chunks_out_total (\d+)/.exec(metrics)?.[1] ?? 0);
  const chunksPerFrame = Math.max(1, Math.round(chunksOut / Math.max(1, framesOut)));
  if (debug) console.error(metrics.split('\n').filter((l) => /pauses|frames_out|frames_in/.test(l)).join('\n'));

  /** One load run; with BENCH_WS_DEBUG, the server process's CPU per chunk too (all three servers live in this process). */
  const timed = async (name: string, url: string): Promise<LoadResult> => {
    const cpu0 = process.cpuUsage();
    const r = await runLoad(url, token);
    if (debug) {
      const cpu = process.cpuUsage(cpu0);
      const client = (r as unknown as { cpuMs: number }).cpuMs;
      console.error(
        `${name}: ${r.ms.toFixed(0)} ms, server cpu user ${(cpu.user / 1000).toFixed(0)} ms sys ${(cpu.system / 1000).toFixed(0)} ms (${(((cpu.user + cpu.system) * 1000) / r.chunks).toFixed(0)} ns/chunk), client cpu ${client.toFixed(0)} ms, frames ${r.frames}`,
      );
    }
    return r;
  };
  const timedE2e = (): Promise<LoadResult> => timed('e2e', server.wsUrl);

  if (process.env.BENCH_WS_ONLY === 'e2e') {
    const rates: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      collectGarbage();
      rates.push(rate(await timedE2e()));
    }
    await server.close();
    return { ws_e2e_chunks_per_s: Math.round(median(rates)) };
  }
  const raw = await rawUws(chunksPerFrame);
  await runLoad(raw.url, token);
  const viaWs = await wsHost(host);
  await runLoad(viaWs.url, token);

  // Rounds: every contender once per round, in an order that rotates, each after a
  // forced GC; ratios are taken per round and the median is reported (bench/README.md).
  const contenders: (() => Promise<LoadResult>)[] = [timedE2e, () => timed('raw', raw.url), () => timed('ws', viaWs.url)];
  const rates: number[][] = [[], [], []];
  for (let round = 0; round < ROUNDS; round++) {
    for (let k = 0; k < contenders.length; k++) {
      const c = (round + k) % contenders.length;
      collectGarbage();
      rates[c]!.push(rate(await contenders[c]!()));
    }
  }
  raw.close();
  await viaWs.close();
  const [e2eRates, rawRates, wsRates] = rates as [number[], number[], number[]];
  const vsRaw = e2eRates.map((r, i) => r / rawRates[i]!);
  const vsWs = e2eRates.map((r, i) => r / wsRates[i]!);
  if (debug) console.error(`per round: vs raw ${vsRaw.map((x) => x.toFixed(3)).join(' ')}; vs ws ${vsWs.map((x) => x.toFixed(3)).join(' ')}`);

  // 1,000 held sockets, each subscribed to one ticking stream.
  const ticking = host.stream('synthetic', 'tick', {}, { id: 'ticking' });
  void ticking;
  collectGarbage();
  await sleep(200);
  const rssBefore = process.memoryUsage().rss;
  // The stream must be known to the server: subscribe goes through host.getStream.
  const held = await holdClients(server.wsUrl, token, 'ticking');
  await held.ready;
  await sleep(1000);
  const samples: number[] = [];
  for (let i = 0; i < 5; i++) {
    samples.push(process.memoryUsage().rss);
    await sleep(200);
  }
  const connections = server.connectionCount;
  await held.release();
  await server.close();

  // The path as a user runs it: a real worker plugin (bench/fixtures/plugins/ws-emit.ts,
  // the stand-in's chunks) -> the real host -> the server -> the same 100 clients. The
  // sandbox pool runs two streams at a time and queues the rest, so this is the host's
  // data path and the server together; one warm-up, then the median of ROUNDS runs.
  const sluice = await Sluice.open({ plugins: REAL_PLUGINS, isolates: false, logger: false });
  const realRates: number[] = [];
  try {
    const realServer = await startServer(asServerHost(sluice), { host: '127.0.0.1', port: 0, secret: SECRET, maxConnections: 5000, idleTimeoutMs: 0, rateLimit: { burst: 1000, perSecond: 10_000 } });
    try {
      await runLoad(realServer.wsUrl, token);
      for (let round = 0; round < ROUNDS; round++) {
        collectGarbage();
        realRates.push(rate(await timed('real plugin', realServer.wsUrl)));
      }
    } finally {
      await realServer.close();
    }
  } finally {
    await sluice.close();
  }

  return {
    ws_e2e_chunks_per_s: Math.round(median(e2eRates)),
    ws_raw_uws_chunks_per_s: Math.round(median(rawRates)),
    ws_ws_host_chunks_per_s: Math.round(median(wsRates)),
    ws_e2e_chunks_per_frame: chunksPerFrame,
    ws_e2e_real_plugin_chunks_per_s: Math.round(median(realRates)),
    ws_e2e_vs_raw_uws: Number(median(vsRaw).toFixed(3)),
    ws_e2e_vs_ws_host: Number(median(vsWs).toFixed(3)),
    ws_e2e_vs_raw_uws_min: Number(Math.min(...vsRaw).toFixed(3)),
    ws_e2e_vs_raw_uws_max: Number(Math.max(...vsRaw).toFixed(3)),
    ws_e2e_vs_ws_host_min: Number(Math.min(...vsWs).toFixed(3)),
    ws_e2e_vs_ws_host_max: Number(Math.max(...vsWs).toFixed(3)),
    clients_1000_connected: connections,
    clients_1000_rss_mib: Number((Math.max(...samples) / MIB).toFixed(1)),
    clients_1000_rss_delta_mib: Number(((Math.max(...samples) - rssBefore) / MIB).toFixed(1)),
    clients_1000_rss_spread_mib: Number(((Math.max(...samples) - Math.min(...samples)) / MIB).toFixed(1)),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const t0 = performance.now();
  const result = await benchWs();
  console.log(JSON.stringify({ ...result, bench_ws_seconds: Number(((performance.now() - t0) / 1000).toFixed(1)) }, null, 2));
}
