/**
 * Question: what does the sluice server cost on top of a bare uWS socket, and what
 * does uWS buy over a `ws` server in front of the same host?
 *
 * Three servers deliver `chunks` frames (sluice.v1) to 100 `ws` clients in a separate
 * process (bench/ws-load.ts) that return credit like the SDK:
 * - e2e: `startServer` over a synthetic in-process host (a plugin stand-in that yields
 *   ready chunks; the sandbox hop is measured elsewhere, this isolates the server);
 * - raw uWS: a bare uWS app pushing pre-serialised frames of the same size and batch
 *   composition, with plain drain-based backpressure and no protocol;
 * - ws host: the same host and protocol behind a `ws` WebSocketServer.
 * Two shapes, each raced on its own:
 * - **fan-out** (the headline `ws_e2e_*`, the issue's "plugin -> server -> 100 clients"):
 *   one stream of FANOUT_CHUNKS, every client subscribed to it from seq 0, each
 *   receiving all of it. The sluice server encodes each chunk once into its fan-out
 *   ring and frames it per subscriber; the `ws` host (WsFanout) encodes each batch once
 *   and sends the very same Buffer to every client, which favours `ws`.
 * - **own streams** (`ws_own_streams_*`): each client starts a stream of its own, so
 *   every chunk is JSON-encoded for its one subscriber, in the e2e server and the `ws`
 *   host alike.
 * Reported as ratios of chunks delivered per second: after warm-ups, every round runs
 * the three once, in an order that rotates, each after a forced GC; the ratio is taken
 * per round and the median over rounds reported, with the smallest and largest as the
 * error bar. Beside them, each server's CPU per delivered chunk (`*_server_ns_per_chunk`,
 * this process's CPU over the run: all three servers live in it) and
 * `ws_e2e_server_cpu_vs_ws_host` (the `ws` host's CPU per chunk over the e2e server's).
 * Then 1,000 sockets held on one server with the server process's RSS. Last,
 * `ws_e2e_real_plugin_chunks_per_s`: 100 clients with streams of their own served by
 * the real host with a real worker plugin making the stand-in's chunks (no baseline, a
 * rate to read beside `ws_own_streams_chunks_per_s`), and
 * `ws_e2e_real_plugin_fanout_chunks_per_s`: one such stream fanned out to the 100
 * clients (chunks delivered, beside `ws_e2e_chunks_per_s`).
 *
 * Export `benchWs()`; run directly with `node dist/bench/ws.js`. Knobs (env):
 * BENCH_WS_CHUNKS (chunks per own stream, default 20000), BENCH_WS_FANOUT_CHUNKS
 * (chunks of the shared stream, default 60000), BENCH_WS_WINDOW (client credit window,
 * default 1024), BENCH_WS_SERVER (JSON server options merged in), BENCH_WS_ROUNDS
 * (default 5), BENCH_WS_ONLY=e2e (skip the baselines), BENCH_WS_DEBUG (print CPU,
 * frame counts and per-round ratios).
 *
 * What the ratios mean. The client process is the floor: ~200 ns of its CPU per chunk
 * against ~60-80 ns for the raw server (all of it sends), and the machine has two
 * cores. In fan-out, where per-chunk work is shared by 100 subscribers, both servers'
 * cost is mostly sends (~105-125 ns per chunk for sluice, ~120-135 for the `ws` host),
 * so both run at the clients' pace: the sluice server reaches ~0.7 of raw uWS, and the
 * `ws` host keeps up with it (~1x), because with ~250 chunks per frame a `ws` send is
 * no dearer than a uWS one. With streams of their own, each server's JSON encoding
 * (~150-175 ns per chunk, more than the client spends) binds: ~0.25 of raw, ~1.3x `ws`.
 * A 4x lead over `ws` needs a server-bound run that these two cores cannot give.
 *
 * The stand-in (SyntheticStream) models HostStream's consumer side: batches of half
 * the default credit window (at most the driver's batch cap) produced against it, arriving a macrotask after the credit,
 * data objects made on arrival, `{ seq, data }` made and credit returned on take. Its
 * `next()` costs ~125-150 ns per chunk in isolation (the earlier stand-in, which made
 * each chunk inside `next()`, cost ~70: chunks that wait in a batch survive a scavenge,
 * as they do in HostStream); its `takeBuffered` ~33 ns. The e2e server takes what is
 * buffered with `takeBuffered` and encodes each take in one `JSON.stringify`
 * (`encodeChunksJson`); so does the `ws` host (`takeBuffered`, one encoding per take,
 * `await next()` only when nothing is buffered), so the two differ in transport and in
 * what the sluice server adds (fan-out ring, per-subscriber framing, auth, limits).
 *
 * What is left in the e2e server's CPU per chunk with streams of their own
 * (BENCH_WS_DEBUG; ~500-600 ns on a loaded 2-core machine, ~400 in-process without
 * sockets): `JSON.stringify` of the chunk
 * (~150-175 in a block; V8 11 has no fast path for it), splitting the block at its
 * commas (~50), the stand-in (~35), `encodeChunkData`'s check for bytes and tags
 * (~20), GC (~13%), ring and frame copies. The JSON encoding alone is about as much
 * server CPU per chunk as the client spends, so with ~250 chunks per frame own-stream
 * e2e stays well under the raw baseline (which encodes nothing): see the per-round
 * ratios BENCH_WS_DEBUG prints.
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
import { DEFAULT_WINDOW } from '../protocol/credit.js';
import { MAX_BATCH_CHUNKS } from '../sandbox/driver.js';
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
/** Chunks of the one stream all clients share in the fan-out runs (each client gets all of them). */
const FANOUT_CHUNKS = Number(process.env.BENCH_WS_FANOUT_CHUNKS ?? 60_000);
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

