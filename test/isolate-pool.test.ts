/**
 * The isolate sandbox, driven through the SandboxPool interface the host uses: what a
 * consumer of the pool observes (messages, exit errors, processes alive or gone).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import vm from 'node:vm';
import { fileURLToPath } from 'node:url';
import { IsolatePool, type IsolatePoolOptions } from '../host/sandbox/isolate-pool.js';
import type { BundledPlugin, SandboxHandle } from '../host/sandbox/types.js';
import { bundleForIsolate } from '../sandbox/isolate/bundle.js';
import { SluiceError } from '../protocol/errors.js';
import type { FromSandbox, StartSpec } from '../protocol/messages.js';
import type { TestContext } from 'node:test';

const fixture = (name: string): string => fileURLToPath(new URL(`../../test/fixtures/plugins/${name}`, import.meta.url));

async function load(name: string): Promise<BundledPlugin> {
  const script = await bundleForIsolate(fixture(name));
  return { id: createHash('sha256').update(script).digest('hex').slice(0, 16), name, modulePath: '', script };
}

const MAIN = await load('isolate-main.ts');

function openPool(t: TestContext, options: IsolatePoolOptions = {}): IsolatePool {
  const pool = new IsolatePool(options);
  t.after(() => pool.destroy());
  return pool;
}

let nextId = 0;

interface RunOptions {
  window?: { chunks: number; bytes: number };
  limits?: Partial<StartSpec['limits']>;
  /** Return each batch's credit as soon as it arrives (a consumer that keeps up). Default true. */
  autoCredit?: boolean;
  plugin?: BundledPlugin;
  deadlineMs?: number;
  onMessage?: (msg: FromSandbox, run: Run) => void;
}

interface Outcome {
  chunks: unknown[];
  messages: FromSandbox[];
  logs: string[];
  /** The stream's own last message, if it sent one. */
  last: FromSandbox | undefined;
  /** What exit() reported. */
  exit: SluiceError | undefined;
  ms: number;
}

interface Run {
  handle: SandboxHandle;
  outcome: Promise<Outcome>;
  chunks: unknown[];
  startedAt: number;
}

/** Start a stream and collect everything it sends; the outcome rejects if exit() never comes. */
async function run(pool: IsolatePool, action: string, params: unknown, o: RunOptions = {}): Promise<Run> {
  const window = o.window ?? { chunks: 64, bytes: 1 << 20 };
  const spec: StartSpec = {
    streamId: `s${++nextId}`,
    action,
    params,
    window,
    limits: { maxChunkBytes: 1 << 20, memoryMb: 64, cpuMs: 0, ...o.limits },
  };
  const messages: FromSandbox[] = [];
  const chunks: unknown[] = [];
  const logs: string[] = [];
  let exits = 0;
  let resolveOutcome!: (v: Outcome) => void;
  let rejectOutcome!: (e: Error) => void;
  const outcome = new Promise<Outcome>((resolve, reject) => {
    resolveOutcome = resolve;
    rejectOutcome = reject;
  });
  const startedAt = performance.now();
  const deadlineMs = o.deadlineMs ?? 15_000;
  let timer: NodeJS.Timeout | undefined;
  const r = { chunks, startedAt, outcome } as Run;
  // Checked here and reported through the outcome: throwing inside the pool's callbacks
  // would not reach the test.
  const violations: string[] = [];
  r.handle = await pool.start(o.plugin ?? MAIN, spec, {
    message(msg) {
      if (exits > 0) violations.push(`message after exit: ${msg.type}`);
      messages.push(msg);
      if (msg.type === 'batch') {
        const expected = chunks.length + (spec.resume?.seq ?? 0);
        if (msg.firstSeq !== expected) violations.push(`batch firstSeq ${msg.firstSeq}, expected ${expected}`);
        chunks.push(...msg.chunks);
        if (o.autoCredit !== false) r.handle.send({ type: 'credit', chunks: msg.chunks.length, bytes: msg.bytes });
      }
      if (msg.type === 'log') logs.push(msg.message);
      try {
        o.onMessage?.(msg, r);
      } catch (err) {
        violations.push(String(err));
      }
    },
    exit(error) {
      exits++;
      if (exits > 1) {
        violations.push('exit() called more than once');
        rejectOutcome(new Error(violations.join('; ')));
        return;
      }
      clearTimeout(timer);
      if (violations.length > 0) {
        rejectOutcome(new Error(violations.join('; ')));
        return;
      }
      const last = messages.at(-1);
      resolveOutcome({
        chunks,
        messages,
        logs,
        last: last?.type === 'end' || last?.type === 'error' ? last : undefined,
        exit: error,
        ms: performance.now() - startedAt,
      });
    },
  });
  if (exits === 0) timer = setTimeout(() => rejectOutcome(new Error(`stream ${action} did not exit within ${deadlineMs} ms`)), deadlineMs);
  return r;
}

