/**
 * The client SDK (`sluice/client`) against a real server: iteration, credit as the
 * application reads, errors, reconnect with a contiguous sequence, subscribe by id.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import WebSocket from 'ws';
import { connect, type WebSocketConstructor } from '../client/index.js';
import { isSluiceError } from '../protocol/errors.js';
import { createToken } from '../host/server/auth.js';
import { FakeHost, sleep, startTestServer, token } from './server-helpers.js';

const WS = WebSocket as unknown as WebSocketConstructor;

test('start and iterate: every chunk once, in order, with decoded bytes', async (t) => {
  const server = await startTestServer(t);
  const client = await connect(server.wsUrl, { token: await token(), WebSocket: WS });
  t.after(() => client.close());
  const got: number[] = [];
  for await (const { seq, data } of client.start<{ i: number }>('counter', 'count', { n: 1000 })) {
    assert.equal(data.i, seq);
    got.push(seq);
  }
  assert.equal(got.length, 1000);
  const bytes: Uint8Array[] = [];
  for await (const { data } of client.start<{ raw: Uint8Array }>('bytes', 'make', { n: 2 })) bytes.push(data.raw);
  assert.deepEqual(bytes.map((b) => [...b]), [[0, 255, 0, 7], [1, 255, 0, 7]]);
});

test('a failed stream throws its code after the chunks before it; a forbidden start throws ERR_FORBIDDEN', async (t) => {
  const server = await startTestServer(t);
  const client = await connect(server.wsUrl, { token: await token({ plugins: ['counter'] }), WebSocket: WS });
  t.after(() => client.close());
  const seen: number[] = [];
  await assert.rejects(
    (async () => {
      for await (const { seq } of client.start('counter', 'fail', { after: 4 })) seen.push(seq);
    })(),
    (err: unknown) => isSluiceError(err, 'ERR_PLUGIN_THREW'),
  );
  assert.deepEqual(seen, [0, 1, 2, 3]);
  const s = client.start('other', 'count');
  await assert.rejects(s.id, (err: unknown) => isSluiceError(err, 'ERR_FORBIDDEN'));
  await assert.rejects(
    (async () => {
      for await (const _ of s) assert.fail('no chunk');
    })(),
    (err: unknown) => isSluiceError(err, 'ERR_FORBIDDEN'),
  );
});

test('connect with a bad token rejects with ERR_UNAUTHORIZED', async (t) => {
  const server = await startTestServer(t);
  const bad = await createToken('another-secret-0123456789-abcdefghijkl', {});
  await assert.rejects(connect(server.wsUrl, { token: bad, WebSocket: WS, reconnect: false }), (err: unknown) => isSluiceError(err, 'ERR_UNAUTHORIZED'));
  await assert.rejects(connect(server.wsUrl, { WebSocket: WS, tokenTransport: 'query' }), (err: unknown) => isSluiceError(err, 'ERR_UNAUTHORIZED'));
});

test('credit follows the application: a slow reader keeps the plugin within one window', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const client = await connect(server.wsUrl, { token: await token(), WebSocket: WS, window: 32 });
  t.after(() => client.close());
  const stream = client.start<{ i: number }>('counter', 'count', {});
  const it = stream[Symbol.asyncIterator]();
  for (let i = 0; i < 10; i++) assert.equal((await it.next()).value?.seq, i);
  const id = await stream.id;
  await sleep(300);
  const produced = host.streams.get(id)!.produced;
  // 32 in flight to the client + the host's prefetch, nothing more while the app sleeps.
  assert.ok(produced <= 10 + 32 + 16 + 1, `produced ${produced}`);
  for (let i = 10; i < 200; i++) assert.equal((await it.next()).value?.seq, i);
  await it.return?.();
});

test('disconnect and reconnect mid-stream: the sequence stays contiguous, no duplicates, no gaps', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const sockets: WebSocket[] = [];
  class Recording extends WebSocket {
    constructor(url: string, protocols?: string | string[]) {
      super(url, protocols);
      sockets.push(this);
    }
  }
  const client = await connect(server.wsUrl, { token: await token(), WebSocket: Recording as unknown as WebSocketConstructor, window: 64, reconnect: { initialDelayMs: 20, maxDelayMs: 200 } });
  t.after(() => client.close());
  const stream = client.start<{ i: number }>('counter', 'count', { n: 3000 });
  const gaps: unknown[] = [];
  stream.on('gap', (g) => gaps.push(g));
  const seqs: number[] = [];
  let drops = 0;
  for await (const { seq, data } of stream) {
    assert.equal(data.i, seq);
    seqs.push(seq);
    // Kill the socket three times, at awkward moments (mid-window).
    if (seq === 500 || seq === 1337 || seq === 2222) {
      sockets.at(-1)!.terminate();
      drops++;
    }
  }
  assert.equal(drops, 3);
  assert.ok(sockets.length >= 4, `reconnected: ${sockets.length} sockets`);
  assert.deepEqual(gaps, []);
  assert.equal(seqs.length, 3000);
  assert.deepEqual(seqs, Array.from({ length: 3000 }, (_, i) => i));
});

test('subscribe by id from a seq; a gap is surfaced as an event when chunks are gone', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host, { fanout: { chunks: 16, bytes: 1 << 20 } });
  const client = await connect(server.wsUrl, { token: await token(), WebSocket: WS });
  t.after(() => client.close());
  const first = client.start<{ i: number }>('counter', 'count', { n: 100 });
  const id = await first.id;
  const all: number[] = [];
  for await (const { seq } of first) all.push(seq);
  assert.equal(all.length, 100);
  // The stream is finished and kept for lingerMs: its ring holds the last 16 chunks.
  const late = client.subscribe<{ i: number }>(id, { fromSeq: 50 });
  const gaps: { fromSeq: number; toSeq: number }[] = [];
  late.on('gap', (g) => gaps.push(g));
  const tail: number[] = [];
  for await (const { seq } of late) tail.push(seq);
  assert.deepEqual(gaps, [{ fromSeq: 50, toSeq: 84 }]);
  assert.deepEqual(tail, Array.from({ length: 16 }, (_, i) => 84 + i));
  assert.deepEqual(late.gaps, gaps);
});
