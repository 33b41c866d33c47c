/**
 * Every class of bad client frame gets a coded error frame or a documented close code,
 * and the server and the other connections go on.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CLOSE_CODES } from '../protocol/ws.js';
import { FakeHost, http, rawConnect, startTestServer, token } from './server-helpers.js';

test('malformed, unknown, incomplete, ill-typed and binary frames: ERR_FRAME_INVALID error frames, connection kept', async (t) => {
  const server = await startTestServer(t);
  const c = await rawConnect(t, server, { token: await token() });
  const bad: (string | Buffer)[] = [
    '{not json',
    '',
    '42',
    '[]',
    JSON.stringify({ type: 'launch' }),
    JSON.stringify({ type: 'start', sub: 1, plugin: 'counter' }),
    JSON.stringify({ type: 'credit', sub: 'one', n: 1 }),
    JSON.stringify({ type: 'subscribe', sub: 1, streamId: 5 }),
    Buffer.from([1, 2, 3]),
  ];
  for (const frame of bad) c.ws.send(frame);
  await c.waitFor((x) => x.frames.filter((f) => f.type === 'error').length === bad.length || undefined, 5000, 'one error per bad frame');
  for (const e of c.frames.filter((f) => f.type === 'error')) {
    assert.equal(e.code, 'ERR_FRAME_INVALID');
    assert.equal(e.sub, undefined);
    assert.equal(typeof e.message, 'string');
  }
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 3 }, credit: 10 });
  assert.equal((await c.frame((f) => f.type === 'end')).status, 'done');
  // The subscription number of a live subscription cannot be reused.
  c.send({ type: 'start', sub: 2, plugin: 'counter', action: 'count', params: {}, credit: 0 });
  await c.frame((f) => f.type === 'started' && f.sub === 2);
  c.send({ type: 'start', sub: 2, plugin: 'counter', action: 'count', params: {} });
  const dup = await c.frame((f) => f.type === 'error' && (f.details as { sub?: number } | undefined)?.sub === 2);
  assert.equal(dup.code, 'ERR_FRAME_INVALID');
  assert.equal(c.closeCode, undefined);
});

test('an oversize frame closes that socket with 1009; other connections go on', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { maxPayload: 1024 });
  const tok = await token();
  const other = await rawConnect(t, server, { token: tok });
  const c = await rawConnect(t, server, { token: tok });
  c.send({ type: 'ping', id: 'x'.repeat(2000) });
  assert.equal(await c.closed(), CLOSE_CODES.TOO_BIG);
  // Past uWS's own hard limit (4x) the TCP connection is dropped without a close frame.
  const huge = await rawConnect(t, server, { token: tok });
  huge.send({ type: 'ping', id: 'x'.repeat(10_000) });
  assert.equal(await huge.closed(), 1006);
  other.send({ type: 'ping', id: 'still-here' });
  await other.frame((f) => f.type === 'pong' && f.id === 'still-here');
  const metrics = await http(server, 'GET', '/metrics');
  assert.match(metrics.text, /sluice_server_errors_total\{code="ERR_FRAME_TOO_LARGE"\} 1/);
});

test('a flood of control frames: ERR_RATE_LIMITED once, then close 4029; others unaffected', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { rateLimit: { burst: 20, perSecond: 10 } });
  const tok = await token();
  const other = await rawConnect(t, server, { token: tok });
  const c = await rawConnect(t, server, { token: tok });
  for (let i = 0; i < 500; i++) c.send({ type: 'ping', id: String(i) });
  assert.equal(await c.closed(), CLOSE_CODES.RATE_LIMITED);
  const limited = c.frames.filter((f) => f.type === 'error');
  assert.equal(limited.length, 1);
  assert.equal(limited[0]!.code, 'ERR_RATE_LIMITED');
  const pongs = c.frames.filter((f) => f.type === 'pong').length;
  assert.ok(pongs >= 20 && pongs <= 25, `about a burst of pongs answered, got ${pongs}`);
  other.send({ type: 'ping', id: 'ok' });
  await other.frame((f) => f.type === 'pong' && f.id === 'ok');
});

test('credit for chunks the server sent is never rate limited; credit beyond it is', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { rateLimit: { burst: 5, perSecond: 5 } });
  const c = await rawConnect(t, server, { token: await token() });
  // A window of 2, returned at once for every frame: hundreds of credit frames a second.
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 600 }, credit: 2 });
  c.ws.on('message', (data) => {
    const f = JSON.parse(data.toString()) as { type: string; data?: unknown[] };
    if (f.type === 'chunks') c.send({ type: 'credit', sub: 1, n: f.data!.length });
  });
  const end = await c.frame((f) => f.type === 'end', 'end', 10_000);
  assert.equal(end.status, 'done');
  assert.deepEqual(c.seqs(1), Array.from({ length: 600 }, (_, i) => i));
  assert.equal(c.frames.filter((f) => f.type === 'error').length, 0);
  // Unearned credit (nothing outstanding) pays like any control frame.
  for (let i = 0; i < 50; i++) c.send({ type: 'credit', sub: 9, n: 1 });
  await c.frame((f) => f.type === 'error' && f.code === 'ERR_RATE_LIMITED');
});

test('a client that slows down after being rate limited is not closed', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { rateLimit: { burst: 10, perSecond: 100 } });
  const c = await rawConnect(t, server, { token: await token() });
  for (let i = 0; i < 15; i++) c.send({ type: 'ping', id: `a${i}` });
  await c.frame((f) => f.type === 'error' && f.code === 'ERR_RATE_LIMITED');
  await new Promise((r) => setTimeout(r, 200));
  for (let i = 0; i < 5; i++) c.send({ type: 'ping', id: `b${i}` });
  await c.frame((f) => f.type === 'pong' && f.id === 'b4');
  assert.equal(c.closeCode, undefined);
});

test('the subscription limit per connection: ERR_TOO_MANY_SUBSCRIPTIONS', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { maxSubscriptions: 2 });
  const c = await rawConnect(t, server, { token: await token() });
  for (const sub of [1, 2, 3]) c.send({ type: 'start', sub, plugin: 'counter', action: 'count', params: {} });
  const e = await c.frame((f) => f.type === 'error' && f.sub === 3);
  assert.equal(e.code, 'ERR_TOO_MANY_SUBSCRIPTIONS');
  assert.equal(e.fatal, true);
});

test('a steady flood just above the refill rate is still closed with 4029', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { rateLimit: { burst: 10, perSecond: 200 } });
  const c = await rawConnect(t, server, { token: await token() });
  // ~1000 frames/s for up to 3 s: tokens trickle through, but the bucket never refills.
  const timer = setInterval(() => {
    for (let i = 0; i < 10 && c.closeCode === undefined; i++) c.send({ type: 'ping' });
  }, 10);
  t.after(() => clearInterval(timer));
  assert.equal(await c.closed(3000), CLOSE_CODES.RATE_LIMITED);
  clearInterval(timer);
  assert.equal(c.frames.filter((f) => f.type === 'error' && f.code === 'ERR_RATE_LIMITED').length, 1);
});
