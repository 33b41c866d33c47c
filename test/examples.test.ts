/** The example plugins in plugins/ do what the README says, in the sandboxes their manifests pick. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';
import { collect, openHost } from './helpers.js';

const PLUGINS = fileURLToPath(new URL('../../plugins', import.meta.url));

test('records: transform streams typed records; total over that stream agrees with summarize', async (t) => {
  const host = await openHost(t, { plugins: PLUGINS, isolates: { processes: 1 } });
  assert.deepEqual(host.pluginProblems(), []);
  const records = await collect(host.stream('records', 'transform', { csv: 'id,name,category,amount\n1,a,books,12.5\n2,b,food,80\n' }));
  assert.deepEqual(records.map((c) => c.data), [
    { id: 1, name: 'a', category: 'books', amountCents: 1250, large: false },
    { id: 2, name: 'b', category: 'food', amountCents: 8000, large: true },
  ]);
  const total = (await host.call('records', 'total', {}, { input: host.stream('records', 'transform', { rows: 1000 }) })) as { count: number; amountCents: number };
  const byCategory = (await host.call('records', 'summarize', { rows: 1000 })) as Record<string, { count: number; amountCents: number }>;
  assert.equal(total.count, 1000);
  assert.equal(total.amountCents, Object.values(byCategory).reduce((a, c) => a + c.amountCents, 0));
  await assert.rejects(host.call('records', 'transform', { csv: 'id,name\n1,a\n' }), { code: 'ERR_PARAMS_INVALID' });
});

test('records: a durable transform resumes from its checkpoint without repeats', async (t) => {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = await mkdtemp(join(tmpdir(), 'sluice-examples-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const host = await openHost(t, { plugins: PLUGINS, isolates: { processes: 1 }, dataDir: join(dir, 'data') });
  const stream = host.stream('records', 'transform', { rows: 500 }, { durability: 'log' });
  await stream.result;
  const seqs: number[] = [];
  for await (const e of host.read(stream.id, { signal: AbortSignal.timeout(20_000) })) {
    if (e.type === 'chunk') seqs.push(e.seq);
    if (e.type === 'end') break;
  }
  assert.deepEqual(seqs, Array.from({ length: 500 }, (_, i) => i));
  assert.equal((await host.streamInfo(stream.id))?.checkpoint?.seq, 400);
});

test('monitor: watch yields `count` statuses in the worker sandbox, status answers at once', async (t) => {
  const host = await openHost(t, { plugins: PLUGINS });
  const statuses = await collect(host.stream('monitor', 'watch', { intervalMs: 10, count: 3 }));
  assert.deepEqual(statuses.map((c) => (c.data as { tick: number }).tick), [0, 1, 2]);
  const one = (await host.call('monitor', 'status', {})) as { memory: { totalMb: number } };
  assert.ok(one.memory.totalMb > 0);
  assert.equal(host.plugins().find((p) => p.name === 'monitor')?.sandbox, 'worker');
});
