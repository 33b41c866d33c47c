/**
 * The WebSocket data path with a plain `ws` client: start, credit, batching, end,
 * failures, binary chunk data, progress, cancel, unsubscribe.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { decodeChunkData } from '../protocol/ws.js';
import { FakeHost, rawConnect, sleep, startTestServer, token } from './server-helpers.js';

test('start delivers every chunk in order, batched, then end done', async (t) => {
  const server = await startTestServer(t);
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 500 }, credit: 1000 });
  const started = await c.frame((f) => f.type === 'started');
  assert.equal(started.sub, 1);
  assert.equal(started.durability, 'none');
  assert.equal(started.seq, 0);
  assert.match(String(started.streamId), /^[A-Za-z0-9_-]{16}\./);
  const end = await c.frame((f) => f.type === 'end');
  assert.deepEqual(end, { type: 'end', sub: 1, status: 'done' });
  const seqs = c.seqs(1);
  assert.deepEqual(seqs, Array.from({ length: 500 }, (_, i) => i));
  const chunkFrames = c.frames.filter((f) => f.type === 'chunks');
  assert.ok(chunkFrames.length < 500, `chunks are batched: ${chunkFrames.length} frames for 500 chunks`);
  const first = chunkFrames[0]!.data as { i: number }[];
  assert.deepEqual(first[0], { i: 0 });
});

test('nothing flows without credit, and exactly the credit granted flows', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 7, plugin: 'counter', action: 'count', params: {} });
  const started = await c.frame((f) => f.type === 'started');
  await sleep(200);
  assert.equal(c.seqs(7).length, 0);
  const stream = host.streams.get(String(started.streamId))!;
  assert.ok(stream.produced <= 16 + 1, `plugin paused at its prefetch window, produced ${stream.produced}`);
  c.send({ type: 'credit', sub: 7, n: 10 });
  await c.waitFor((x) => x.seqs(7).length === 10 || undefined);
  await sleep(150);
  assert.deepEqual(c.seqs(7), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.ok(stream.produced <= 10 + 16 + 1, `produced ${stream.produced}`);
  c.send({ type: 'credit', sub: 7, n: 5 });
  await c.waitFor((x) => x.seqs(7).length === 15 || undefined);
});

test('a failing plugin ends the subscription with status failed and its code; the connection goes on', async (t) => {
  const server = await startTestServer(t);
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'fail', params: { after: 3 }, credit: 100 });
  const end = await c.frame((f) => f.type === 'end');
  assert.equal(end.status, 'failed');
  assert.deepEqual((end.error as { code: string }).code, 'ERR_PLUGIN_THREW');
  assert.deepEqual(c.seqs(1), [0, 1, 2]);
  c.send({ type: 'ping', id: 'after' });
  await c.frame((f) => f.type === 'pong' && f.id === 'after');
});

test('unknown plugin or action: a fatal error frame with the host code', async (t) => {
  const server = await startTestServer(t);
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'nope', action: 'count' });
  c.send({ type: 'start', sub: 2, plugin: 'counter', action: 'nope' });
  const e1 = await c.frame((f) => f.type === 'error' && f.sub === 1);
  const e2 = await c.frame((f) => f.type === 'error' && f.sub === 2);
  assert.equal(e1.code, 'ERR_PLUGIN_NOT_FOUND');
  assert.equal(e1.fatal, true);
  assert.equal(e2.code, 'ERR_ACTION_NOT_FOUND');
});

test('Uint8Array chunk data travels as tagged base64 and decodes back; tag-shaped objects are escaped', async (t) => {
  const server = await startTestServer(t);
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'bytes', action: 'make', params: { n: 2 }, credit: 10 });
  await c.frame((f) => f.type === 'end');
  const frame = c.frames.find((f) => f.type === 'chunks')!;
  const wire = (frame.data as unknown[])[1] as Record<string, unknown>;
  assert.deepEqual(wire.raw, { $bytes: Buffer.from([1, 255, 0, 7]).toString('base64') });
  const decoded = decodeChunkData(wire) as { raw: Uint8Array; $bytes: string; i: number };
  assert.ok(decoded.raw instanceof Uint8Array);
  assert.deepEqual([...decoded.raw], [1, 255, 0, 7]);
  assert.equal(decoded.$bytes, 'not a tag');
});

test('progress frames reach the subscriber', async (t) => {
  const server = await startTestServer(t);
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 30 }, credit: 100 });
  const p = await c.frame((f) => f.type === 'progress');
  assert.equal(p.sub, 1);
  assert.equal(typeof p.fraction, 'number');
});

test('cancel ends the stream as cancelled; unsubscribe stops delivery silently', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { delayMs: 1 }, credit: 5 });
  await c.frame((f) => f.type === 'chunks');
  c.send({ type: 'cancel', sub: 1 });
  const end = await c.frame((f) => f.type === 'end');
  assert.equal(end.status, 'cancelled');
  assert.equal((end.error as { code: string }).code, 'ERR_CANCELLED');

  c.send({ type: 'start', sub: 2, plugin: 'counter', action: 'count', params: {}, credit: 5 });
  await c.waitFor((x) => x.seqs(2).length === 5 || undefined);
  c.send({ type: 'unsubscribe', sub: 2 });
  c.send({ type: 'credit', sub: 2, n: 100 });
  await sleep(200);
  assert.equal(c.seqs(2).length, 5);
  assert.equal(c.frames.filter((f) => f.sub === 2 && f.type === 'end').length, 0);
});
