/**
 * `sluice/client` in a real browser: the SDK bundled for the browser (esbuild,
 * platform 'browser', so a Node import fails the build) and run in headless Chromium
 * against a real server, host and worker plugin on 127.0.0.1. It covers what differs
 * from Node: the browser's own WebSocket (the token travels as a subprotocol, a refused
 * upgrade hides its HTTP status), base64 bytes decoded without Buffer, the Origin
 * allowlist, and reconnecting across a server restart with a durable stream.
 *
 * Chromium comes from the OS (Debian: `apt-get install chromium`; or set
 * SLUICE_CHROMIUM to a Chrome/Chromium binary). Without one these tests are skipped
 * with that message, unless SLUICE_BROWSER_TESTS=require (what `.ci/run` sets after
 * installing it), which makes a missing browser a failure.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { connect as connectTcp, createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { build } from 'esbuild';
import { chromium, type Browser, type Page } from 'playwright-core';
import { Sluice } from '../host/host.js';
import { asServerHost } from '../host/server/adapter.js';
import { startServer, type SluiceServer } from '../host/server/server.js';
import { createToken } from '../host/server/auth.js';
import { SECRET, token } from './server-helpers.js';

const CLIENT_ENTRY = fileURLToPath(new URL('../client/index.js', import.meta.url));
const PAGE_SCRIPT = fileURLToPath(new URL('../../test/fixtures/browser/page.js', import.meta.url));
const PLUGINS = fileURLToPath(new URL('../../test/fixtures/plugin-dirs/browser', import.meta.url));
// Flags from the machine notes: without the background-networking ones Chromium keeps
// dialling Google's hosts, which this network refuses.
const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'];

function findChromium(): string | undefined {
  const candidates = [process.env.SLUICE_CHROMIUM, '/usr/bin/chromium', '/usr/bin/chromium-browser', '/usr/bin/google-chrome'];
  return candidates.find((p): p is string => p !== undefined && p !== '' && existsSync(p));
}

const executablePath = findChromium();
const required = process.env.SLUICE_BROWSER_TESTS === 'require';
const skip = executablePath === undefined && !required ? 'no Chromium found (apt-get install chromium, or set SLUICE_CHROMIUM)' : false;

/** A static site for the page: its origin is the one the server allows (or not). */
async function pageSite(files: Record<string, { type: string; body: string }>): Promise<{ server: Server; origin: string }> {
  const server = createServer((req, res) => {
    const file = files[new URL(req.url ?? '/', 'http://x').pathname];
    if (file === undefined) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { 'content-type': file.type, 'cache-control': 'no-store' }).end(file.body);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, origin: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

/**
 * The address the browser dials: a TCP relay to whichever server runs now, so a restart
 * can bring the server back at the same address at once (rebinding the same port waits
 * out TIME_WAIT for a minute, see test/server-restart.test.ts).
 */
class Relay {
  target = 0;
  readonly #sockets = new Set<Socket>();
  readonly server = createNetServer((inbound) => {
    const outbound = connectTcp({ host: '127.0.0.1', port: this.target });
    for (const [a, b] of [[inbound, outbound], [outbound, inbound]] as const) {
      this.#sockets.add(a);
      a.pipe(b);
      a.on('error', () => b.destroy());
      a.on('close', () => {
        this.#sockets.delete(a);
        b.destroy();
      });
    }
  });
  async listen(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return (this.server.address() as AddressInfo).port;
  }
  close(): void {
    for (const s of this.#sockets) s.destroy();
    this.server.close();
  }
}

let browser: Browser;
let relay: Relay;
let host: Sluice;
let server: SluiceServer;
let dataDir: string;
let allowed: { server: Server; origin: string };
let foreign: { server: Server; origin: string };
let page: Page;
let clientBundle: string;

async function openPage(origin: string): Promise<Page> {
  const p = await browser.newPage();
  p.on('pageerror', (err) => console.error('page error:', err));
  if (process.env.SLUICE_BROWSER_DEBUG !== undefined) p.on('console', (m) => console.error('page:', m.text()));
  await p.goto(`${origin}/`);
  await p.waitForFunction('window.sluiceReady === true', undefined, { timeout: 10_000 });
  return p;
}

const RUN_TIMEOUT_MS = 30_000;

/** Evaluate in the page, bounded: a hung page fails its test instead of the whole file. */
async function run<T>(p: Page, expression: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`page did not answer ${expression} within ${RUN_TIMEOUT_MS} ms`)), RUN_TIMEOUT_MS);
  });
  try {
    return await Promise.race([p.evaluate(expression) as Promise<T>, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function startSluiceServer(): Promise<SluiceServer> {
  return startServer(asServerHost(host), { host: '127.0.0.1', port: 0, secret: SECRET, allowedOrigins: [allowed.origin] });
}

before(async () => {
  if (skip !== false) return;
  if (executablePath === undefined) throw new Error('SLUICE_BROWSER_TESTS=require but no Chromium was found (apt-get install chromium, or set SLUICE_CHROMIUM)');
  const bundled = await build({ entryPoints: [CLIENT_ENTRY], bundle: true, platform: 'browser', format: 'esm', write: false, logLevel: 'silent' });
  clientBundle = bundled.outputFiles[0]!.text;
  dataDir = await mkdtemp(join(tmpdir(), 'sluice-browser-'));
  host = await Sluice.open({ plugins: PLUGINS, dataDir, isolates: false, logger: false });
  const pageScript = await readFile(PAGE_SCRIPT, 'utf8');
  const html = '<!doctype html><meta charset="utf-8"><title>sluice client test</title><script type="module" src="/page.js"></script>';
  const config = { type: 'application/json', body: '' };
  const files = {
    '/': { type: 'text/html; charset=utf-8', body: html },
    '/page.js': { type: 'text/javascript', body: pageScript },
    '/client.js': { type: 'text/javascript', body: clientBundle },
    '/config.json': config,
  };
  allowed = await pageSite(files);
  foreign = await pageSite(files);
  server = await startSluiceServer();
  relay = new Relay();
  relay.target = server.port;
  const relayPort = await relay.listen();
  config.body = JSON.stringify({ wsUrl: `ws://127.0.0.1:${relayPort}/ws`, token: await token({ plugins: ['feed'] }) });
  browser = await chromium.launch({ executablePath, args: CHROMIUM_ARGS });
  page = await openPage(allowed.origin);
});

after(async () => {
  await browser?.close();
  relay?.close();
  await server?.close();
  await host?.destroy();
  allowed?.server.close();
  foreign?.server.close();
  if (dataDir !== undefined) await rm(dataDir, { recursive: true, force: true });
});

test('the SDK bundles for the browser with no Node built-ins and runs in Chromium', { skip }, async () => {
  assert.ok(clientBundle.length > 0);
  assert.doesNotMatch(clientBundle, /from ["']node:|require\(["']node:/);
  const rt = await run<{ hasProcess: boolean; hasBuffer: boolean; userAgent: string }>(page, 'window.sluiceTests.runtime()');
  assert.equal(rt.hasProcess, false);
  assert.equal(rt.hasBuffer, false);
  assert.match(rt.userAgent, /Chrome/);
});

test('start and iterate in the browser: every chunk once, in order, text intact, with a small credit window', { skip }, async () => {
  const r = await run<{ count: number; contiguous: boolean; badData: number }>(page, 'window.sluiceTests.count(5000, 32)');
  assert.deepEqual(r, { count: 5000, contiguous: true, badData: 0 });
});

test('byte chunks arrive as Uint8Array, decoded without Buffer', { skip }, async () => {
  const r = await run<{ isBytes: boolean; values: number[] }[]>(page, 'window.sluiceTests.bytes(300)');
  assert.equal(r.length, 300);
  r.forEach((c, i) => assert.deepEqual(c, { isBytes: true, values: [i & 0xff, 0, 255, 128, 7] }));
});

test('a failing plugin: the chunks before it, then the error with its code', { skip }, async () => {
  const r = await run<{ seqs: number[]; error: { code: string } | null }>(page, 'window.sluiceTests.fail(5)');
  assert.deepEqual(r.seqs, [0, 1, 2, 3, 4]);
  assert.equal(r.error?.code, 'ERR_PLUGIN_THREW');
});

test('a bad token is ERR_UNAUTHORIZED and a foreign origin ERR_FORBIDDEN, though the browser hides the HTTP status', { skip }, async () => {
  const bad = await createToken('another-secret-0123456789-abcdefghijkl', { plugins: ['*'] });
  const r1 = await run<{ error: { code: string } | null }>(page, `window.sluiceTests.connectWith(${JSON.stringify(bad)})`);
  assert.equal(r1.error?.code, 'ERR_UNAUTHORIZED');
  const r2 = await run<{ error: { code: string } | null }>(page, 'window.sluiceTests.connectWith(undefined)');
  assert.equal(r2.error?.code, 'ERR_UNAUTHORIZED');
  const other = await openPage(foreign.origin);
  try {
    const good = await token({ plugins: ['feed'] });
    const r3 = await run<{ error: { code: string } | null }>(other, `window.sluiceTests.connectWith(${JSON.stringify(good)})`);
    assert.equal(r3.error?.code, 'ERR_FORBIDDEN');
  } finally {
    await other.close();
  }
});

test('server restarted mid-stream: the browser reconnects and a durable stream continues exactly', { skip }, async () => {
  const started = await run<{ id: string; read: number }>(page, 'window.sluiceTests.durable(1500, 100)');
  assert.equal(started.read, 100);
  await server.close();
  await new Promise((r) => setTimeout(r, 200));
  server = await startSluiceServer();
  relay.target = server.port;
  const r = await run<{ count: number; contiguous: boolean; gaps: number; error: unknown }>(page, 'window.sluiceDurable');
  assert.deepEqual(r, { count: 1500, contiguous: true, gaps: 0, error: null });
});
