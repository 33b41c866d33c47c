/**
 * HTTP routes: health, metrics, dashboard, the JSON API with its auth, bad bodies and
 * unknown routes; graceful close with 1001.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { CLOSE_CODES } from '../protocol/ws.js';
import { startServer } from '../host/server/server.js';
import { FakeHost, http, rawConnect, SECRET, startTestServer, token } from './server-helpers.js';

test('healthz, metrics (host registry + server metrics) and the dashboard', async (t) => {
  const server = await startTestServer(t);
  const h = await http(server, 'GET', '/healthz');
  assert.equal(h.status, 200);
  assert.equal(h.body.status, 'ok');
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 5 }, credit: 10 });
  await c.frame((f) => f.type === 'end');
  c.ws.send('garbage');
  await c.frame((f) => f.type === 'error');
  const m = await http(server, 'GET', '/metrics');
  assert.equal(m.status, 200);
  assert.match(m.headers.get('content-type') ?? '', /text\/plain/);
  assert.match(m.text, /^fake_host_streams /m, 'the host registry is included');
  assert.match(m.text, /^sluice_server_connections 1$/m);
  assert.match(m.text, /^sluice_server_chunks_out_total 5$/m);
  assert.match(m.text, /^sluice_server_frames_in_total\{type="start"\} 1$/m);
  assert.match(m.text, /^sluice_server_frames_in_total\{type="invalid"\} 1$/m);
  assert.match(m.text, /^sluice_server_errors_total\{code="ERR_FRAME_INVALID"\} 1$/m);
  const d = await http(server, 'GET', '/');
  assert.equal(d.status, 200);
  assert.match(d.headers.get('content-type') ?? '', /text\/html/);
  assert.match(d.text, /fetch\("\/metrics"/);
  assert.match(d.text, /setInterval\(tick, REFRESH_MS\)/);
});

test('API: auth required, plugins filtered by scope, start / inspect / cancel', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const noAuth = await http(server, 'GET', '/api/plugins');
  assert.equal(noAuth.status, 401);
  assert.equal(noAuth.body.error.code, 'ERR_UNAUTHORIZED');
  const tok = await token({ plugins: ['counter:count'] });
  const plugins = await http(server, 'GET', '/api/plugins', { token: tok });
  assert.equal(plugins.status, 200);
  assert.deepEqual(
    plugins.body.plugins.map((p: { name: string; actions: Record<string, unknown> }) => [p.name, Object.keys(p.actions)]),
    [['counter', ['count']]],
  );
  assert.equal(JSON.stringify(plugins.body).includes('/fake/'), false, 'no filesystem paths leak');

  const started = await http(server, 'POST', '/api/streams', { token: tok, body: { plugin: 'counter', action: 'count', params: {} } });
  assert.equal(started.status, 201);
  const id = started.body.id as string;
  assert.equal(started.body.epoch, host.epoch);
  const info = await http(server, 'GET', `/api/streams/${id}`, { token: tok });
  assert.equal(info.status, 200);
  assert.equal(info.body.status, 'running');
  assert.equal(info.body.plugin, 'counter');
  // The started stream can be read over the socket with the same token.
  const c = await rawConnect(t, server, { token: tok });
  c.send({ type: 'subscribe', sub: 1, streamId: id, credit: 3 });
  await c.waitFor((x) => x.seqs(1).length === 3 || undefined);
  const del = await http(server, 'DELETE', `/api/streams/${id}`, { token: tok });
  assert.equal(del.status, 200);
  assert.equal(del.body.status, 'cancelled');
  const forbidden = await http(server, 'POST', '/api/streams', { token: tok, body: { plugin: 'counter', action: 'fail' } });
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.body.error.code, 'ERR_FORBIDDEN');
});

test('API: bad bodies are 400 with a coded error; unknown routes 404 JSON', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { maxPayload: 1024 });
  const tok = await token();
  const cases: [string, { rawBody?: string; body?: unknown }, number, string][] = [
    ['not json', { rawBody: '{oops' }, 400, 'ERR_INVALID_ARGUMENT'],
    ['empty', { rawBody: '' }, 400, 'ERR_INVALID_ARGUMENT'],
    ['array', { body: [1] }, 400, 'ERR_INVALID_ARGUMENT'],
    ['missing action', { body: { plugin: 'counter' } }, 400, 'ERR_INVALID_ARGUMENT'],
    ['sandbox override', { body: { plugin: 'counter', action: 'count', options: { sandbox: 'worker' } } }, 400, 'ERR_INVALID_ARGUMENT'],
    ['too large', { rawBody: JSON.stringify({ plugin: 'counter', action: 'count', params: 'x'.repeat(5000) }) }, 413, 'ERR_FRAME_TOO_LARGE'],
    ['unknown plugin', { body: { plugin: 'nope', action: 'count' } }, 404, 'ERR_PLUGIN_NOT_FOUND'],
  ];
  for (const [name, body, status, code] of cases) {
    const r = await http(server, 'POST', '/api/streams', { token: tok, ...body });
    assert.equal(r.status, status, name);
    assert.equal(r.body?.error?.code, code, name);
  }
  const missing = await http(server, 'GET', '/api/nothing', { token: tok });
  assert.equal(missing.status, 404);
  assert.equal(missing.body.error.code, 'ERR_ROUTE_NOT_FOUND');
  const unknownStream = await http(server, 'GET', '/api/streams/nope', { token: tok });
  assert.equal(unknownStream.status, 404);
  assert.equal(unknownStream.body.error.code, 'ERR_STREAM_NOT_FOUND');
});

test('close(): sockets get 1001 going away, new upgrades are refused, close is idempotent; the host is left open', async (t) => {
  const host = new FakeHost();
  const server = await startServer(host, { host: '127.0.0.1', port: 0, secret: SECRET });
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: {}, credit: 2 });
  await c.frame((f) => f.type === 'started');
  await Promise.all([server.close(), server.close()]);
  assert.equal(await c.closed(), CLOSE_CODES.GOING_AWAY);
  await assert.rejects(rawConnect(t, server, { token: await token() }));
  assert.equal(host.closed, false);
  assert.equal([...host.streams.values()][0]!.status, 'running');
});
