/**
 * Restarting the server on its port. The server closes its sockets first (RFC 6455), so
 * after a shutdown with clients connected the kernel keeps the port in TIME_WAIT for a
 * minute, and this uWS build does not set SO_REUSEADDR: a restart must wait that out,
 * while a port somebody really listens on must fail at once.
 */
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import { test } from 'node:test';
import type { AddressInfo } from 'node:net';
import { startServer } from '../host/server/server.js';
import { isSluiceError } from '../protocol/errors.js';
import { FakeHost, rawConnect, SECRET, startTestServer, token } from './server-helpers.js';

test('a port another process listens on fails at once with ERR_CONFIG_INVALID', async (t) => {
  const other = createServer();
  await new Promise<void>((resolve) => other.listen(0, '127.0.0.1', resolve));
  t.after(() => other.close());
  const port = (other.address() as AddressInfo).port;
  const started = performance.now();
  await assert.rejects(startServer(new FakeHost(), { host: '127.0.0.1', port, secret: SECRET }), (err: unknown) => isSluiceError(err, 'ERR_CONFIG_INVALID') && /address in use/.test((err as Error).message));
  assert.ok(performance.now() - started < 5000, 'failed without waiting');
});

test('an address that is not this machine\'s fails at once with ERR_CONFIG_INVALID', async () => {
  const started = performance.now();
  await assert.rejects(startServer(new FakeHost(), { host: '192.0.2.1', port: 18080, secret: SECRET }), (err: unknown) => isSluiceError(err, 'ERR_CONFIG_INVALID') && /not available/.test((err as Error).message));
  assert.ok(performance.now() - started < 5000, 'failed without waiting');
});

test('restart on the same port right after a shutdown with a client connected: waits out TIME_WAIT, then serves', async (t) => {
  const host = new FakeHost();
  const first = await startTestServer(t, host);
  const port = first.port;
  // A request with Connection: close: the server answers and closes first, leaving its side of the
  // connection in TIME_WAIT (what a shutdown does to every WebSocket a browser holds).
  const answer = await new Promise<string>((resolve, reject) => {
    let text = '';
    const socket = connect({ host: '127.0.0.1', port }, () => socket.write('GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    socket.on('data', (d) => (text += d.toString()));
    socket.on('end', () => resolve(text));
    socket.on('error', reject);
  });
  assert.match(answer, /^HTTP\/1\.1 200/);
  await first.close();
  let waited = 0;
  const second = await startServer(host, { host: '127.0.0.1', port, secret: SECRET, onWaitingForPort: () => waited++ });
  t.after(() => second.close());
  assert.equal(second.port, port);
  assert.equal(waited, 1, 'the port was in TIME_WAIT and the wait was announced once');
  const c2 = await rawConnect(t, second, { token: await token() });
  c2.send({ type: 'ping', id: 'y' });
  await c2.frame((f) => f.type === 'pong' && f.id === 'y');
});
