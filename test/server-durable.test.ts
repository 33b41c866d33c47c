/**
 * Durable (`durability: 'log'`) streams through the server, against the fake host's
 * log: each reader goes at its own pace through `host.read`, resumes from a seq, sees
 * a reset when the epoch changed, and survives a server restart (the host lives on).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { connect, type WebSocketConstructor } from '../client/index.js';
import { startServer } from '../host/server/server.js';
import { FakeHost, rawConnect, SECRET, sleep, startTestServer, token } from './server-helpers.js';

const WS = WebSocket as unknown as WebSocketConstructor;

test('durable: a stalled reader does not slow another; both get everything; resume from a seq', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const tok = await token({ streams: ['*'] });
  const fast = await rawConnect(t, server, { token: tok });
  fast.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 2000 }, options: { durability: 'log' }, credit: 5000 });
  const started = await fast.frame((f) => f.type === 'started');
  assert.equal(started.durability, 'log');
  const streamId = String(started.streamId);
  const stalled = await rawConnect(t, server, { token: tok });
  stalled.send({ type: 'subscribe', sub: 3, streamId, credit: 10 });
  await fast.frame((f) => f.type === 'end', 'fast end', 10_000);
  assert.deepEqual(fast.seqs(1), Array.from({ length: 2000 }, (_, i) => i));
  await stalled.waitFor((x) => x.seqs(3).length === 10 || undefined);
  await sleep(100);
  assert.deepEqual(stalled.seqs(3), Array.from({ length: 10 }, (_, i) => i), 'exactly its credit');
  stalled.send({ type: 'credit', sub: 3, n: 5000 });
  await stalled.frame((f) => f.type === 'end' && f.sub === 3, 'stalled end', 10_000);
  assert.deepEqual(stalled.seqs(3), Array.from({ length: 2000 }, (_, i) => i));
  // A new reader from seq 1500 gets exactly 1500..1999, then the end.
  const late = await rawConnect(t, server, { token: tok });
  late.send({ type: 'subscribe', sub: 1, streamId, fromSeq: 1500, epoch: host.epoch, credit: 1000 });
  const end = await late.frame((f) => f.type === 'end');
  assert.equal(end.status, 'done');
  assert.deepEqual(late.seqs(1), Array.from({ length: 500 }, (_, i) => 1500 + i));
});

test('durable: a reader with a stale epoch gets reset, then seqs from 0', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const tok = await token({ streams: ['*'] });
  const c = await rawConnect(t, server, { token: tok });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 20 }, options: { durability: 'log' }, credit: 100 });
  const streamId = String((await c.frame((f) => f.type === 'started')).streamId);
  await c.frame((f) => f.type === 'end');
  const client = await connect(server.wsUrl, { token: tok, WebSocket: WS });
  t.after(() => client.close());
  const s = client.subscribe<{ i: number }>(streamId, { fromSeq: 15, epoch: 'an-old-epoch' });
  const resets: string[] = [];
  s.on('reset', (r) => resets.push(r.epoch));
  const seqs: number[] = [];
  for await (const { seq } of s) seqs.push(seq);
  assert.deepEqual(resets, [host.epoch]);
  assert.deepEqual(seqs, Array.from({ length: 20 }, (_, i) => i));
});

test('durable: the server restarts mid-stream; the SDK reconnects and the sequence stays contiguous', async (t) => {
  const host = new FakeHost();
  let server = await startServer(host, { host: '127.0.0.1', port: 0, secret: SECRET });
  const port = server.port;
  t.after(() => server.close());
  const client = await connect(server.wsUrl, { token: await token(), WebSocket: WS, window: 50, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  t.after(() => client.close());
  const stream = client.start<{ i: number }>('counter', 'count', { n: 3000 }, { durability: 'log' });
  const seqs: number[] = [];
  let restarted = false;
  for await (const { seq, data } of stream) {
    assert.equal(data.i, seq);
    seqs.push(seq);
    if (seq === 1000 && !restarted) {
      restarted = true;
      await server.close();
      await sleep(100);
      server = await startServer(host, { host: '127.0.0.1', port, secret: SECRET });
    }
  }
  assert.ok(restarted);
  assert.deepEqual(stream.gaps, []);
  assert.deepEqual(seqs, Array.from({ length: 3000 }, (_, i) => i));
});
