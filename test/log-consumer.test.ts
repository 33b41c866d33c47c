/**
 * The own consumer of a `log` stream: served from memory while it keeps up, from the
 * log when it falls behind or starts behind, always the committed chunks exactly once.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { LogConsumer, type LogConsumerSource } from '../host/log-consumer.js';
import { SluiceError } from '../protocol/errors.js';
import type { Chunk, ReadEvent } from '../host/types.js';
import { CONFORMANCE as P, collect, openHost, sleep } from './helpers.js';

/** A fake stream and log: `commit` appends to the log and hands the batch to the consumer, like HostStream. */
function fake(window = { chunks: 4, bytes: 1 << 20 }, startSeq = 0) {
  const log: unknown[] = [];
  for (let i = 0; i < startSeq; i++) log.push({ i });
  let committed = startSeq;
  let status: 'done' | 'failed' | undefined;
  let outcome: { status: 'done' | 'failed' | 'cancelled'; error?: SluiceError } | undefined;
  const reads: number[] = [];
  const cancels: string[] = [];
  let wake: (() => void) | undefined;
  let finish!: () => void;
  const over = new Promise<void>((resolve) => (finish = resolve));
  const abort = new AbortController();
  async function* read(fromSeq: number): AsyncGenerator<ReadEvent> {
    reads.push(fromSeq);
    let next = fromSeq;
    for (;;) {
      while (next < committed) {
        yield { type: 'chunk', seq: next, data: log[next] as { i: number } };
        next++;
      }
      if (status !== undefined) {
        yield { type: 'end', status };
        return;
      }
      await new Promise<void>((resolve) => (wake = resolve));
    }
  }
  const src: LogConsumerSource = {
    log: { append: async () => undefined, read: (fromSeq) => read(fromSeq) },
    window: () => window,
    signal: abort.signal,
    ready: Promise.resolve(),
    over,
    startSeq: () => startSeq,
    committed: () => committed,
    outcome: () => outcome,
    started: () => true,
    demand: () => undefined,
    cancel: (reason) => void cancels.push(reason),
  };
  const consumer = new LogConsumer(src);
  return {
    consumer,
    reads,
    cancels,
    /** `seen: false`: committed before the consumer existed. */
    commit(n: number, seen = true): void {
      const first = committed;
      const chunks = Array.from({ length: n }, (_, k) => ({ i: first + k }));
      log.push(...chunks);
      committed += n;
      if (seen) consumer.committed(first, chunks, n);
      wake?.();
    },
    end(result: 'done' | 'failed' = 'done'): void {
      outcome = result === 'done' ? { status: 'done' } : { status: 'failed', error: new SluiceError('ERR_PLUGIN_THREW', 'boom') };
      finish();
      status = result;
      wake?.();
    },
  };
}

async function take(it: AsyncIterator<Chunk>, n: number): Promise<number[]> {
  const seqs: number[] = [];
  for (let k = 0; k < n; k++) {
    const r = await it.next();
    assert.equal(r.done, false);
    assert.deepEqual(r.value.data, { i: r.value.seq });
    seqs.push(r.value.seq);
  }
  return seqs;
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from }, (_, k) => from + k);

test('a consumer that keeps up reads memory only; the end comes from the log', async () => {
  const f = fake();
  const first = f.consumer.next();
  f.commit(3);
  assert.deepEqual((await first).value, { seq: 0, data: { i: 0 } });
  assert.deepEqual(await take(f.consumer, 2), [1, 2]);
  f.commit(2);
  f.commit(1);
  assert.deepEqual(await take(f.consumer, 3), [3, 4, 5]);
  f.end();
  assert.deepEqual(await f.consumer.next(), { value: undefined, done: true });
  assert.deepEqual(f.reads, [6], 'the log was read once, for the end');
});

test('a consumer that falls behind reads the log, then goes back to memory', async () => {
  const f = fake({ chunks: 4, bytes: 1 << 20 });
  f.commit(3); // 0..2, dropped when 3..5 and 6..8 arrive (over 4 chunks)
  f.commit(3);
  f.commit(3);
  assert.deepEqual(await take(f.consumer, 6), range(0, 6));
  assert.deepEqual(f.reads, [0]);
  f.commit(2);
  assert.deepEqual(await take(f.consumer, 5), range(6, 11));
  f.end();
  assert.equal((await f.consumer.next()).done, true);
  assert.deepEqual(f.reads, [0, 11], 'memory served 6..10; the log again only for the end');
});

test('a consumer that started after some commits reads those from the log, from where the run started', async () => {
  const f = fake({ chunks: 100, bytes: 1 << 20 }, 5);
  f.commit(3, false);
  f.commit(3);
  assert.deepEqual(await take(f.consumer, 6), range(5, 11));
  f.end();
  assert.equal((await f.consumer.next()).done, true);
  assert.deepEqual(f.reads, [5, 11]);
});

test('a failed stream: every committed chunk, then its error', async () => {
  const f = fake();
  f.commit(2);
  f.end('failed');
  assert.deepEqual(await take(f.consumer, 2), [0, 1]);
  await assert.rejects(f.consumer.next(), { code: 'ERR_PLUGIN_THREW' });
  assert.equal((await f.consumer.next()).done, true);
});

test('return() cancels a live stream and drops what memory kept', async () => {
  const f = fake();
  f.commit(2);
  assert.deepEqual(await take(f.consumer, 1), [0]);
  await f.consumer.return!();
  assert.deepEqual(f.cancels, ['consumer stopped reading']);
  assert.equal((await f.consumer.next()).done, true);
});

test('next() calls made before the previous settled get consecutive chunks', async () => {
  const f = fake();
  const pending = [f.consumer.next(), f.consumer.next(), f.consumer.next()];
  f.commit(1);
  f.commit(2);
  assert.deepEqual((await Promise.all(pending)).map((r) => r.value?.seq), [0, 1, 2]);
});

async function dataDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-log-consumer-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return join(dir, 'data');
}

test('a slow own consumer of a log stream, falling behind its log and catching up, sees 0..N-1 exactly once', async (t) => {
  const host = await openHost(t, { dataDir: await dataDir(t) });
  const stream = host.stream(P, 'count', { to: 3000, size: 64 }, { sandbox: 'worker', durability: 'log', window: { chunks: 64 } });
  const seen: number[] = [];
  for await (const c of stream) {
    assert.equal((c.data as { i: number }).i, c.seq);
    seen.push(c.seq);
    if (seen.length % 500 === 0) await sleep(40);
  }
  assert.deepEqual(seen, range(0, 3000));
  assert.equal((await stream.result).status, 'done');
});

test('a log stream read to its end: the consumer and a reader of the log agree', async (t) => {
  const host = await openHost(t, { dataDir: await dataDir(t) });
  const stream = host.stream(P, 'count', { to: 5000 }, { sandbox: 'worker', durability: 'log' });
  const mine = await collect(stream);
  assert.deepEqual(
    mine.map((c) => c.seq),
    range(0, 5000),
  );
  const logged: number[] = [];
  for await (const e of host.read(stream.id)) {
    if (e.type === 'chunk') logged.push((e.data as { i: number }).i);
    if (e.type === 'end') break;
  }
  assert.deepEqual(logged, range(0, 5000));
});
