/**
 * Auth at the upgrade (no socket without a valid token), scopes on start / subscribe /
 * cancel, origin, version, connection limit, idle and expiry closes, and the secret file.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, chmod, readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { isSluiceError } from '../protocol/errors.js';
import { CLOSE_CODES } from '../protocol/ws.js';
import { createToken, resolveSecret, SECRET_FILE } from '../host/server/auth.js';
import { FakeHost, http, rawConnect, SECRET, sleep, startTestServer, token } from './server-helpers.js';

async function refused(p: Promise<unknown>): Promise<{ status: number; body: { error: { code: string } } }> {
  try {
    await p;
  } catch (err) {
    const e = err as { status?: number; body?: string };
    assert.ok(e.status !== undefined, `expected an HTTP refusal, got ${String(err)}`);
    return { status: e.status, body: JSON.parse(e.body ?? '{}') };
  }
  assert.fail('the upgrade was accepted');
}

test('no token, a bad signature, an expired token, a wrong audience or garbage: 401 at the upgrade, no socket', async (t) => {
  const server = await startTestServer(t);
  const otherSecret = await createToken('another-secret-0123456789-abcdefghijkl', { plugins: ['*'] });
  const expired = await createToken(SECRET, { plugins: ['*'], ttl: -10 });
  const { SignJWT } = await import('jose');
  const wrongAud = await new SignJWT({ plugins: ['*'] }).setProtectedHeader({ alg: 'HS256' }).setAudience('other').setExpirationTime('1h').sign(new TextEncoder().encode(SECRET));
  const badClaims = await new SignJWT({ plugins: 'all' }).setProtectedHeader({ alg: 'HS256' }).setAudience('sluice').setExpirationTime('1h').sign(new TextEncoder().encode(SECRET));
  const cases: [string, string | undefined][] = [
    ['no token', undefined],
    ['bad signature', otherSecret],
    ['expired', expired],
    ['wrong audience', wrongAud],
    ['ill-typed claims', badClaims],
    ['garbage', 'not.a.jwt'],
  ];
  for (const [name, tok] of cases) {
    for (const via of ['header', 'query', 'protocol'] as const) {
      if (tok === undefined && via !== 'header') continue;
      const r = await refused(rawConnect(t, server, { token: tok, via }));
      assert.equal(r.status, 401, `${name} via ${via}`);
      assert.equal(r.body.error.code, 'ERR_UNAUTHORIZED', `${name} via ${via}`);
    }
  }
  const h = await http(server, 'GET', '/healthz');
  assert.equal(h.body.connections, 0);
});

test('a valid token works as header, query parameter or subprotocol entry; the token is never echoed', async (t) => {
  const server = await startTestServer(t);
  const tok = await token();
  for (const via of ['header', 'query', 'protocol'] as const) {
    const c = await rawConnect(t, server, { token: tok, via });
    assert.equal(c.ws.protocol, 'sluice.v1', via);
    c.send({ type: 'ping', id: via });
    await c.frame((f) => f.type === 'pong' && f.id === via);
  }
});

test('origin allowlist, protocol version and connection limit are enforced at the upgrade', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { allowedOrigins: ['https://ok.example'], maxConnections: 2 });
  const tok = await token();
  const bad = await refused(rawConnect(t, server, { token: tok, headers: { origin: 'https://evil.example' } }));
  assert.equal(bad.status, 403);
  assert.equal(bad.body.error.code, 'ERR_FORBIDDEN');
  const v2 = await refused(rawConnect(t, server, { token: tok, protocols: ['sluice.v2'] }));
  assert.equal(v2.status, 400);
  const a = await rawConnect(t, server, { token: tok, headers: { origin: 'https://ok.example' } });
  await rawConnect(t, server, { token: tok });
  const full = await refused(rawConnect(t, server, { token: tok }));
  assert.equal(full.status, 503);
  assert.equal(full.body.error.code, 'ERR_TOO_MANY_CONNECTIONS');
  a.ws.close();
  await a.closed();
  const deadline = Date.now() + 3000;
  for (;;) {
    try {
      await rawConnect(t, server, { token: tok });
      break;
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(20);
    }
  }
});

test('start scopes: only the plugins / actions the token lists', async (t) => {
  const server = await startTestServer(t);
  const c = await rawConnect(t, server, { token: await token({ plugins: ['counter:count', 'bytes'] }) });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'fail', params: {} });
  c.send({ type: 'start', sub: 2, plugin: 'other', action: 'count' });
  c.send({ type: 'start', sub: 3, plugin: 'counter', action: 'count', params: { n: 2 }, credit: 10 });
  c.send({ type: 'start', sub: 4, plugin: 'bytes', action: 'make', params: { n: 1 }, credit: 10 });
  for (const sub of [1, 2]) {
    const e = await c.frame((f) => f.type === 'error' && f.sub === sub);
    assert.equal(e.code, 'ERR_FORBIDDEN');
    assert.equal(e.fatal, true);
  }
  assert.equal((await c.frame((f) => f.type === 'end' && f.sub === 3)).status, 'done');
  assert.equal((await c.frame((f) => f.type === 'end' && f.sub === 4)).status, 'done');
  const none = await rawConnect(t, server, { token: await token({ plugins: [] }) });
  none.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count' });
  assert.equal((await none.frame((f) => f.type === 'error')).code, 'ERR_FORBIDDEN');
});

test("a stream the token may not read is indistinguishable from one that does not exist", async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const owner = await rawConnect(t, server, { token: await token() });
  owner.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: {}, credit: 1 });
  const streamId = String((await owner.frame((f) => f.type === 'started')).streamId);

  const stranger = await rawConnect(t, server, { token: await token() });
  stranger.send({ type: 'subscribe', sub: 1, streamId });
  const fakeId = `${streamId.slice(0, -3)}zzz`;
  stranger.send({ type: 'subscribe', sub: 2, streamId: fakeId });
  const e1 = await stranger.frame((f) => f.type === 'error' && f.sub === 1);
  const e2 = await stranger.frame((f) => f.type === 'error' && f.sub === 2);
  assert.deepEqual({ ...e1, message: String(e1.message).replace(streamId, 'ID'), sub: 0 }, { ...e2, message: String(e2.message).replace(fakeId, 'ID'), sub: 0 });
  assert.equal(e1.code, 'ERR_STREAM_NOT_FOUND');
  assert.equal(stranger.seqs(1).length, 0);

  // Over HTTP too: same status and code for forbidden and unknown.
  const strangerToken = await token();
  const r1 = await http(server, 'GET', `/api/streams/${streamId}`, { token: strangerToken });
  const r2 = await http(server, 'GET', `/api/streams/${fakeId}`, { token: strangerToken });
  assert.equal(r1.status, 404);
  assert.equal(r2.status, 404);
  assert.equal(r1.body.error.code, r2.body.error.code);
  const d1 = await http(server, 'DELETE', `/api/streams/${streamId}`, { token: strangerToken });
  assert.equal(d1.status, 404);
  assert.equal(host.streams.get(streamId)!.status, 'running');

  // A token listing the id may read it but not cancel it; '*' may do both.
  const reader = await rawConnect(t, server, { token: await token({ streams: [streamId] }) });
  reader.send({ type: 'subscribe', sub: 5, streamId, credit: 3 });
  await reader.frame((f) => f.type === 'started');
  reader.send({ type: 'cancel', sub: 5 });
  const denied = await reader.frame((f) => f.type === 'error' && f.sub === 5);
  assert.equal(denied.code, 'ERR_FORBIDDEN');
  assert.notEqual(denied.fatal, true);
  const admin = await rawConnect(t, server, { token: await token({ streams: ['*'] }) });
  admin.send({ type: 'subscribe', sub: 1, streamId, credit: 100 });
  await admin.frame((f) => f.type === 'started');
  admin.send({ type: 'cancel', sub: 1 });
  assert.equal((await admin.frame((f) => f.type === 'end')).status, 'cancelled');
});

test('an idle connection is closed with 4000; an expired token closes with 4001', async (t) => {
  const server = await startTestServer(t, new FakeHost(), { idleTimeoutMs: 300 });
  const idle = await rawConnect(t, server, { token: await token() });
  assert.equal(await idle.closed(3000), CLOSE_CODES.IDLE);

  const server2 = await startTestServer(t, new FakeHost(), { idleTimeoutMs: 0 });
  const short = await createToken(SECRET, { plugins: ['*'], ttl: 2 });
  const c = await rawConnect(t, server2, { token: short });
  assert.equal(await c.closed(5000), CLOSE_CODES.UNAUTHORIZED);
  assert.match(c.closeReason, /^ERR_UNAUTHORIZED/);
});

test('the token secret: generated once into the data folder with mode 0600 and reused; env wins; loose files refused', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-secret-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const first = await resolveSecret({ dataDir: dir, env: {} });
  const file = join(dir, SECRET_FILE);
  assert.equal((await stat(file)).mode & 0o777, 0o600);
  assert.equal((await readFile(file, 'utf8')).trim(), first);
  assert.equal(await resolveSecret({ dataDir: dir, env: {} }), first);
  const fromEnv = 'env-secret-0123456789-abcdefghijklmnopq';
  assert.equal(await resolveSecret({ dataDir: dir, env: { SLUICE_SECRET: fromEnv } }), fromEnv);
  await chmod(file, 0o644);
  await assert.rejects(resolveSecret({ dataDir: dir, env: {} }), (err: unknown) => isSluiceError(err, 'ERR_CONFIG_INVALID'));
  await assert.rejects(resolveSecret({ env: {} }), (err: unknown) => isSluiceError(err, 'ERR_CONFIG_INVALID'));
  await assert.rejects(resolveSecret({ secret: 'short', env: {} }), (err: unknown) => isSluiceError(err, 'ERR_CONFIG_INVALID'));
});