async function runToEnd(pool: IsolatePool, action: string, params: unknown, o: RunOptions = {}): Promise<Outcome> {
  return (await run(pool, action, params, o)).outcome;
}

function errorCode(out: Outcome): string | undefined {
  if (out.exit !== undefined) return out.exit.code;
  return out.last?.type === 'error' ? out.last.error.code : undefined;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function waitFor(what: string, predicate: () => boolean | Promise<boolean>, deadlineMs = 5000): Promise<void> {
  const deadline = Date.now() + deadlineMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(20);
  }
}

// ---------------------------------------------------------------------------------

test('chunks arrive in order with contiguous seq; a unary result is one chunk', async (t) => {
  const pool = openPool(t);
  const out = await runToEnd(pool, 'count', { to: 3000 }, { window: { chunks: 64, bytes: 1 << 20 } });
  assert.equal(out.exit, undefined);
  assert.deepEqual(out.last, { type: 'end', kind: 'stream' });
  assert.equal(out.chunks.length, 3000);
  out.chunks.forEach((c, i) => assert.deepEqual(c, { i }));
  // Batched: far fewer messages than chunks.
  assert.ok(out.messages.length < 3000 / 16, `expected batches, got ${out.messages.length} messages`);

  const unary = await runToEnd(pool, 'echo', { a: [1, 'x', null] });
  assert.deepEqual(unary.chunks, [{ a: [1, 'x', null] }]);
  assert.deepEqual(unary.last, { type: 'end', kind: 'unary' });
});

test('the plugin never runs more than one window ahead of the credit granted', async (t) => {
  const pool = openPool(t);
  const window = { chunks: 8, bytes: 1 << 20 };
  let granted = window.chunks;
  const r = await run(pool, 'forever', {}, {
    window,
    autoCredit: false,
    onMessage(msg) {
      if (msg.type === 'batch') assert.ok(r.chunks.length <= granted, `received ${r.chunks.length} chunks with ${granted} granted`);
    },
  });
  // Grant 3 chunks at a time, only after the window filled up.
  while (granted < 50) {
    await waitFor(`${granted} chunks`, () => r.chunks.length === granted);
    granted += 3;
    r.handle.send({ type: 'credit', chunks: 3, bytes: 300 });
  }
  await waitFor(`${granted} chunks`, () => r.chunks.length === granted);
  await sleep(200); // no credit: nothing more may come
  assert.equal(r.chunks.length, granted);
  r.handle.send({ type: 'cancel', reason: 'enough' });
  const out = await r.outcome;
  assert.equal(out.exit, undefined);
  assert.equal(errorCode(out), 'ERR_CANCELLED');
  // The generator's own count of chunks it was asked for, reported from `finally`.
  assert.deepEqual(out.logs, [`finally produced=${granted}`]);
  out.chunks.forEach((c, i) => assert.equal(c, i + 1));
});

test('cooperative cancel runs the plugin finally, then the stream ends ERR_CANCELLED', async (t) => {
  const pool = openPool(t);
  const r = await run(pool, 'forever', {}, {
    window: { chunks: 16, bytes: 1 << 20 },
    autoCredit: false,
    onMessage(msg, run) {
      if (msg.type === 'batch' && run.chunks.length === 16) run.handle.send({ type: 'cancel', reason: 'user' });
    },
  });
  const out = await r.outcome;
  assert.equal(out.exit, undefined);
  const tail = out.messages.slice(-2);
  assert.deepEqual(tail[0], { type: 'log', level: 'info', message: 'finally produced=16' });
  assert.equal(tail[1]?.type, 'error');
  assert.equal(errorCode(out), 'ERR_CANCELLED');
});

