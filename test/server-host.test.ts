/**
 * The server in front of the real host (`Sluice`) and the example plugins: the isolate
 * `records` plugin and the worker `monitor` plugin, through the SDK and a raw client.
 */
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { test, type TestContext } from 'node:test';
import WebSocket from 'ws';
import { Sluice } from '../host/host.js';
import { asServerHost } from '../host/server/adapter.js';
import { connect, type WebSocketConstructor } from '../client/index.js';
import { isSluiceError } from '../protocol/errors.js';
import { http, rawConnect, sleep, startTestServer, token } from './server-helpers.js';

const PLUGINS = fileURLToPath(new URL('../../plugins', import.meta.url));
const WS = WebSocket as unknown as WebSocketConstructor;

async function realHost(t: TestContext): Promise<Sluice> {
  const host = await Sluice.open({ plugins: PLUGINS, logger: false });
  t.after(() => host.destroy());
  return host;
}

test('records (isolate) through the server: every record in order; monitor (worker) listed', async (t) => {
  const sluice = await realHost(t);
  const server = await startTestServer(t, asServerHost(sluice));
  const tok = await token({ plugins: ['records', 'monitor:watch'] });
  const plugins = await http(server, 'GET', '/api/plugins', { token: tok });
  assert.deepEqual(plugins.body.plugins.map((p: { name: string }) => p.name).sort(), ['monitor', 'records']);
  const client = await connect(server.wsUrl, { token: tok, WebSocket: WS, window: 64 });
  t.after(() => client.close());
  const ids: number[] = [];
  for await (const { seq, data } of client.start<{ id: number }>('records', 'transform', { rows: 2000 })) {
    assert.equal(data.id, seq);
    ids.push(seq);
  }
  assert.equal(ids.length, 2000);
  // Bad params: the host's code reaches the client.
  await assert.rejects(
    (async () => {
      for await (const _ of client.start('records', 'transform', { rows: -1 })) assert.fail('no chunk');
    })(),
    (err: unknown) => isSluiceError(err, 'ERR_PARAMS_INVALID'),
  );
});

test('a client that stops reading pauses a real plugin: the host stops producing', async (t) => {
  const sluice = await realHost(t);
  const server = await startTestServer(t, asServerHost(sluice));
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'records', action: 'transform', params: { rows: 10_000_000 }, credit: 100 });
  const streamId = String((await c.frame((f) => f.type === 'started')).streamId);
  await c.waitFor((x) => x.seqs(1).length === 100 || undefined, 20_000, '100 chunks');
  await sleep(500);
  const stream = sluice.getStream(streamId)!;
  assert.ok(stream !== undefined, 'still running, paused');
  const result = await stream.cancel('test over');
  // 100 sent + the host's credit window (default 1024) + the fan-out's round; far from 10M.
  assert.ok(result.chunks < 100 + 1024 + 256 + 64, `plugin paused: it produced ${result.chunks} chunks`);
});

test('two SDK clients on one real stream, one reconnecting mid-stream: both contiguous', async (t) => {
  const sluice = await realHost(t);
  const server = await startTestServer(t, asServerHost(sluice));
  const tok = await token({ streams: ['*'] });
  const sockets: WebSocket[] = [];
  class Recording extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  const a = await connect(server.wsUrl, { token: tok, WebSocket: Recording as unknown as WebSocketConstructor, window: 32, reconnect: { initialDelayMs: 10, maxDelayMs: 100 } });
  t.after(() => a.close());
  const b = await connect(server.wsUrl, { token: tok, WebSocket: WS, window: 16 });
  t.after(() => b.close());
  const sa = a.start<{ id: number }>('records', 'transform', { rows: 1500 });
  const id = await sa.id;
  const sb = b.subscribe<{ id: number }>(id, { fromSeq: 0 });
  const readB = (async () => {
    const seqs: number[] = [];
    for await (const { seq } of sb) {
      seqs.push(seq);
      if (seq % 100 === 0) await sleep(1);
    }
    return seqs;
  })();
  const seqsA: number[] = [];
  for await (const { seq } of sa) {
    seqsA.push(seq);
    if (seq === 700) sockets[0]!.terminate();
  }
  const seqsB = await readB;
  assert.deepEqual(seqsA, Array.from({ length: 1500 }, (_, i) => i));
  assert.deepEqual(seqsB, Array.from({ length: 1500 }, (_, i) => i));
  assert.deepEqual(sa.gaps, []);
  assert.deepEqual(sb.gaps, []);
});

