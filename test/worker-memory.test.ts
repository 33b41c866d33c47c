/**
 * A worker plugin past its memoryMb must end with ERR_LIMIT_MEMORY, whether the memory
 * is heap or ArrayBuffers, and not take the host process with it. With `resourceLimits`
 * alone, a Map doubling past the thread's limit was V8's fatal out-of-memory: exit 134
 * for the whole host (host/sandbox/heap-watch.ts), and buffers outside the heap were
 * never stopped. Its own file, so that a regression crashes only this file's process.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CONFORMANCE as P, collect, fixture, openHost, outcome } from './helpers.js';

const W = { sandbox: 'worker' } as const;
const EXTERNAL = fixture('plugins/external-memory.ts');

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

test('a worker plugin holding Uint8Arrays past memoryMb ends ERR_LIMIT_MEMORY, spinning or not; a concurrent stream completes exactly', async (t) => {
  const host = await openHost(t, { isolates: false, workers: { maxThreads: 2, minThreads: 2 } });
  // Paced to take about a second, so that it runs while both hoarders are stopped.
  const good = collect(host.stream(P, 'count', { to: 2000, pauseEvery: 100, pauseMs: 50 }, W));
  // 8 x 32 MiB of ArrayBuffer backing stores, next to a heap of a few MiB. wallMs only
  // bounds the spinning hoarder if nothing else stops it.
  const limits = { memoryMb: 64, wallMs: 10_000 };
  const growing = await outcome(host.stream(EXTERNAL, 'hoard', { count: 8, mb: 32, everyMs: 100 }, { ...W, limits }));
  assert.equal(growing.error?.code, 'ERR_LIMIT_MEMORY', growing.error?.message ?? `completed holding ${growing.chunks.length * 32} MiB`);
  // Stopped while still growing: 64 MiB is passed at the second buffer, and each next one is 100 ms away.
  assert.ok(growing.chunks.length < 8, `held ${growing.chunks.length} buffers before the stop`);
  const spinning = await outcome(host.stream(EXTERNAL, 'hoard', { count: 8, mb: 32, spin: true }, { ...W, limits }));
  assert.equal(spinning.error?.code, 'ERR_LIMIT_MEMORY', spinning.error?.message);
  const chunks = await good;
  assert.equal(chunks.length, 2000);
  assert.ok(chunks.every((c, i) => c.seq === i && (c.data as { i: number }).i === i));
});

test('a worker plugin that drops buffers as fast as it makes them is not stopped for its garbage', async (t) => {
  const host = await openHost(t, { isolates: false, workers: { maxThreads: 2, minThreads: 2 } });
  // 24 MiB held, 64 KiB made and dropped per chunk: V8 leaves tens of MiB of dropped
  // buffers uncollected, which took the sample past 64 MiB when it counted them.
  const churned = await outcome(host.stream(EXTERNAL, 'churn', { count: 100_000, kb: 64, holdMb: 24 }, { ...W, limits: { memoryMb: 64 } }));
  assert.equal(churned.error, undefined, churned.error?.message);
  assert.equal(churned.chunks.length, 100_000);
});