for (const action of ['hang', 'spin'] as const) {
  test(`terminate stops a plugin stuck in ${action === 'hang' ? 'await new Promise(() => {})' : 'for(;;){}'}, and only it`, async (t) => {
    const pool = openPool(t);
    const r = await run(pool, action, {});
    if (action === 'spin') await waitFor('the spin to start', () => r.chunks.length === 1);
    else await sleep(100);
    const [stats] = await pool.processStats();
    assert.equal(stats?.isolates, 1);
    const pid = pool.pids()[0];
    const reason = new SluiceError('ERR_CANCELLED', 'hard stop');
    const t0 = performance.now();
    r.handle.terminate(reason);
    const out = await r.outcome;
    assert.equal(out.exit, reason);
    assert.ok(performance.now() - t0 < 1000, 'terminate took over 1 s');
    assert.equal((await pool.processStats())[0]?.isolates, 0);
    // Same process, still serving.
    assert.equal(pool.pids()[0], pid);
    assert.equal((await runToEnd(pool, 'count', { to: 5 })).chunks.length, 5);
  });
}

test('cpuMs limit: a spinning plugin ends ERR_LIMIT_CPU within limit + 250 ms', async (t) => {
  const pool = openPool(t);
  await runToEnd(pool, 'echo', 1); // process warm
  const cpuMs = 300;
  const out = await runToEnd(pool, 'spin', {}, { limits: { cpuMs } });
  assert.equal(out.exit?.code, 'ERR_LIMIT_CPU');
  assert.ok(out.ms < cpuMs + 250, `took ${Math.round(out.ms)} ms`);
  assert.deepEqual(out.chunks, ['spinning']);
});

test('memoryMb limit: a growing array ends ERR_LIMIT_MEMORY, the process lives on', async (t) => {
  const pool = openPool(t);
  await runToEnd(pool, 'echo', 1);
  const pid = pool.pids()[0];
  const fast = await runToEnd(pool, 'growFast', {}, { limits: { memoryMb: 16 } });
  assert.equal(fast.exit?.code, 'ERR_LIMIT_MEMORY');
  // Growing between timer ticks, at 64 MiB the process's heap poll sees it first
  // (isolated-vm alone lets a heap run past memoryLimit before it steps in).
  const slow = await runToEnd(pool, 'growSlow', {}, { limits: { memoryMb: 64 } });
  assert.equal(slow.exit?.code, 'ERR_LIMIT_MEMORY');
  assert.match(slow.exit?.message ?? '', /used \d+ MiB, over its 64 MiB/);
  assert.ok(slow.chunks.length > 0, 'growSlow yielded before the limit');
  assert.equal(pool.pids()[0], pid);
  assert.equal(pool.stats().replaced, 0);
  assert.equal((await runToEnd(pool, 'count', { to: 3 })).chunks.length, 3);
});

test('a sandbox process that aborts (SIGABRT, as V8 does on a fatal OOM) fails only its own stream; the pool replaces it', async (t) => {
  const pool = openPool(t, { processes: 2 });
  // Both processes up, so the two streams land on different ones (least loaded).
  await Promise.all([runToEnd(pool, 'echo', 1), runToEnd(pool, 'echo', 2)]);
  await waitFor('2 processes', () => pool.pids().length === 2);
  const pidsBefore = pool.pids();
  const victim = await run(pool, 'hang', {});
  let victimPid = 0;
  await waitFor('the victim to be placed', async () => (victimPid = (await pool.processStats()).find((p) => p.isolates === 1)?.pid ?? 0) > 0);
  const steady = await run(pool, 'slowCount', { to: 400, every: 10, batch: 10 });
  assert.deepEqual((await pool.processStats()).map((p) => p.isolates), [1, 1]);
  await waitFor('the steady stream under way', () => steady.chunks.length > 0);
  process.kill(victimPid, 'SIGABRT');
  const crashed = await victim.outcome;
  assert.equal(crashed.exit?.code, 'ERR_SANDBOX_CRASHED');
  assert.equal(crashed.exit?.retriable, true);
  const done = await steady.outcome;
  assert.equal(done.exit, undefined);
  assert.deepEqual(done.last, { type: 'end', kind: 'stream' });
  assert.deepEqual(done.chunks, Array.from({ length: 400 }, (_, i) => i));
  assert.deepEqual(pidsBefore.filter((pid) => !alive(pid)), [victimPid]);
  assert.equal(pool.stats().replaced, 1);
  await waitFor('a replacement process', () => pool.pids().length === 2);
  assert.ok(!pool.pids().includes(victimPid));
  const again = await Promise.all([runToEnd(pool, 'count', { to: 50 }), runToEnd(pool, 'count', { to: 50 })]);
  for (const o of again) assert.equal(o.chunks.length, 50);
});

