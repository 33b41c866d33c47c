/**
 * `sluice serve` and `sluice token create` in a child process: a token from the data
 * folder's secret opens a socket; SIGTERM closes it with 1001 and exits 0.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import WebSocket from 'ws';
import { CLOSE_CODES, WS_SUBPROTOCOL } from '../protocol/ws.js';
import { runNode, type NodeRun } from './helpers.js';

const DRIVER = fileURLToPath(new URL('./server-cli-driver.js', import.meta.url));
const PLUGINS = fileURLToPath(new URL('../../plugins', import.meta.url));

const run = (args: string[]): Promise<NodeRun> => runNode(['--no-node-snapshot', DRIVER, ...args]);

test('token create + serve + SIGTERM: the token works, sockets get 1001, exit 0', async (t) => {
  const data = await mkdtemp(join(tmpdir(), 'sluice-cli-'));
  t.after(() => rm(data, { recursive: true, force: true }));
  const bad = await run(['token', 'create', '--data', data, '--ttl', 'soon']);
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /ERR_CLI_USAGE/);
  const made = await run(['token', 'create', '--data', data, '--plugins', 'monitor:watch', '--ttl', '10m']);
  assert.equal(made.code, 0, made.stderr);
  const token = made.stdout.trim();
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
  assert.equal((await stat(join(data, 'server-secret'))).mode & 0o777, 0o600);

  const child = spawn(process.execPath, ['--no-node-snapshot', DRIVER, 'serve', '--port', '0', '--plugins', PLUGINS, '--data', data], { stdio: ['ignore', 'pipe', 'pipe'] });
  t.after(() => child.kill('SIGKILL'));
  let stderr = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`serve did not start: ${stderr}`)), 20_000);
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      const m = /WebSocket (ws:\/\/\S+?)[,)]/.exec(stderr);
      if (m !== null) {
        clearTimeout(timer);
        resolve(m[1]!);
      }
    });
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const ws = new WebSocket(url, [WS_SUBPROTOCOL], { headers: { authorization: `Bearer ${token}` } });
  const frames: Record<string, unknown>[] = [];
  ws.on('message', (d) => frames.push(JSON.parse(d.toString()) as Record<string, unknown>));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  ws.send(JSON.stringify({ type: 'start', sub: 1, plugin: 'monitor', action: 'watch', params: { intervalMs: 10 }, credit: 5 }));
  const deadline = Date.now() + 10_000;
  while (!frames.some((f) => f.type === 'chunks') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.ok(frames.some((f) => f.type === 'chunks'), 'chunks arrived from the real host');
  const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
  child.kill('SIGTERM');
  assert.equal(await closed, CLOSE_CODES.GOING_AWAY);
  assert.equal(await exited, 0, stderr);
  assert.match(stderr, /SIGTERM, shutting down/);
});
