/**
 * A worker plugin that exhausts its memoryMb in one allocation must end with
 * ERR_LIMIT_MEMORY, not take the host process with it. With `resourceLimits` alone, a
 * Map doubling past the thread's limit was V8's fatal out-of-memory: exit 134 for the
 * whole host (host/sandbox/heap-watch.ts). Its own file, so that a regression crashes
 * only this file's process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CONFORMANCE as P, collect, openHost, outcome } from './helpers.js';

const W = { sandbox: 'worker' } as const;

test('a worker plugin whose Map outgrows memoryMb ends ERR_LIMIT_MEMORY; the host and a concurrent stream go on', async (t) => {
  const host = await openHost(t, { isolates: false, workers: { maxThreads: 2, minThreads: 2 } });
  const good = collect(host.stream(P, 'count', { to: 5000 }, W));
  for (const memoryMb of [64, 256]) {
    const crashed = await outcome(host.stream(P, 'crash', {}, { ...W, limits: { memoryMb } }));
    assert.equal(crashed.error?.code, 'ERR_LIMIT_MEMORY', crashed.error?.message);
  }
  const chunks = await good;
  assert.equal(chunks.length, 5000);
  assert.ok(chunks.every((c, i) => c.seq === i));
  assert.deepEqual(await host.call(P, 'echo', 'after', W), 'after');
});