test('a plugin whose Map outgrows its memory ends with a coded error, aborting its process or not; other streams go on', async (t) => {
  const pool = openPool(t, { processes: 2 });
  await Promise.all([runToEnd(pool, 'echo', 1), runToEnd(pool, 'echo', 2)]);
  await waitFor('2 processes', () => pool.pids().length === 2);
  const pidsBefore = pool.pids();
  const steady = await run(pool, 'slowCount', { to: 200, every: 5, batch: 10 });
  // The table's next growth is one allocation past the 64 MiB limit. Usually V8 aborts
  // the process (SIGABRT); under load isolated-vm sometimes disposes the isolate first.
  // Both are a coded end; only the abort costs a process.
  const crashed = await runToEnd(pool, 'crash', {});
  const code = crashed.exit?.code;
  assert.ok(code === 'ERR_SANDBOX_CRASHED' || code === 'ERR_LIMIT_MEMORY', `got ${code}`);
  const done = await steady.outcome;
  assert.equal(done.exit, undefined);
  assert.deepEqual(done.chunks, Array.from({ length: 200 }, (_, i) => i));
  const dead = pidsBefore.filter((pid) => !alive(pid)).length;
  assert.equal(dead, code === 'ERR_SANDBOX_CRASHED' ? 1 : 0);
  assert.equal(pool.stats().replaced, dead);
});

test('the string doubler is contained: a coded error for it, the other stream completes exactly', async (t) => {
  const pool = openPool(t, { processes: 2 });
  await Promise.all([runToEnd(pool, 'echo', 1), runToEnd(pool, 'echo', 2)]);
  await waitFor('2 processes', () => pool.pids().length === 2);
  const steady = await run(pool, 'slowCount', { to: 200, every: 5, batch: 10 });
  const doubler = await runToEnd(pool, 'doubler', {});
  // V8 builds `s += s` as cons strings, so on this machine it is a RangeError (ERR_PLUGIN_THREW);
  // where it aborts the process instead it is ERR_SANDBOX_CRASHED. Either way a coded end.
  assert.ok(['ERR_PLUGIN_THREW', 'ERR_LIMIT_MEMORY', 'ERR_SANDBOX_CRASHED'].includes(errorCode(doubler) ?? ''), `got ${errorCode(doubler)}`);
  const done = await steady.outcome;
  assert.equal(done.exit, undefined);
  assert.deepEqual(done.chunks, Array.from({ length: 200 }, (_, i) => i));
});

test('isolation: plugin code cannot walk up into the runtime\'s frames (the bundle is strict)', async (t) => {
  const pool = openPool(t);
  const out = await runToEnd(pool, 'stackWalk', {});
  assert.deepEqual(out.chunks, [{ getter: 'none' }, { timer: 'none' }]);
});

test('isolation: no Node APIs, no ivm, no Reference or Callback in any global', async (t) => {
  const pool = openPool(t);
  const out = await runToEnd(pool, 'isolation', {});
  const seen = out.chunks[0] as { require: string; process: string; ivm: string; fetch: string; bridge: string; names: string[]; ivmLike: string[] };
  assert.equal(seen.require, 'undefined');
  assert.equal(seen.process, 'undefined');
  assert.equal(seen.ivm, 'undefined');
  assert.equal(seen.fetch, 'undefined');
  assert.equal(seen.bridge, 'undefined');
  assert.deepEqual(seen.ivmLike, []);
  // Every global is either a V8 builtin (what a fresh vm context has) or one of our shims.
  const builtins = new Set(Object.getOwnPropertyNames(vm.runInNewContext('globalThis')));
  const shims = ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval', 'queueMicrotask', 'console', 'TextEncoder', 'TextDecoder', 'AbortController', 'AbortSignal'];
  const extra = seen.names.filter((n) => !builtins.has(n));
  assert.deepEqual(extra.filter((n) => !shims.includes(n)), []);
  for (const shim of shims) assert.ok(seen.names.includes(shim), `${shim} is installed`);
});

