/** Host behaviour independent of the sandbox: admission, the queue, options, iteration rules. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CONFORMANCE as P, collect, fixture, openHost, outcome, sleep } from './helpers.js';
import { Sluice } from '../host/index.js';

const W = { sandbox: 'worker' } as const;

test('streams beyond the concurrency wait in a priority queue; a full queue is ERR_QUEUE_FULL', async (t) => {
  const host = await openHost(t, { workers: { maxThreads: 1, minThreads: 1 }, maxQueued: 2, cancelGraceMs: 100 });
  const blocker = host.stream(P, 'hang', {}, W);
  const it = blocker[Symbol.asyncIterator]();
  await it.next();
  const order: string[] = [];
  const low = host.stream(P, 'echo', 'low', { ...W, priority: 'low' });
  const high = host.stream(P, 'echo', 'high', { ...W, priority: 'high' });
  await sleep(50);
  assert.equal(low.status, 'queued');
  const full = await outcome(host.stream(P, 'echo', 'third', W));
  assert.equal(full.error?.code, 'ERR_QUEUE_FULL');
  const done = Promise.all([collect(low).then(() => order.push('low')), collect(high).then(() => order.push('high'))]);
  await blocker.cancel();
  await done;
  assert.deepEqual(order, ['high', 'low']);
});

test('a queued stream can be cancelled and never runs', async (t) => {
  const host = await openHost(t, { workers: { maxThreads: 1, minThreads: 1 }, cancelGraceMs: 100 });
  const blocker = host.stream(P, 'hang', {}, W);
  await blocker[Symbol.asyncIterator]().next();
  const queued = host.stream(P, 'count', { to: 3 }, W);
  await sleep(20);
  assert.equal(queued.status, 'queued');
  const result = await queued.cancel();
  assert.equal(result.status, 'cancelled');
  assert.equal(result.chunks, 0);
  await blocker.cancel();
});

test('a stream somebody reads is admitted before one nobody consumes yet', async (t) => {
  const host = await openHost(t, { workers: { maxThreads: 1, minThreads: 1 }, cancelGraceMs: 100 });
  const blocker = host.stream(P, 'hang', {}, W);
  await blocker[Symbol.asyncIterator]().next();
  const unread = host.stream(P, 'echo', 'unread', W);
  const read = host.stream(P, 'echo', 'read', W);
  await sleep(20);
  const reading = collect(read);
  await sleep(20);
  await blocker.cancel();
  await reading;
  // `read` was admitted first even though `unread` was submitted before it.
  const first = await Promise.race([read.result.then(() => 'read'), unread.result.then(() => 'unread')]);
  assert.equal(first, 'read');
  await collect(unread);
});

test('a stream can be iterated only once', async (t) => {
  const host = await openHost(t);
  const stream = host.stream(P, 'count', { to: 2 }, W);
  stream[Symbol.asyncIterator]();
  assert.throws(() => stream[Symbol.asyncIterator](), { code: 'ERR_STREAM_CONSUMED' });
  await stream.cancel();
});

test('breaking out of for-await cancels the plugin', async (t) => {
  const host = await openHost(t);
  const stream = host.stream(P, 'forever', {}, W);
  for await (const c of stream) if (c.seq === 5) break;
  assert.equal((await stream.result).status, 'cancelled');
});

test('options are validated with messages that name the option and the value', async (t) => {
  const host = await openHost(t);
  assert.throws(() => host.stream(P, 'count', {}, { window: { chunks: 0 } }), { code: 'ERR_INVALID_ARGUMENT', message: /`options.window.chunks`.*got 0 \(number\)/ });
  assert.throws(() => host.stream(P, 'count', {}, { limits: { cpuMs: -1 } }), { code: 'ERR_INVALID_ARGUMENT', message: /options.limits.cpuMs/ });
  assert.throws(() => host.stream(P, 'count', {}, { limits: { cpu: 1 } as never }), { code: 'ERR_INVALID_ARGUMENT', message: /options.limits.cpu/ });
  assert.throws(() => host.stream(P, 'count', {}, { sandbox: 'docker' as never }), { code: 'ERR_INVALID_ARGUMENT' });
  assert.throws(() => host.stream('', 'count'), { code: 'ERR_INVALID_ARGUMENT' });
  // Validated before anything starts: a leaked worker pool would keep this test process alive.
  await assert.rejects(Sluice.open({ maxQueued: -1 }), { code: 'ERR_INVALID_ARGUMENT' });
  await assert.rejects(Sluice.open({ retries: { max: -1 } }), { code: 'ERR_INVALID_ARGUMENT', message: /retries\.max/ });
  await assert.rejects(Sluice.open({ resume: 'auto' }), { code: 'ERR_INVALID_ARGUMENT', message: /`resume`/ });
  await assert.rejects(Sluice.open({ memoryBudgetMb: { worker: 1.5 } }), { code: 'ERR_INVALID_ARGUMENT', message: /memoryBudgetMb\.worker/ });
});

test('plugins folder: good plugins are listed, bad manifests are reported with coded errors', async (t) => {
  const host = await openHost(t, { plugins: fixture('plugin-dirs/mixed'), isolates: false });
  assert.deepEqual(host.plugins().map((p) => p.name).sort(), ['folder-plugin', 'good']);
  const problems = Object.fromEntries(host.pluginProblems().map((p) => [p.path.split('/').pop(), p.error.code]));
  assert.deepEqual(problems, {
    'bad-json': 'ERR_MANIFEST_INVALID',
    'bad-limits': 'ERR_MANIFEST_INVALID',
    'bad-sandbox': 'ERR_MANIFEST_INVALID',
    'bad-schema': 'ERR_MANIFEST_INVALID',
    'bad-version.ts': 'ERR_MANIFEST_INVALID',
    'no-actions.ts': 'ERR_PLUGIN_LOAD',
    'syntax-error.ts': 'ERR_PLUGIN_LOAD',
  });
  assert.equal(await host.call('good', 'hello', { name: 'x' }), 'hello x');
  assert.equal(await host.call('folder-plugin', 'ping', {}), 'pong');
  await assert.rejects(host.call('bad-version', 'x', {}), { code: 'ERR_MANIFEST_INVALID' });
  await assert.rejects(Sluice.open({ plugins: fixture('plugin-dirs/mixed'), isolates: false, strictPlugins: true, logger: false }), { code: /ERR_(MANIFEST_INVALID|PLUGIN_LOAD)/ });
});

test('metrics count streams and chunks in the host registry', async (t) => {
  const host = await openHost(t);
  const stream = host.stream(P, 'count', { to: 50 }, W);
  await collect(stream);
  await stream.result; // counted when the sandbox is done, just after the last chunk
  const text = await host.metricsRegistry.metrics();
  assert.match(text, /sluice_chunks_total 50/);
  assert.match(text, /sluice_streams_ended_total\{status="done",code=""\} 1/);
});

test('a plugin loads while every stream thread is busy (loading has a thread of its own)', async (t) => {
  const host = await openHost(t, { workers: { maxThreads: 1, minThreads: 1 }, cancelGraceMs: 100 });
  const blocker = host.stream(P, 'hang', {}, W);
  await blocker[Symbol.asyncIterator]().next();
  const other = host.stream(fixture('plugin-dirs/mixed/good.ts'), 'hello', { name: 'x' }, W);
  // Loading used to queue behind the busy thread until its 10 s describe timeout.
  const deadline = Date.now() + 5000;
  while (!host.plugins().some((p) => p.name === 'good') && Date.now() < deadline) await sleep(20);
  assert.ok(host.plugins().some((p) => p.name === 'good'), 'the plugin loaded while the stream thread was busy');
  await blocker.cancel();
  assert.deepEqual((await collect(other)).map((c) => c.data), ['hello x']);
});

/** A scratch folder of files (path -> contents), removed after the test. */
async function scratch(t: TestContext, files: Record<string, string>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-host-test-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  for (const [path, text] of Object.entries(files)) {
    await mkdir(join(dir, path, '..'), { recursive: true });
    await writeFile(join(dir, path), text);
  }
  return dir;
}