/** HostStream's defaults: the default window, batches of half a window up to the driver's cap (sandbox/driver.ts). */
const STANDIN_WINDOW = DEFAULT_WINDOW.chunks;
const STANDIN_BATCH = Math.min(MAX_BATCH_CHUNKS, STANDIN_WINDOW / 2);

/**
 * A plugin that yields ready chunks, seen through a HostStream-shaped queue: the
 * "sandbox" produces only against credit (STANDIN_WINDOW), its batches arrive
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
  /** The load process's own CPU. */
  cpuMs: number;
}

/** A load run and the CPU the bench process (the server under test) spent meanwhile. */
interface Run extends LoadResult {
  serverCpuMs: number;
}

/** 100 clients, each starting its own stream, or with `streamId` all subscribing to that one (fan-out). */
function runLoad(url: string, token: string, streamId?: string): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const chunks = streamId === undefined ? CHUNKS_PER_CLIENT : FANOUT_CHUNKS;
    const spec = { mode: 'load', url, token, clients: CLIENTS, chunks, window: WINDOW, deadlineMs: DEADLINE_MS, streamId };
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

async function rawUws(chunksPerFrame: number, chunks: number): Promise<{ url: string; close(): void }> {
  const uws = loadNativeUws();
  const jsons: string[] = [];
  for (let i = 0; i < chunks; i++) jsons.push(encodeChunkJson({ i, payload: PAYLOAD }));
  const frames: string[] = [];
  for (let seq = 0; seq < chunks; seq += chunksPerFrame) frames.push(chunksFrameText(1, seq, jsons.slice(seq, seq + chunksPerFrame)));
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
      // A client's one start or subscribe: every client gets the whole stream either way.
      const head = Buffer.from(msg).toString('latin1', 0, 18);
      if (head.startsWith('{"type":"start') || head.startsWith('{"type":"subscribe')) pump(ws);
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
    let grantFanout: ((n: number) => void) | undefined;
    const socket = (ws as unknown as { _socket: Socket })._socket;
    socket.on('drain', () => {
      if (ws.bufferedAmount <= LOW) wake?.();
    });
    const waitForDemand = (): Promise<void> => new Promise((r) => (wake = r));
    ws.on('message', (data: Buffer) => {
      const frame = JSON.parse(data.toString()) as { type: string; n?: number; params?: unknown; credit?: number };
      if (frame.type === 'credit') {
        if (grantFanout !== undefined) grantFanout(frame.n ?? 0);
        credit += frame.n ?? 0;
        wake?.();
      } else if (frame.type === 'subscribe') {
        grantFanout = fanout(frame as unknown as { streamId: string }).join(ws, frame.credit ?? 0);
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
  const groups = new Map<string, WsFanout>();
  const fanout = (frame: { streamId: string }): WsFanout => {
    let g = groups.get(frame.streamId);
    if (g === undefined) {
      const stream = host.getStream(frame.streamId);
      if (stream === undefined) throw new Error(`ws host: no stream ${frame.streamId}`);
      g = new WsFanout(stream, HIGH, LOW);
      groups.set(frame.streamId, g);
      void stream.result.then(() => setTimeout(() => groups.delete(frame.streamId), 1000));
    }
    return g;
  };
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

/**
 * The `ws` host's fan-out, built to favour `ws`: each batch the stream has buffered is
 * encoded once into one frame, kept (no ring bound, no eviction), and the same Buffer is
 * sent to every subscriber as its credit and socket allow; the stream is pulled while
 * any subscriber has caught up and still has credit. Every client uses `sub` 1, so one
 * frame serves all (the sluice server frames per subscriber, whatever its `sub`).
 */
class WsFanout {
  readonly #frames: { bytes: Buffer; count: number }[] = [];
  readonly #members: { ws: WsSocket; credit: number; next: number }[] = [];
  #done = false;
  #pulling = false;
  #it: AsyncIterator<Chunk> | undefined;
  constructor(
    readonly stream: SluiceStream,
    readonly high: number,
    readonly low: number,
  ) {}

  /** Add a subscriber; returns how its credit frames reach it. */
  join(ws: WsSocket, credit: number): (n: number) => void {
    const m = { ws, credit, next: 0 };
    this.#members.push(m);
    (ws as unknown as { _socket: Socket })._socket.on('drain', () => {
      if (ws.bufferedAmount <= this.low) this.#pump(m);
    });
    this.#pump(m);
    return (n) => {
      m.credit += n;
      this.#pump(m);
    };
  }

  #pump(m: { ws: WsSocket; credit: number; next: number }): void {
    while (m.next < this.#frames.length && m.credit > 0 && m.ws.bufferedAmount <= this.high) {
      const f = this.#frames[m.next++]!;
      m.credit -= f.count;
      m.ws.send(f.bytes, { binary: false });
    }
    if (m.next === this.#frames.length) {
      if (this.#done) {
        m.next++;
        m.ws.send('{"type":"end","sub":1,"status":"done"}');
      } else if (m.credit > 0) void this.#pull();
    }
  }

  async #pull(): Promise<void> {
    if (this.#pulling || this.#done) return;
    this.#pulling = true;
    const it = (this.#it ??= this.stream[Symbol.asyncIterator]());
    let buffered = this.stream.takeBuffered?.(256) ?? [];
    if (buffered.length === 0) {
      const r = await it.next();
      if (r.done === true) this.#done = true;
      else buffered = [r.value, ...(this.stream.takeBuffered?.(255) ?? [])];
    }
    if (buffered.length > 0) {
      const { text } = encodeChunksJson(buffered.map((c) => c.data));
      this.#frames.push({ bytes: Buffer.from(chunksFrameText(1, buffered[0]!.seq, [text.slice(0, -1)])), count: buffered.length });
    }
    this.#pulling = false;
    for (const m of this.#members) this.#pump(m);
  }
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
  const rate = (r: Run): number => r.chunks / (r.ms / 1000);
  const serverNs = (r: Run): number => (r.serverCpuMs * 1e6) / r.chunks;

  const extra = process.env.BENCH_WS_SERVER === undefined ? {} : (JSON.parse(process.env.BENCH_WS_SERVER) as object);
  const server = await startServer(host, { host: '127.0.0.1', port: 0, secret: SECRET, maxConnections: 5000, idleTimeoutMs: 0, rateLimit: { burst: 1000, perSecond: 10_000 }, ...extra });

  /** One load run, with the CPU this process (all three servers live in it) spent on it. */
  const timed = async (name: string, url: string, streamId?: string): Promise<Run> => {
    const cpu0 = process.cpuUsage();
    const r = await runLoad(url, token, streamId);
    const cpu = process.cpuUsage(cpu0);
    const run = { ...r, serverCpuMs: (cpu.user + cpu.system) / 1000 };
    if (debug) {
      console.error(
        `${name}: ${r.ms.toFixed(0)} ms, server cpu user ${(cpu.user / 1000).toFixed(0)} ms sys ${(cpu.system / 1000).toFixed(0)} ms (${serverNs(run).toFixed(0)} ns/chunk), client cpu ${r.cpuMs.toFixed(0)} ms, frames ${r.frames}`,
      );
    }
    return run;
  };

  /** A warm-up run of the e2e server; its average frame (chunks per frame) shapes the raw baseline's frames. */
  const warmE2e = async (streamId?: string): Promise<number> => {
    const counters = async (): Promise<[number, number]> => {
      const text = await server.metrics.metrics();
      return [Number(/sluice_server_frames_out_total\{type="chunks"\} (\d+)/.exec(text)?.[1] ?? 0), Number(/sluice_server_chunks_out_total (\d+)/.exec(text)?.[1] ?? 0)];
    };
    const [frames0, chunks0] = await counters();
    await runLoad(server.wsUrl, token, streamId);
    const [frames1, chunks1] = await counters();
    return Math.max(1, Math.round((chunks1 - chunks0) / Math.max(1, frames1 - frames0)));
  };

  // A fresh live stream of the synthetic host for each fan-out run; every client subscribes to it.
  let fanouts = 0;
  const fanStream = (): string => {
    const id = `fanout-${fanouts++}`;
    host.stream('synthetic', 'emit', { n: FANOUT_CHUNKS }, { id });
    return id;
  };

  if (process.env.BENCH_WS_ONLY === 'e2e') {
    await warmE2e();
    const rates: number[] = [];
    const fanRates: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      collectGarbage();
      rates.push(rate(await timed('e2e', server.wsUrl)));
      collectGarbage();
      fanRates.push(rate(await timed('e2e fan-out', server.wsUrl, fanStream())));
    }
    await server.close();
    return { ws_own_streams_chunks_per_s: Math.round(median(rates)), ws_e2e_chunks_per_s: Math.round(median(fanRates)) };
  }

  const ownFrame = await warmE2e();
  const fanFrame = await warmE2e(fanStream());
  const rawOwn = await rawUws(ownFrame, CHUNKS_PER_CLIENT);
  const rawFan = await rawUws(fanFrame, FANOUT_CHUNKS);
  await runLoad(rawOwn.url, token);
  await runLoad(rawFan.url, token, 'raw');
  const viaWs = await wsHost(host);
  await runLoad(viaWs.url, token);
  await runLoad(viaWs.url, token, fanStream());

  // Rounds: every contender once per round, in an order that rotates, each after a
  // forced GC; ratios are taken per round and the median is reported (bench/README.md).
  const raceRounds = async (contenders: readonly (() => Promise<Run>)[]): Promise<Run[][]> => {
    const runs: Run[][] = contenders.map(() => []);
    for (let round = 0; round < ROUNDS; round++) {
      for (let k = 0; k < contenders.length; k++) {
        const c = (round + k) % contenders.length;
        collectGarbage();
        runs[c]!.push(await contenders[c]!());
      }
    }
    return runs;
  };
  const [e2eRuns, rawRuns, wsRuns] = (await raceRounds([
    () => timed('e2e fan-out', server.wsUrl, fanStream()),
    () => timed('raw fan-out', rawFan.url, 'raw'),
    () => timed('ws fan-out', viaWs.url, fanStream()),
  ])) as [Run[], Run[], Run[]];
  const [ownRuns, rawOwnRuns, wsOwnRuns] = (await raceRounds([
    () => timed('e2e own streams', server.wsUrl),
    () => timed('raw own streams', rawOwn.url),
    () => timed('ws own streams', viaWs.url),
  ])) as [Run[], Run[], Run[]];
  rawOwn.close();
  rawFan.close();
  await viaWs.close();
  const ratios = (a: Run[], b: Run[], f: (r: Run) => number): number[] => a.map((r, i) => f(r) / f(b[i]!));
  const vsRaw = ratios(e2eRuns, rawRuns, rate);
  const vsWs = ratios(e2eRuns, wsRuns, rate);
  const cpuVsWs = ratios(wsRuns, e2eRuns, serverNs);
  const ownVsRaw = ratios(ownRuns, rawOwnRuns, rate);
  const ownVsWs = ratios(ownRuns, wsOwnRuns, rate);
  if (debug) {
    const show = (xs: number[]): string => xs.map((x) => x.toFixed(3)).join(' ');
    console.error(`per round, fan-out: vs raw ${show(vsRaw)}; vs ws ${show(vsWs)}; server cpu, ws / e2e ${show(cpuVsWs)}`);
    console.error(`per round, own streams: vs raw ${show(ownVsRaw)}; vs ws ${show(ownVsWs)}`);
  }

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
  // Then the same plugin fanned out: one real stream, the 100 clients subscribed to it.
  const sluice = await Sluice.open({ plugins: REAL_PLUGINS, isolates: false, logger: false });
  const realRates: number[] = [];
  const realFanRates: number[] = [];
  try {
    const realServer = await startServer(asServerHost(sluice), { host: '127.0.0.1', port: 0, secret: SECRET, maxConnections: 5000, idleTimeoutMs: 0, rateLimit: { burst: 1000, perSecond: 10_000 } });
    let realFanouts = 0;
    const realFanStream = (): string => {
      const id = `real-fanout-${realFanouts++}`;
      sluice.stream('synthetic', 'emit', { n: FANOUT_CHUNKS }, { id });
      return id;
    };
    try {
      await runLoad(realServer.wsUrl, token);
      await runLoad(realServer.wsUrl, token, realFanStream());
      for (let round = 0; round < ROUNDS; round++) {
        collectGarbage();
        realRates.push(rate(await timed('real plugin', realServer.wsUrl)));
        collectGarbage();
        realFanRates.push(rate(await timed('real plugin fan-out', realServer.wsUrl, realFanStream())));
      }
    } finally {
      await realServer.close();
    }
  } finally {
    await sluice.close();
  }

  const fixed = (x: number): number => Number(x.toFixed(3));
  const ns = (runs: Run[]): number => Math.round(median(runs.map(serverNs)));
  return {
    ws_e2e_vs_raw_uws: fixed(median(vsRaw)),
    ws_e2e_vs_ws_host: fixed(median(vsWs)),
    ws_e2e_vs_raw_uws_min: fixed(Math.min(...vsRaw)),
    ws_e2e_vs_raw_uws_max: fixed(Math.max(...vsRaw)),
    ws_e2e_vs_ws_host_min: fixed(Math.min(...vsWs)),
    ws_e2e_vs_ws_host_max: fixed(Math.max(...vsWs)),
    ws_e2e_chunks_per_s: Math.round(median(e2eRuns.map(rate))),
    ws_raw_uws_chunks_per_s: Math.round(median(rawRuns.map(rate))),
    ws_ws_host_chunks_per_s: Math.round(median(wsRuns.map(rate))),
    ws_e2e_chunks_per_frame: fanFrame,
    ws_e2e_server_ns_per_chunk: ns(e2eRuns),
    ws_raw_uws_server_ns_per_chunk: ns(rawRuns),
    ws_ws_host_server_ns_per_chunk: ns(wsRuns),
    ws_e2e_server_cpu_vs_ws_host: fixed(median(cpuVsWs)),
    ws_own_streams_vs_raw_uws: fixed(median(ownVsRaw)),
    ws_own_streams_vs_ws_host: fixed(median(ownVsWs)),
    ws_own_streams_vs_raw_uws_min: fixed(Math.min(...ownVsRaw)),
    ws_own_streams_vs_raw_uws_max: fixed(Math.max(...ownVsRaw)),
    ws_own_streams_chunks_per_s: Math.round(median(ownRuns.map(rate))),
    ws_own_streams_chunks_per_frame: ownFrame,
    ws_own_streams_server_ns_per_chunk: ns(ownRuns),
    ws_e2e_real_plugin_chunks_per_s: Math.round(median(realRates)),
    ws_e2e_real_plugin_fanout_chunks_per_s: Math.round(median(realFanRates)),
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