test('a chunk that is a function, has a cycle or is a BigInt ends the stream ERR_CHUNK_INVALID', async (t) => {
  const pool = openPool(t);
  for (const kind of ['function', 'cycle', 'bigint']) {
    const out = await runToEnd(pool, 'badChunk', { kind });
    assert.equal(errorCode(out), 'ERR_CHUNK_INVALID', kind);
    assert.deepEqual(out.chunks, ['ok'], `chunks before the bad one are delivered (${kind})`);
    assert.equal(out.exit, undefined);
  }
});

test('throw 42 is ERR_PLUGIN_THREW; a plugin cannot claim a host-side code', async (t) => {
  const pool = openPool(t);
  const out = await runToEnd(pool, 'throw42', {});
  assert.equal(errorCode(out), 'ERR_PLUGIN_THREW');
  assert.equal(out.last?.type === 'error' && out.last.error.message, '42');
  assert.deepEqual(out.chunks, [1]);
  const fake = await runToEnd(pool, 'fakeCrash', {});
  assert.equal(errorCode(fake), 'ERR_PLUGIN_THREW');
  assert.equal(fake.last?.type === 'error' && fake.last.error.retriable, undefined);
});

test('setTimeout, setInterval, queueMicrotask and TextEncoder/TextDecoder work in the isolate', async (t) => {
  const pool = openPool(t);
  const out = await runToEnd(pool, 'timers', {});
  assert.equal(out.exit, undefined);
  const [slept, order, utf8] = out.chunks as [{ slept: number }, { order: string[] }, { utf8: number[]; back: string }];
  assert.ok(slept.slept >= 29, `slept ${slept.slept} ms`);
  assert.deepEqual(order.order, ['microtask', 'timeout xy', 'interval1', 'interval2', 'interval3']);
  assert.deepEqual(utf8.utf8, Array.from(Buffer.from('héllo €𝄞')));
  assert.equal(utf8.back, 'héllo €𝄞');
});

test('console.* reaches the stream log, in order with the chunks', async (t) => {
  const pool = openPool(t);
  const out = await runToEnd(pool, 'console', {});
  const shape = out.messages.map((m) => (m.type === 'batch' ? `batch:${m.chunks.join(',')}` : m.type === 'log' ? `${m.level}:${m.message}` : m.type));
  assert.deepEqual(shape, ['batch:1', 'info:between {"a":1}', 'batch:2', 'error:last', 'end']);
});

test('describe: manifest and action kinds of a TypeScript plugin and of a JS one with named exports', async (t) => {
  const pool = openPool(t);
  const main = await pool.describe(MAIN);
  assert.deepEqual(main.manifest, { name: 'isolate-main', version: '1.0.0', sandbox: 'isolate' });
  assert.equal(main.actions.count, 'stream');
  assert.equal(main.actions.echo, 'unary');
  const named = await load('isolate-named.js');
  assert.deepEqual(await pool.describe(named), { manifest: { name: 'isolate-named', version: '0.1.0' }, actions: { letters: 'stream', upper: 'unary' } });
  assert.deepEqual((await runToEnd(pool, 'letters', { word: 'abc' }, { plugin: named })).chunks, ['a', 'b', 'c']);
  assert.deepEqual((await runToEnd(pool, 'upper', { word: 'abc' }, { plugin: named })).chunks, ['ABC']);
});

test('a plugin that throws at load: describe rejects and start ends with ERR_PLUGIN_LOAD', async (t) => {
  const pool = openPool(t);
  const bad = await load('isolate-toplevel-throw.js');
  await assert.rejects(pool.describe(bad), (err: SluiceError) => err.code === 'ERR_PLUGIN_LOAD' && /boom at load/.test(err.message));
  const out = await runToEnd(pool, 'x', {}, { plugin: bad });
  assert.equal(out.exit?.code, 'ERR_PLUGIN_LOAD');
  assert.match(out.exit?.message ?? '', /boom at load/);
});

test('importing node:fs fails the bundle with ERR_PLUGIN_LOAD', async () => {
  await assert.rejects(bundleForIsolate(fixture('isolate-node-fs.ts')), (err: SluiceError) => {
    assert.equal(err.code, 'ERR_PLUGIN_LOAD');
    assert.match(err.message, /node:fs/);
    assert.match(err.message, /no Node APIs/);
    return true;
  });
});

