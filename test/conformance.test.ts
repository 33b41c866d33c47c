/**
 * The conformance suite: every behaviour of the plugin contract, run in each sandbox
 * with the same plugin file (test/fixtures/plugins/conformance.ts).
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { CONFORMANCE as P, collect, openHost as open, outcome, sleep } from './helpers.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import { MAX_BATCH_BYTES } from '../sandbox/driver.js';
import { PACK_MAX_CHUNK_BYTES } from '../protocol/chunk.js';

export const SANDBOXES: SandboxKind[] = ['worker', 'isolate'];

for (const sandbox of SANDBOXES) {
  describe(`conformance (${sandbox})`, () => {
    const S = { sandbox } as const;
    const openHost = (t: Parameters<typeof open>[0], options: Parameters<typeof open>[1] = {}) => open(t, { isolates: sandbox === 'isolate' ? { processes: 1 } : false, ...options });

    test('unary action: call returns its value; streamed it is one chunk', async (t) => {
      const host = await openHost(t);
      assert.deepEqual(await host.call(P, 'echo', { a: [1, 'x', null] }, S), { a: [1, 'x', null] });
      const chunks = await collect(host.stream(P, 'echo', { b: true }, S));
      assert.deepEqual(chunks, [{ seq: 0, data: { b: true } }]);
    });

    test('streaming action: chunks in order with contiguous seq; call collects them', async (t) => {
      const host = await openHost(t);
      const chunks = await collect(host.stream(P, 'count', { to: 2000 }, S));
      assert.equal(chunks.length, 2000);
      chunks.forEach((c, i) => assert.deepEqual(c, { seq: i, data: { i } }));
      assert.deepEqual(await host.call(P, 'count', { to: 3 }, S), [{ i: 0 }, { i: 1 }, { i: 2 }]);
      assert.deepEqual(await host.call(P, 'syncCount', { to: 3 }, S), [0, 1, 2]);
    });

    test('AbortController and AbortSignal (abort, timeout, any) work with ctx.signal', async (t) => {
      const host = await openHost(t);
      assert.deepEqual(await host.call(P, 'abortApi', {}, S), { isSignal: true, either: [true, 'mine'], aborted: [true, 'AbortError'], timeoutName: 'TimeoutError' });
    });

    test('Uint8Array chunks arrive as bytes', async (t) => {
      const host = await openHost(t);
      const chunks = await collect(host.stream(P, 'bytes', { count: 3, size: 4096 }, S));
      assert.equal(chunks.length, 3);
      for (const [i, c] of chunks.entries()) {
        assert.ok(c.data instanceof Uint8Array);
        assert.equal(c.data.byteLength, 4096);
        assert.equal(c.data[0], i);
      }
    });

    test('a byte chunk is the bytes as yielded, and keeps them while the stream goes on', async (t) => {
      const host = await openHost(t);
      // The plugin overwrites its buffer after each yield: what arrives must be the value at yield time.
      const chunks = await collect(host.stream(P, 'mutate', {}, S));
      assert.deepEqual(chunks.map((c) => [...(c.data as Uint8Array)]), [0, 1, 2, 3].map((i) => Array(8).fill(i)));
      // Every chunk is held to the end while batch buffers go back to the sandbox to be
      // packed into again: none may be overwritten by a later batch.
      const held = await collect(host.stream(P, 'bytes', { count: 3000, size: 1000 }, S));
      assert.equal(held.length, 3000);
      for (const c of held) {
        const bytes = c.data as Uint8Array;
        assert.equal(bytes.byteLength, 1000);
        assert.equal(bytes[0], c.seq & 0xff, `chunk ${c.seq} was overwritten`);
        assert.ok(bytes.subarray(1).every((b) => b === 0), `chunk ${c.seq} was overwritten`);
        // A view holds at most its batch's packed bytes alive, never the stream's.
        assert.ok(bytes.buffer.byteLength <= MAX_BATCH_BYTES + PACK_MAX_CHUNK_BYTES, `chunk ${c.seq} keeps ${bytes.buffer.byteLength} bytes alive`);
      }
    });

    test('progress reaches the stream', async (t) => {
      const host = await openHost(t);
      const stream = host.stream(P, 'count', { to: 10 }, S);
      const seen: number[] = [];
      stream.on('progress', (p) => seen.push(p.fraction));
      await collect(stream);
      assert.ok(seen.length >= 1);
      assert.ok(seen.every((f) => f >= 0 && f <= 1));
      assert.equal(stream.progress?.message, 'item 9');
    });

    test('backpressure: a consumer that reads 10 chunks and pauses leaves the plugin at most one window ahead', async (t) => {
      const host = await openHost(t);
      const window = { chunks: 16, bytes: 1 << 20 };
      const stream = host.stream(P, 'forever', {}, { ...S, window });
      const it = stream[Symbol.asyncIterator]();
      for (let i = 0; i < 10; i++) assert.equal((await it.next()).value?.seq, i);
      await sleep(300); // a paused consumer: the plugin must stop, not run on
      const result = await stream.cancel();
      assert.equal(result.status, 'cancelled');
      assert.ok(result.chunks <= 10 + window.chunks, `plugin produced ${result.chunks} chunks for 10 consumed with a window of ${window.chunks}`);
      assert.ok(result.chunks >= 10);
    });

    test('cooperative cancel aborts ctx.signal and runs the plugin finally', async (t) => {
      const host = await openHost(t, { cancelGraceMs: 10_000 });
      const stream = host.stream(P, 'slow', { ms: 20 }, S);
      const finallyRan = new Promise<void>((resolve) => stream.on('log', (l) => l.message === 'finally ran' && resolve()));
      const it = stream[Symbol.asyncIterator]();
      await it.next();
      const started = performance.now();
      const result = await stream.cancel('enough');
      assert.equal(result.status, 'cancelled');
      assert.equal(result.error?.code, 'ERR_CANCELLED');
      await finallyRan;
      assert.ok(performance.now() - started < 5_000, 'cancel finished cooperatively, well before the 10 s grace period');
      await assert.rejects(it.next(), { code: 'ERR_CANCELLED' });
    });

    test('hard cancel stops a plugin that ignores its signal, and one spinning in finally', async (t) => {
      const host = await openHost(t, { cancelGraceMs: 200 });
      for (const action of ['hang', 'stuckFinally']) {
        const stream = host.stream(P, action, {}, S);
        const it = stream[Symbol.asyncIterator]();
        await it.next();
        const result = await stream.cancel();
        assert.equal(result.status, 'cancelled', action);
      }
      assert.deepEqual(await host.call(P, 'echo', 1, S), 1, 'the host still runs streams');
    });

    test('an aborted signal cancels a running and a queued stream', async (t) => {
      const host = await openHost(t);
      const ac = new AbortController();
      const stream = host.stream(P, 'slow', { ms: 10 }, { ...S, signal: ac.signal });
      const it = stream[Symbol.asyncIterator]();
      await it.next();
      ac.abort(new Error('user left'));
      assert.equal((await stream.result).status, 'cancelled');
      const pre = new AbortController();
      pre.abort();
      assert.equal((await host.stream(P, 'count', { to: 1 }, { ...S, signal: pre.signal }).result).status, 'cancelled');
    });

    describe('limits', () => {
      const cases = [
        { name: 'cpuMs', action: 'spin', params: {}, limits: { cpuMs: 300 }, code: 'ERR_LIMIT_CPU', budget: 300 },
        { name: 'wallMs', action: 'slow', params: { ms: 20 }, limits: { wallMs: 300 }, code: 'ERR_LIMIT_WALL', budget: 300 },
        { name: 'idleMs', action: 'idle', params: {}, limits: { idleMs: 300 }, code: 'ERR_LIMIT_IDLE', budget: 300 },
        { name: 'memoryMb', action: 'hog', params: {}, limits: { memoryMb: 32 }, code: 'ERR_LIMIT_MEMORY', budget: 0 },
        { name: 'maxChunkBytes', action: 'count', params: { to: 5, size: 5000 }, limits: { maxChunkBytes: 1000 }, code: 'ERR_LIMIT_CHUNK_BYTES', budget: 0 },
      ];
      for (const c of cases) {
        test(`${c.name} ends the stream with ${c.code}${c.budget > 0 ? ' about the limit after the plugin starts' : ''}`, async (t) => {
          const host = await openHost(t, { cancelGraceMs: 200 });
          const stream = host.stream(P, c.action, c.params, { ...S, limits: c.limits });
          let startedAt = 0;
          let error: (Error & { code?: string }) | undefined;
          try {
            for await (const _ of stream) startedAt ||= performance.now();
          } catch (err) {
            error = err as Error & { code?: string };
          }
          const elapsed = performance.now() - startedAt;
          assert.equal(error?.code, c.code, error?.message);
          // Measured from the plugin's first chunk (startup excluded). The product promises
          // limit + 250 ms; a shared, loaded test machine gets a wider margin here, and the
          // figure on a quiet machine is in the bench notes.
          if (c.budget > 0) assert.ok(elapsed < c.budget + 250 + 1000, `ended ${Math.round(elapsed)} ms after the first chunk`);
          assert.deepEqual(await host.call(P, 'echo', 'alive', S), 'alive', 'other streams unaffected');
        });
      }

      test('maxChunks delivers exactly the allowed chunks, then ERR_LIMIT_CHUNKS', async (t) => {
        const host = await openHost(t);
        const { chunks, error } = await outcome(host.stream(P, 'count', { to: 1000 }, { ...S, limits: { maxChunks: 10 } }));
        assert.equal(error?.code, 'ERR_LIMIT_CHUNKS');
        assert.deepEqual(chunks.map((c) => c.seq), [...Array(10).keys()]);
      });

      test('maxBytes delivers every chunk within the limit, then ERR_LIMIT_BYTES', async (t) => {
        const host = await openHost(t);
        const { chunks, error } = await outcome(host.stream(P, 'count', { to: 1000, size: 1000 }, { ...S, limits: { maxBytes: 20_000 } }));
        assert.equal(error?.code, 'ERR_LIMIT_BYTES');
        // Chunks of 1020 bytes as counted: the 19 that fit, in order, then the limit.
        assert.deepEqual(chunks.map((c) => c.seq), [...Array(19).keys()]);
      });

      test('a paused consumer is not idle: idleMs counts only while the plugin may produce', async (t) => {
        const host = await openHost(t);
        const stream = host.stream(P, 'forever', {}, { ...S, window: { chunks: 4, bytes: 1 << 20 }, limits: { idleMs: 150 } });
        const it = stream[Symbol.asyncIterator]();
        await it.next();
        await sleep(500);
        const next = await it.next();
        assert.equal(next.value?.seq, 1);
        await stream.cancel();
      });
    });

    describe('bad output and bad input', () => {
      for (const kind of ['function', 'symbol', 'bigint', 'cycle', 'deep', 'date']) {
        test(`a ${kind} chunk is ERR_CHUNK_INVALID after the valid chunk before it`, async (t) => {
          const host = await openHost(t);
          const { chunks, error } = await outcome(host.stream(P, 'bad', { kind }, S));
          assert.equal(error?.code, 'ERR_CHUNK_INVALID', error?.message);
          assert.deepEqual(chunks.map((c) => c.data), ['ok']);
        });
      }

      test('a chunk is read once: a getter that changes its answer cannot smuggle a function', async (t) => {
        const host = await openHost(t);
        assert.deepEqual(await host.call(P, 'bad', { kind: 'getter' }, S), ['ok', { v: 1 }]);
      });

      test('a plugin that throws a non-Error ends with ERR_PLUGIN_THREW after its chunks', async (t) => {
        const host = await openHost(t);
        const { chunks, error } = await outcome(host.stream(P, 'throwNonError', { after: 3 }, S));
        assert.equal(error?.code, 'ERR_PLUGIN_THREW');
        assert.equal(error?.message, '42');
        assert.equal(chunks.length, 3);
        await assert.rejects(host.call(P, 'fail', {}, S), { code: 'ERR_PLUGIN_THREW', message: 'boom' });
      });

      test('bad params: schema, plugin ParamsError and non-JSON params are ERR_PARAMS_INVALID', async (t) => {
        const host = await openHost(t);
        await assert.rejects(host.call(P, 'count', { to: 'ten' }, S), { code: 'ERR_PARAMS_INVALID' });
        await assert.rejects(host.call(P, 'count', {}, S), { code: 'ERR_PARAMS_INVALID' });
        await assert.rejects(host.call(P, 'needsParams', { n: 'x' }, S), { code: 'ERR_PARAMS_INVALID' });
        assert.equal(await host.call(P, 'needsParams', { n: 21 }, S), 42);
        await assert.rejects(host.call(P, 'echo', { f: () => 1 }, S), { code: 'ERR_PARAMS_INVALID' });
      });

      test('unknown action and plugin are coded errors', async (t) => {
        const host = await openHost(t);
        await assert.rejects(host.call(P, 'nope', {}, S), { code: 'ERR_ACTION_NOT_FOUND' });
        await assert.rejects(host.call('no-such-plugin', 'x', {}, S), { code: 'ERR_PLUGIN_NOT_FOUND' });
        await assert.rejects(host.call('/no/such/file.ts', 'x', {}, S), { code: 'ERR_PLUGIN_NOT_FOUND' });
      });
    });

    test('containment: a failing stream does not disturb a concurrent one', async (t) => {
      const host = await openHost(t, { cancelGraceMs: 100 });
      const good = collect(host.stream(P, 'count', { to: 5000 }, S));
      const bad = outcome(host.stream(P, 'spin', {}, { ...S, limits: { cpuMs: 100 } }));
      const [chunks, failed] = await Promise.all([good, bad]);
      assert.equal(failed.error?.code, 'ERR_LIMIT_CPU');
      assert.equal(chunks.length, 5000);
      assert.ok(chunks.every((c, i) => c.seq === i));
    });

    describe('stream-consuming actions', () => {
      async function* numbers(n: number) {
        for (let i = 1; i <= n; i++) yield i;
      }

      test('a transformer reads params.input and a sink reduces it', async (t) => {
        const host = await openHost(t);
        const upstream = host.stream(P, 'count', { to: 500 }, S);
        const doubled = await collect(host.stream(P, 'double', {}, { ...S, input: upstream }));
        assert.deepEqual(doubled.map((c) => c.data), Array.from({ length: 500 }, (_, i) => i * 2));
        assert.equal(await host.call(P, 'sum', {}, { ...S, input: numbers(1000) }), 500_500);
      });

      test('backpressure holds across a chain: a sink that stops reading pauses the upstream plugin', async (t) => {
        const host = await openHost(t);
        const window = { chunks: 8, bytes: 1 << 20 };
        const upstream = host.stream(P, 'forever', {}, { ...S, window });
        const sink = host.stream(P, 'stall', { take: 5 }, { ...S, window, input: upstream, inputWindow: window });
        const got = await collect(sink, 5);
        assert.equal(got.length, 5);
        await sleep(300);
        const down = await sink.cancel();
        const up = await upstream.result;
        assert.equal(down.status, 'cancelled');
        assert.equal(up.status, 'cancelled', 'cancelling the consumer cancelled the upstream plugin');
        // Upstream can be ahead by: what the sink read (5), its input window, the pump's one in-hand item, its own window.
        assert.ok(up.chunks <= 5 + window.chunks + 1 + window.chunks, `upstream produced ${up.chunks} chunks`);
      });

      test('an upstream error reaches the consuming plugin as an error from params.input', async (t) => {
        const host = await openHost(t);
        const upstream = host.stream(P, 'throwNonError', { after: 3 }, S);
        const { chunks, error } = await outcome(host.stream(P, 'double', {}, { ...S, input: upstream }));
        assert.equal(error?.code, 'ERR_PLUGIN_THREW');
        assert.equal(chunks.length, 3);
      });

      test('a declarative pipeline: plugin source, operators, plugin step', async (t) => {
        const host = await openHost(t);
        const out: unknown[] = [];
        for await (const v of host.pipeline({
          version: 1,
          source: { plugin: P, action: 'count', params: { to: 100 } },
          steps: [
            { op: 'filter', where: { field: 'i', gte: 90 } },
            { op: 'plugin', plugin: P, action: 'double', params: {} },
            { op: 'take', count: 5 },
          ],
        }, S)) out.push(v);
        assert.deepEqual(out, [180, 182, 184, 186, 188]);
      });
    });

    test('host close with streams in flight ends them with ERR_HOST_CLOSED and stops the sandboxes', async (t) => {
      const host = await openHost(t, { cancelGraceMs: 200, closeTimeoutMs: 2000 });
      const streams = [host.stream(P, 'forever', {}, S), host.stream(P, 'hang', {}, S), host.stream(P, 'slow', { ms: 5 }, S)];
      const reads = streams.map((s) => outcome(s));
      await sleep(100);
      const started = performance.now();
      await host.close();
      assert.ok(performance.now() - started < 4000);
      for (const r of await Promise.all(reads)) assert.equal(r.error?.code, 'ERR_HOST_CLOSED');
      assert.throws(() => host.stream(P, 'echo', 1, S), { code: 'ERR_HOST_CLOSED' });
      await host.close(); // idempotent
    });
  });
}

describe('containment (isolate)', () => {
  const S = { sandbox: 'isolate' } as const;

  test('a plugin that aborts its sandbox process takes down only that process', async (t) => {
    const host = await open(t, { isolates: { processes: 2 } });
    // Warm both processes so the crash and the good stream land on different ones.
    await Promise.all([host.call(P, 'echo', 1, S), host.call(P, 'echo', 2, S)]);
    const good = host.stream(P, 'count', { to: 20_000 }, S);
    const reading = collect(good);
    // At 64 MiB the Map's table growth is one allocation past the isolate's limit: V8
    // usually aborts the whole process (SIGABRT), before our heap poll or a catchable
    // RangeError; under load isolated-vm sometimes disposes the isolate first. Either way
    // a coded end, and the other stream never notices (test/isolate-pool.test.ts kills a
    // process with SIGABRT for the deterministic version).
    const crashed = await outcome(host.stream(P, 'crash', {}, { ...S, limits: { memoryMb: 64 } }));
    assert.ok(crashed.error?.code === 'ERR_SANDBOX_CRASHED' || crashed.error?.code === 'ERR_LIMIT_MEMORY', crashed.error?.message);
    const chunks = await reading;
    assert.equal(chunks.length, 20_000);
    assert.ok(chunks.every((c, i) => c.seq === i && (c.data as { i: number }).i === i));
    assert.deepEqual(await host.call(P, 'echo', 'after', S), 'after', 'the replaced process serves new streams');
  });

  test('a plugin that doubles a string forever is stopped by memory; a concurrent stream completes exactly', async (t) => {
    const host = await open(t, { isolates: { processes: 2 } });
    await Promise.all([host.call(P, 'echo', 1, S), host.call(P, 'echo', 2, S)]);
    const good = host.stream(P, 'count', { to: 20_000 }, S);
    const reading = collect(good);
    // One allocation past the limit: isolated-vm disposes the isolate, or V8 aborts its
    // process (which the host replaces). When the doubling outruns both (it reaches V8's
    // string length limit within milliseconds of the limit), V8's RangeError ends it.
    const failed = await outcome(host.stream(P, 'doubler', {}, { ...S, limits: { memoryMb: 32 } }));
    const code = failed.error?.code;
    const ended = code === 'ERR_LIMIT_MEMORY' || code === 'ERR_SANDBOX_CRASHED' || (code === 'ERR_PLUGIN_THREW' && /Invalid string length/.test(failed.error?.message ?? ''));
    assert.ok(ended, `${code}: ${failed.error?.message}`);
    const chunks = await reading;
    assert.equal(chunks.length, 20_000);
    assert.ok(chunks.every((c, i) => c.seq === i && (c.data as { i: number }).i === i));
    assert.deepEqual(await host.call(P, 'echo', 'alive', S), 'alive');
  });

  test('isolate plugins reach no Node API', async (t) => {
    const host = await open(t, { isolates: { processes: 1 } });
    assert.deepEqual(await host.call(P, 'probe', {}, S), { require: 'undefined', process: 'undefined', ivm: 'undefined', fetch: 'undefined' });
  });
});