test("durability 'log' is refused clearly when the host has no durable store", async (t) => {
  const sluice = await realHost(t);
  const server = await startTestServer(t, asServerHost(sluice));
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'records', action: 'transform', params: {}, options: { durability: 'log' } });
  const e = await c.frame((f) => f.type === 'error');
  assert.equal(e.code, 'ERR_INVALID_ARGUMENT');
  assert.match(String(e.message), /durable/);
});

test('durable stream: server and host killed and restarted mid-stream; the SDK resumes with a contiguous sequence', async (t) => {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { startServer } = await import('../host/server/server.js');
  const { SECRET } = await import('./server-helpers.js');
  const dataDir = await mkdtemp(join(tmpdir(), 'sluice-durable-'));
  t.after(() => rm(dataDir, { recursive: true, force: true }));
  const open = (): Promise<Sluice> => Sluice.open({ plugins: PLUGINS, logger: false, dataDir, resume: 'auto' } as Parameters<typeof Sluice.open>[0]);
  let host = await open();
  let server = await startServer(asServerHost(host), { host: '127.0.0.1', port: 0, secret: SECRET });
  const port = server.port;
  t.after(async () => {
    await server.close();
    await host.destroy();
  });
  const client = await connect(server.wsUrl, { token: await token(), WebSocket: WS, window: 64, reconnect: { initialDelayMs: 50, maxDelayMs: 500, maxAttempts: 50 } });
  t.after(() => client.close());
  const TOTAL = 5000;
  // Far more rows than we read: the plugin is still producing when the host goes down.
  const stream = client.start<{ id: number }>('records', 'transform', { rows: 2_000_000 }, { durability: 'log' });
  const seqs: number[] = [];
  let restarted = false;
  let statusAtKill: string | undefined;
  let statusAfter: string | undefined;
  for await (const { seq, data } of stream) {
    assert.equal(data.id, seq);
    seqs.push(seq);
    if (seq === 1000 && !restarted) {
      restarted = true;
      const id = await stream.id;
      statusAtKill = (await host.streamInfo(id))?.status;
      await server.close();
      await host.close();
      host = await open();
      statusAfter = (await host.streamInfo(id))?.status;
      server = await startServer(asServerHost(host), { host: '127.0.0.1', port, secret: SECRET });
    }
    if (seqs.length === TOTAL) break;
  }
  assert.ok(restarted);
  assert.equal(statusAtKill, 'running', 'the plugin was mid-stream when the host went down');
  assert.ok(statusAfter === 'queued' || statusAfter === 'running', `the new host resumed it (status ${String(statusAfter)})`);
  assert.deepEqual(stream.gaps, []);
  assert.deepEqual(seqs, Array.from({ length: TOTAL }, (_, i) => i));
});

test('takeBuffered on a real stream: mixed with next(), every chunk once, in order, and the credit keeps the plugin going', async (t) => {
  const sluice = await realHost(t);
  // A small window: a credit miscount would stall the plugin or trip ERR_PROTOCOL.
  const stream = sluice.stream('records', 'transform', { rows: 3000 }, { window: { chunks: 16 } });
  const it = stream[Symbol.asyncIterator]();
  assert.deepEqual(stream.takeBuffered?.(10), [], 'nothing before the first next()');
  const seqs: number[] = [];
  let max = 1;
  for (;;) {
    const taken = stream.takeBuffered!(max);
    assert.ok(taken.length <= max);
    max = (max % 40) + 1;
    for (const c of taken) {
      assert.equal((c.data as { id: number }).id, c.seq);
      seqs.push(c.seq);
    }
    if (taken.length > 0) continue;
    const r = await it.next();
    if (r.done === true) break;
    seqs.push(r.value.seq);
  }
  assert.deepEqual(seqs, Array.from({ length: 3000 }, (_, i) => i));
  assert.equal((await stream.result).status, 'done');
});