test('streams go to the least-loaded process; maxIsolatesPerProcess makes further starts wait', async (t) => {
  const pool = openPool(t, { processes: 2, maxIsolatesPerProcess: 1 });
  const a = await run(pool, 'hang', {});
  const b = await run(pool, 'hang', {});
  const c = await run(pool, 'count', { to: 3 });
  await waitFor('two isolates', async () => (await pool.processStats()).every((p) => p.isolates === 1));
  assert.equal(pool.stats().running, 2);
  await sleep(100);
  assert.equal(c.chunks.length, 0, 'third stream waits for a slot');
  a.handle.terminate(new SluiceError('ERR_CANCELLED', 'make room'));
  assert.equal((await a.outcome).exit?.code, 'ERR_CANCELLED');
  const cOut = await c.outcome;
  assert.deepEqual(cOut.chunks, [{ i: 0 }, { i: 1 }, { i: 2 }]);
  b.handle.terminate(new SluiceError('ERR_CANCELLED', 'done'));
  await b.outcome;
});

test('a process that stops answering its heartbeat is killed: its streams end ERR_SANDBOX_UNRESPONSIVE', async (t) => {
  const pool = openPool(t, { heartbeatMs: 50, heartbeatTimeoutMs: 300 });
  const r = await run(pool, 'hang', {});
  await waitFor('the process to serve', async () => (await pool.processStats())[0]?.isolates === 1);
  const pid = pool.pids()[0] as number;
  process.kill(pid, 'SIGSTOP');
  const out = await r.outcome;
  assert.equal(out.exit?.code, 'ERR_SANDBOX_UNRESPONSIVE');
  assert.equal(out.exit?.retriable, true);
  await waitFor('the stopped process to be reaped', () => !alive(pid));
  assert.equal((await runToEnd(pool, 'count', { to: 3 })).chunks.length, 3);
  assert.equal(pool.stats().replaced, 1);
});

test('close() lets running streams finish, then no process is left; start after close is ERR_HOST_CLOSED', async (t) => {
  const pool = openPool(t, { processes: 2 });
  const r = await run(pool, 'slowCount', { to: 100, every: 5, batch: 10 });
  await waitFor('first chunks', () => r.chunks.length > 0);
  const pids = pool.pids();
  assert.ok(pids.length >= 1);
  await pool.close(5000);
  const out = await r.outcome;
  assert.equal(out.exit, undefined);
  assert.equal(out.chunks.length, 100);
  for (const pid of pids) assert.equal(alive(pid), false, `process ${pid} is gone`);
  await assert.rejects(run(pool, 'count', { to: 1 }), { code: 'ERR_HOST_CLOSED' });
  await pool.close(); // idempotent
  await pool.destroy();
});

test('destroy() kills hung streams (exit ERR_HOST_CLOSED, once) and every process', async (t) => {
  const pool = openPool(t, { processes: 2 });
  const a = await run(pool, 'spin', {});
  const b = await run(pool, 'hang', {});
  await waitFor('two processes', () => pool.pids().length === 2);
  await waitFor('spinning', () => a.chunks.length === 1);
  const pids = pool.pids();
  await Promise.all([pool.destroy(), pool.destroy()]);
  assert.equal((await a.outcome).exit?.code, 'ERR_HOST_CLOSED');
  assert.equal((await b.outcome).exit?.code, 'ERR_HOST_CLOSED');
  for (const pid of pids) assert.equal(alive(pid), false, `process ${pid} is gone`);
  assert.deepEqual(pool.stats(), { kind: 'isolate', running: 0, sandboxes: 0, replaced: 0 });
});

test('close() with a stream that never ends gives up after its timeout and kills', async (t) => {
  const pool = openPool(t);
  const r = await run(pool, 'hang', {});
  await waitFor('the process', () => pool.pids().length === 1);
  const pid = pool.pids()[0] as number;
  const t0 = performance.now();
  await pool.close(200);
  assert.ok(performance.now() - t0 < 2000);
  assert.equal((await r.outcome).exit?.code, 'ERR_HOST_CLOSED');
  assert.equal(alive(pid), false);
});

test('options are validated, naming the option and the bad value', () => {
  assert.throws(() => new IsolatePool({ processes: 0 }), (err: SluiceError) => err.code === 'ERR_INVALID_ARGUMENT' && /`processes`/.test(err.message) && /0 \(number\)/.test(err.message));
  assert.throws(() => new IsolatePool({ heartbeatMs: 1.5 }), /`heartbeatMs`/);
  assert.throws(() => new IsolatePool({ maxIsolatesPerProcess: '4' as unknown as number }), /`maxIsolatesPerProcess`/);
});