test('an isolate plugin cannot import a file outside its folder, and can import its own', async (t) => {
  const dir = await scratch(t, {
    'secret.json': '{"apiKey":"host-only"}',
    'plugins/leak.mjs': `import cfg from '../secret.json'; export const actions = { async leak() { return cfg; } };`,
    'plugins/linked/index.mjs': `import cfg from './data.json'; export const actions = { async read() { return cfg; } };`,
    'plugins/linked/data.json': '{"mine":true}',
  });
  const host = await openHost(t, { isolates: { processes: 1 } });
  await assert.rejects(host.call(join(dir, 'plugins/leak.mjs'), 'leak', {}), (err: { code?: string; message: string }) => {
    assert.equal(err.code, 'ERR_PLUGIN_LOAD');
    assert.match(err.message, /outside its folder/);
    assert.doesNotMatch(err.message, /host-only/);
    return true;
  });
  assert.deepEqual(await host.call(join(dir, 'plugins/linked'), 'read', {}), { mine: true });
  // A link inside the folder to a file outside is judged by where it leads.
  await symlink(join(dir, 'secret.json'), join(dir, 'plugins/linked/data.json.link'));
  await writeFile(join(dir, 'plugins/linked/index.mjs'), `import cfg from './data.json.link' with { type: 'json' }; export const actions = { async read() { return cfg; } };`);
  await assert.rejects(host.call(join(dir, 'plugins/linked/index.mjs'), 'read', {}), (err: { code?: string; message: string }) => err.code === 'ERR_PLUGIN_LOAD' && /outside its folder/.test(err.message));
});

test('a single-file plugin that imports a Node builtin and exports sandbox "worker" loads and runs in a worker', async (t) => {
  const dir = await scratch(t, {
    'osinfo.mjs': `import { cpus } from 'node:os';
export const manifest = { name: 'osinfo', version: '1.0.0', sandbox: 'worker' };
export const actions = { async n() { return cpus().length > 0; } };`,
    'untrusted.mjs': `import { cpus } from 'node:os';
export const actions = { async n() { return cpus().length > 0; } };`,
  });
  const host = await openHost(t, { isolates: { processes: 1 } });
  assert.equal(await host.call(join(dir, 'osinfo.mjs'), 'n', {}), true);
  // Without the worker sandbox asked for, a module that needs Node is not run at all.
  await assert.rejects(host.call(join(dir, 'untrusted.mjs'), 'n', {}), (err: { code?: string; message: string }) => err.code === 'ERR_PLUGIN_LOAD' && /node:os/.test(err.message));
});

test('call() keeps a plugin manifest\'s maxChunks; its own cap only bounds what nothing else does', async (t) => {
  const dir = await scratch(t, {
    'ten.mjs': `export const manifest = { name: 'ten', version: '1.0.0', sandbox: 'worker', limits: { maxChunks: 3 } };
export const actions = { async *ten() { for (let i = 0; i < 10; i++) yield i; } };`,
  });
  const host = await openHost(t);
  await assert.rejects(host.call(join(dir, 'ten.mjs'), 'ten', {}), (err: { code?: string }) => err.code === 'ERR_LIMIT_CHUNKS');
  assert.deepEqual(await host.call(join(dir, 'ten.mjs'), 'ten', {}, { limits: { maxChunks: 10 } }), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
});

test('isolates.maxStreams must be a positive integer (0 would queue every isolate stream forever)', async () => {
  for (const maxStreams of [0, 1.5, -1]) {
    await assert.rejects(Sluice.open({ logger: false, isolates: { processes: 1, maxStreams } }), (err: { code?: string; message: string }) => err.code === 'ERR_INVALID_ARGUMENT' && /maxStreams/.test(err.message));
  }
});
