/**
 * The durable store: records, checkpoints, the chunk log and its reader, retention,
 * encryption, corruption, file modes, and what is on disk after a SIGKILL.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync } from 'node:fs';
import { chmod, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test, type TestContext } from 'node:test';
import { fileURLToPath } from 'node:url';
import { open as openLmdb } from 'lmdb';
import type { ChunkData } from '../protocol/chunk.js';
import { SluiceError } from '../protocol/errors.js';
import { Store, UNFINISHED_STATUSES, type StoreOptions } from '../host/store/store.js';
import type { ReadEvent } from '../host/types.js';

const root = mkdtempSync(join(tmpdir(), 'sluice-store-test-'));
after(() => rm(root, { recursive: true, force: true }));
let dirs = 0;

/** A fresh data folder path (not created: the store creates it). */
function dataPath(name = 'data'): string {
  return join(root, `${++dirs}`, name);
}

async function openStore(t: TestContext, options: Partial<StoreOptions> & { path?: string } = {}): Promise<Store> {
  const store = await Store.open({ env: {}, ...options, path: options.path ?? dataPath() });
  t.after(() => store.close());
  return store;
}

function stream(id: string, extra: Partial<Parameters<Store['createStream']>[0]> = {}): Parameters<Store['createStream']>[0] {
  return { id, plugin: 'fixture', action: 'count', params: { n: 1 }, durability: 'log', ...extra };
}

function chunksOf(events: ReadEvent[]): number[] {
  return events.filter((e) => e.type === 'chunk').map((e) => (e as { seq: number }).seq);
}

function range(from: number, to: number): number[] {
  return Array.from({ length: to - from }, (_, i) => from + i);
}

async function collect(iterable: AsyncIterable<ReadEvent>, max = 10_000): Promise<ReadEvent[]> {
  const out: ReadEvent[] = [];
  for await (const event of iterable) {
    out.push(event);
    if (out.length >= max) throw new Error('reader did not end');
  }
  return out;
}

function hasCode(code: string): (err: unknown) => boolean {
  return (err: unknown) => {
    assert.ok(err instanceof SluiceError, `expected a SluiceError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return true;
  };
}

/** Write raw bytes under a key of the store's layout (records.ts documents it), with the store closed. */
async function writeRaw(path: string, table: string, key: string | [string, number], bytes: Uint8Array): Promise<void> {
  const env = openLmdb({ path, noSubdir: false });
  try {
    const db = env.openDB(table, { encoding: 'binary' });
    await db.put(key, Buffer.from(bytes));
  } finally {
    await env.close();
  }
}

async function readRaw(path: string, table: string, key: string | [string, number]): Promise<Buffer | undefined> {
  const env = openLmdb({ path, noSubdir: false });
  try {
    return env.openDB(table, { encoding: 'binary' }).get(key) as Buffer | undefined;
  } finally {
    await env.close();
  }
}

test('stream records: create, get, list unfinished, set status, remove', async (t) => {
  const store = await openStore(t);
  const a = await store.createStream(stream('a', { options: { priority: 'high' }, retention: { maxChunks: 10 } }));
  assert.equal(a.status, 'queued');
  assert.equal(a.createdAt, a.updatedAt);
  await store.createStream(stream('b', { durability: 'checkpoint', status: 'running' }));
  await store.createStream(stream('c'));
  await assert.rejects(store.createStream(stream('a')), hasCode('ERR_INVALID_ARGUMENT'));

  assert.deepEqual(store.getStream('a'), a);
  assert.equal(store.getStream('missing'), undefined);
  assert.deepEqual(store.getStream('a')?.options, { priority: 'high' });
  assert.deepEqual(store.getStream('a')?.retention, { maxChunks: 10 });

  await new Promise((resolve) => setTimeout(resolve, 2));
  const failed = await store.setStatus('c', 'failed', new SluiceError('ERR_PLUGIN_THREW', 'boom'));
  assert.deepEqual(failed.error, { code: 'ERR_PLUGIN_THREW', message: 'boom' });
  assert.ok(failed.updatedAt > failed.createdAt);

  const unfinished = store.listStreams({ status: UNFINISHED_STATUSES }).map((s) => s.id);
  assert.deepEqual(unfinished.sort(), ['a', 'b']);
  assert.deepEqual(store.listStreams({ status: 'failed' }).map((s) => s.id), ['c']);
  assert.equal(store.listStreams().length, 3);

  // Back to running clears the error.
  assert.equal((await store.setStatus('c', 'running')).error, undefined);
  await assert.rejects(store.setStatus('missing', 'done'), hasCode('ERR_STREAM_NOT_FOUND'));
  assert.throws(() => store.listStreams({ status: 'sleeping' as never }), /`status`/);

  await store.appendChunks('a', 0, ['x', 'y']);
  await store.putCheckpoint({ streamId: 'a', seq: 2, state: 'st' });
  assert.equal(await store.removeStream('a'), true);
  assert.equal(await store.removeStream('a'), false);
  assert.equal(store.getStream('a'), undefined);
  assert.equal(store.getCheckpoint('a'), undefined);
  assert.throws(() => store.logTail('a'), hasCode('ERR_STREAM_NOT_FOUND'));
  // The id is free again, with an empty log.
  await store.createStream(stream('a'));
  assert.equal(store.logTail('a'), 0);
  assert.deepEqual(store.readRange('a', 0, 10), []);
});

test('stream records survive a reopen', async (t) => {
  const path = dataPath();
  const first = await Store.open({ path, env: {} });
  await first.createStream(stream('kept', { params: { bytes: new Uint8Array([1, 2, 3]), list: [1, 'two', null, true] } }));
  await first.close();
  const store = await openStore(t, { path });
  const kept = store.getStream('kept');
  assert.deepEqual(kept?.params, { bytes: new Uint8Array([1, 2, 3]), list: [1, 'two', null, true] });
  assert.equal(store.epoch, first.epoch);
  await assert.rejects(store.createStream(stream('kept')), hasCode('ERR_INVALID_ARGUMENT'));
});

test('checkpoints: roundtrip, latest wins, unknown stream', async (t) => {
  const store = await openStore(t);
  await store.createStream(stream('s', { durability: 'checkpoint' }));
  assert.equal(store.getCheckpoint('s'), undefined);
  const first = await store.putCheckpoint({ streamId: 's', seq: 3, state: { cursor: 'abc', buf: new Uint8Array([7]) } });
  assert.equal(first.epoch, store.epoch);
  assert.deepEqual(store.getCheckpoint('s'), first);
  // Issued without awaiting each one (as a stream does): the last one wins.
  const all = await Promise.all(range(4, 24).map((seq) => store.putCheckpoint({ streamId: 's', seq, state: { seq } })));
  assert.equal(all.length, 20);
  const latest = store.getCheckpoint('s');
  assert.equal(latest?.seq, 23);
  assert.deepEqual(latest?.state, { seq: 23 });
  // A checkpoint waits for the disk, but later writes do not wait for its flush.
  await store.createStream(stream('log'));
  const order: string[] = [];
  const flushedCheckpoint = store.putCheckpoint({ streamId: 's', seq: 24, state: null }).then(() => order.push('checkpoint flushed'));
  const committedAppend = store.appendChunks('log', 0, ['a']).then(() => order.push('later append committed'));
  await Promise.all([flushedCheckpoint, committedAppend]);
  assert.deepEqual(order, ['later append committed', 'checkpoint flushed']);

  await assert.rejects(store.putCheckpoint({ streamId: 'nope', seq: 0, state: null }), hasCode('ERR_STREAM_NOT_FOUND'));
  await assert.rejects(store.putCheckpoint({ streamId: 's', seq: -1, state: null }), /`seq`/);
});

test('chunk log: contiguity, dedupe of re-produced seqs, holes refused', async (t) => {
  const store = await openStore(t);
  await store.createStream(stream('s'));
  assert.equal(await store.appendChunks('s', 0, ['c0', 'c1', 'c2', 'c3', 'c4']), 5);
  // A resumed plugin re-produces from its checkpoint at 3: 3 and 4 are dropped, 5 and 6 appended.
  assert.equal(await store.appendChunks('s', 3, ['again3', 'again4', 'c5', 'c6']), 2);
  assert.equal(await store.appendChunks('s', 0, ['old']), 0);
  await assert.rejects(store.appendChunks('s', 9, ['hole']), (err: unknown) => {
    hasCode('ERR_STORE_SEQ')(err);
    assert.deepEqual((err as SluiceError).details, { streamId: 's', expected: 7, got: 9 });
    return true;
  });
  assert.equal(store.logTail('s'), 7);
  assert.deepEqual(
    store.readRange('s', 0, 100).map((c) => c.data),
    ['c0', 'c1', 'c2', 'c3', 'c4', 'c5', 'c6'],
  );
  assert.deepEqual(store.readRange('s', 5, 1), [{ seq: 5, data: 'c5' }]);

  // Batches issued back to back without awaiting: the tail is reserved at call time.
  const issued = range(0, 20).map((i) => store.appendChunks('s', 7 + i * 3, [`b${i}a`, `b${i}b`, `b${i}c`]));
  assert.deepEqual(await Promise.all(issued), Array(20).fill(3));
  const all = store.readRange('s', 0, 1000);
  assert.deepEqual(all.map((c) => c.seq), range(0, 67));

  await assert.rejects(store.appendChunks('nope', 0, ['x']), hasCode('ERR_STREAM_NOT_FOUND'));
  await assert.rejects(store.appendChunks('s', 67, [() => 1] as unknown as ChunkData[]), hasCode('ERR_CHUNK_INVALID'));
  assert.equal(store.logTail('s'), 67, 'a batch that cannot be stored leaves no partial append');
  await store.setStatus('s', 'done');
  await assert.rejects(store.appendChunks('s', 67, ['late']), hasCode('ERR_INVALID_ARGUMENT'));
});

test('chunk data round-trips: Uint8Array vs JSON, nested bytes, __proto__ keys', async (t) => {
  const path = dataPath();
  const proto = JSON.parse('{"__proto__": {"polluted": true}, "x": 1}') as ChunkData;
  const data: ChunkData[] = [
    new Uint8Array([0, 1, 2, 255]),
    { bytes: new Uint8Array([9]), list: [new Uint8Array(0), 'str'] },
    'plain string',
    [1, 2.5, -0.5, null, false],
    proto,
    0,
    null,
    { '': 'empty key' },
  ];
  const first = await Store.open({ path, env: {} });
  await first.createStream(stream('s'));
  await first.appendChunks('s', 0, data);
  await first.close();
  const store = await openStore(t, { path });
  const read = store.readRange('s', 0, 100).map((c) => c.data);
  assert.deepEqual(read, data);
  assert.equal(Object.getPrototypeOf(read[0]), Uint8Array.prototype, 'top-level bytes come back as a plain Uint8Array');
  assert.ok(Object.hasOwn(read[4] as object, '__proto__'), '__proto__ stays an own data key');
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
});

test('reader: from any position, live tail, then end', async (t) => {
  const store = await openStore(t, { readPageSize: 3 });
  await store.createStream(stream('s'));
  await store.appendChunks('s', 0, range(0, 10).map((i) => `c${i}`));

  // From a middle position, live: the reader parks at the tail and wakes on appends.
  const events: ReadEvent[] = [];
  const reading = (async () => {
    for await (const event of store.read('s', { fromSeq: 4 })) events.push(event);
  })();
  for (let i = 10; i < 30; i += 2) {
    await store.appendChunks('s', i, [`c${i}`, `c${i + 1}`]);
    await new Promise((resolve) => setImmediate(resolve));
  }
  await store.setStatus('s', 'done');
  await reading;
  assert.deepEqual(chunksOf(events), range(4, 30));
  assert.deepEqual(events.at(-1), { type: 'end', status: 'done' });
  assert.deepEqual(events[0], { type: 'chunk', seq: 4, data: 'c4' });

  // From 0, from the last chunk, and past the tail of a finished stream.
  assert.deepEqual(chunksOf(await collect(store.read('s'))), range(0, 30));
  assert.deepEqual(chunksOf(await collect(store.read('s', { fromSeq: 29 }))), [29]);
  assert.deepEqual(await collect(store.read('s', { fromSeq: 30 })), [{ type: 'end', status: 'done' }]);
  // The same epoch means no reset.
  assert.equal((await collect(store.read('s', { fromSeq: 28, epoch: store.epoch })))[0]?.type, 'chunk');
});

test('reader: live chunks appended concurrently by many batches arrive once, in order', async (t) => {
  const store = await openStore(t, { readPageSize: 16 });
  await store.createStream(stream('s'));
  const readers = [0, 0, 50].map((fromSeq) => collect(store.read('s', { fromSeq })));
  const issued: Promise<number>[] = [];
  for (let i = 0; i < 100; i++) {
    issued.push(store.appendChunks('s', i * 5, range(i * 5, i * 5 + 5)));
    if (i % 10 === 0) await new Promise((resolve) => setImmediate(resolve));
  }
  await Promise.all(issued);
  await store.setStatus('s', 'done');
  const [a, b, c] = await Promise.all(readers);
  assert.deepEqual(chunksOf(a as ReadEvent[]), range(0, 500));
  assert.deepEqual(chunksOf(b as ReadEvent[]), range(0, 500));
  assert.deepEqual(chunksOf(c as ReadEvent[]), range(50, 500));
  assert.ok((a as ReadEvent[]).every((e) => e.type !== 'chunk' || e.data === e.seq));
});

test('reader: end carries the error of a failed stream; unknown stream is ERR_STREAM_NOT_FOUND', async (t) => {
  const store = await openStore(t);
  await store.createStream(stream('s'));
  await store.appendChunks('s', 0, ['a']);
  await store.setStatus('s', 'failed', { code: 'ERR_LIMIT_CPU', message: 'too slow' });
  assert.deepEqual(await collect(store.read('s')), [
    { type: 'chunk', seq: 0, data: 'a' },
    { type: 'end', status: 'failed', error: { code: 'ERR_LIMIT_CPU', message: 'too slow' } },
  ]);
  await assert.rejects(collect(store.read('nope')), hasCode('ERR_STREAM_NOT_FOUND'));
  assert.throws(() => store.read('s', { fromSeq: -1 }), /`fromSeq`/);
});

test('reader: abort signal rejects the wait and leaves no listener; close wakes readers', async (t) => {
  const store = await openStore(t);
  await store.createStream(stream('s'));
  const controller = new AbortController();
  const iterator = store.read('s', { signal: controller.signal })[Symbol.asyncIterator]();
  const pending = iterator.next();
  await new Promise((resolve) => setTimeout(resolve, 10));
  const reason = new Error('stop');
  controller.abort(reason);
  await assert.rejects(pending, (err) => err === reason);

  const parked = collect(store.read('s'));
  await new Promise((resolve) => setTimeout(resolve, 10));
  await store.close();
  await assert.rejects(parked, hasCode('ERR_STORE_CLOSED'));
});

test('reader: reads in bounded pages as the consumer pulls (no read-ahead)', async (t) => {
  const store = await openStore(t, { readPageSize: 4 });
  await store.createStream(stream('s', { retention: { maxChunks: 1 } }));
  await store.appendChunks('s', 0, range(0, 100));
  await store.setStatus('s', 'done');
  const iterator = store.read('s')[Symbol.asyncIterator]();
  assert.deepEqual((await iterator.next()).value, { type: 'chunk', seq: 0, data: 0 });
  // Retention trims all but the last chunk while the consumer holds one page.
  assert.equal((await store.runRetention()).trimmed, 99);
  const rest: ReadEvent[] = [];
  for (let r = await iterator.next(); !r.done; r = await iterator.next()) rest.push(r.value);
  // Only the rest of the first page (seqs 1..3) was read before the trim: then a gap.
  assert.deepEqual(rest, [
    { type: 'chunk', seq: 1, data: 1 },
    { type: 'chunk', seq: 2, data: 2 },
    { type: 'chunk', seq: 3, data: 3 },
    { type: 'gap', fromSeq: 4, toSeq: 99 },
    { type: 'chunk', seq: 99, data: 99 },
    { type: 'end', status: 'done' },
  ]);
});

test('retention: maxChunks, maxBytes, maxAgeMs trim the head and readers see a gap', async (t) => {
  const store = await openStore(t, { maintenanceBatchSize: 7 });
  const hundred = new Uint8Array(100);
  await store.createStream(stream('count', { retention: { maxChunks: 5 } }));
  await store.createStream(stream('bytes', { retention: { maxBytes: 550 } }));
  await store.createStream(stream('age', { retention: { maxAgeMs: 200 } }));
  await store.createStream(stream('none'));
  for (const id of ['count', 'bytes', 'age', 'none']) await store.appendChunks(id, 0, range(0, 20).map(() => hundred));

  let result = await store.runRetention();
  // count: 15 trimmed; bytes: the 20 chunks are one 2094-byte record (14 header, 80 lengths,
  // 2000 data), each chunk charged its share (~104.7 bytes), so 5 fit in 550.
  assert.deepEqual(result, { trimmed: 30, streams: 2 });
  assert.equal(store.logHead('count'), 15);
  assert.equal(store.logHead('bytes'), 15);
  assert.equal(store.logHead('age'), 0);
  assert.equal(store.logTail('count'), 20);
  assert.deepEqual(store.readRange('count', 0, 100).map((c) => c.seq), range(15, 20));

  await store.appendChunks('bytes', 20, [hundred, hundred]);
  assert.equal((await store.runRetention()).trimmed, 2, 'the byte count follows appends');
  assert.equal(store.logHead('bytes'), 17);

  await new Promise((resolve) => setTimeout(resolve, 250));
  await store.appendChunks('age', 20, [hundred]);
  result = await store.runRetention();
  assert.equal(store.logHead('age'), 20, 'chunks older than maxAgeMs are gone, the fresh one stays');
  assert.equal(store.logHead('none'), 0);

  await store.setStatus('count', 'done');
  const events = await collect(store.read('count', { fromSeq: 3 }));
  assert.deepEqual(events[0], { type: 'gap', fromSeq: 3, toSeq: 15 });
  assert.deepEqual(chunksOf(events), range(15, 20));
  assert.equal(events.at(-1)?.type, 'end');
  // Appends go on at the tail after a trim.
  assert.equal(await store.appendChunks('bytes', 22, [hundred]), 1);
});

test('retention and cleanup run from the maintenance timer; cleanup removes finished streams by age', async (t) => {
  const store = await openStore(t, { maintenanceIntervalMs: 10, finishedRetentionMs: 30 });
  await store.createStream(stream('trimmed', { retention: { maxChunks: 2 } }));
  await store.createStream(stream('old'));
  await store.createStream(stream('live'));
  await store.appendChunks('trimmed', 0, range(0, 10));
  await store.appendChunks('old', 0, range(0, 10));
  await store.setStatus('old', 'done');
  const deadline = Date.now() + 3000;
  while ((store.logHead('trimmed') !== 8 || store.getStream('old') !== undefined) && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  assert.equal(store.logHead('trimmed'), 8);
  assert.equal(store.getStream('old'), undefined, 'finished stream older than finishedRetentionMs removed');
  assert.ok(store.getStream('live'), 'unfinished streams stay');

  const other = await openStore(t);
  await other.createStream(stream('done'));
  await other.setStatus('done', 'done');
  await other.createStream(stream('running', { status: 'running' }));
  assert.deepEqual(await other.cleanup({ finishedOlderThanMs: 60_000 }), { removed: 0 });
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.deepEqual(await other.cleanup({ finishedOlderThanMs: 0 }), { removed: 1 });
  assert.deepEqual(other.listStreams().map((s) => s.id), ['running']);
  await assert.rejects(other.cleanup({ finishedOlderThanMs: -1 }), /`finishedOlderThanMs`/);
});

test('removeStream removes a long log in batches and ends parked readers', async (t) => {
  const path = dataPath();
  const store = await openStore(t, { path, maintenanceBatchSize: 50 });
  await store.createStream(stream('s'));
  for (let i = 0; i < 10; i++) await store.appendChunks('s', i * 100, range(i * 100, i * 100 + 100));
  const parked = collect(store.read('s', { fromSeq: 1000 }));
  await new Promise((resolve) => setTimeout(resolve, 5));
  assert.equal(await store.removeStream('s'), true);
  await assert.rejects(parked, hasCode('ERR_STREAM_NOT_FOUND'));
  await store.close();
  // One record per appended batch of 100.
  for (let first = 0; first < 1000; first += 100) assert.equal(await readRaw(path, 'log', ['s', first]), undefined);
});

test('epoch: a re-created folder has a new epoch, and an old reader position gets a reset', async (t) => {
  const path = dataPath();
  const before = await Store.open({ path, env: {} });
  const oldEpoch = before.epoch;
  await before.createStream(stream('s'));
  await before.appendChunks('s', 0, range(0, 10));
  await before.close();
  await rm(path, { recursive: true, force: true });

  const store = await openStore(t, { path });
  assert.notEqual(store.epoch, oldEpoch);
  await store.createStream(stream('s'));
  await store.appendChunks('s', 0, ['n0', 'n1']);
  await store.setStatus('s', 'done');
  assert.deepEqual(await collect(store.read('s', { fromSeq: 8, epoch: oldEpoch })), [
    { type: 'reset', epoch: store.epoch },
    { type: 'chunk', seq: 0, data: 'n0' },
    { type: 'chunk', seq: 1, data: 'n1' },
    { type: 'end', status: 'done' },
  ]);
});

test('encryption: data sealed on disk, wrong/missing/malformed key is ERR_STORE_KEY, env fallback', async (t) => {
  const path = dataPath();
  const key = randomBytes(32);
  const marker = 'PLAINTEXT-MARKER-7f3a';
  const first = await Store.open({ path, encryptionKey: key.toString('base64'), env: {} });
  assert.equal(first.encrypted, true);
  await first.createStream(stream('s', { params: { secret: marker } }));
  await first.appendChunks('s', 0, [marker, new Uint8Array(Buffer.from(marker)), { nested: marker }]);
  await first.putCheckpoint({ streamId: 's', seq: 3, state: marker });
  await first.close();

  const onDisk = await readFile(join(path, 'data.mdb'));
  assert.equal(onDisk.includes(Buffer.from(marker)), false, 'no plaintext in data.mdb');

  await assert.rejects(Store.open({ path, env: {} }), hasCode('ERR_STORE_KEY'));
  await assert.rejects(Store.open({ path, encryptionKey: randomBytes(32), env: {} }), hasCode('ERR_STORE_KEY'));
  await assert.rejects(Store.open({ path, encryptionKey: 'c2hvcnQ=', env: {} }), (err: unknown) => {
    hasCode('ERR_STORE_KEY')(err);
    assert.match((err as Error).message, /`encryptionKey`/);
    assert.equal((err as Error).message.includes('c2hvcnQ'), false, 'the key is not echoed');
    return true;
  });
  // The option wins over the environment; `null` ignores the environment.
  await assert.rejects(Store.open({ path, encryptionKey: randomBytes(32), env: { SLUICE_STORE_KEY: key.toString('hex') } }), hasCode('ERR_STORE_KEY'));
  await assert.rejects(Store.open({ path, encryptionKey: null, env: { SLUICE_STORE_KEY: key.toString('hex') } }), hasCode('ERR_STORE_KEY'));

  const store = await openStore(t, { path, env: { SLUICE_STORE_KEY: key.toString('hex') } });
  assert.deepEqual(store.getStream('s')?.params, { secret: marker });
  assert.deepEqual(
    store.readRange('s', 0, 10).map((c) => c.data),
    [marker, new Uint8Array(Buffer.from(marker)), { nested: marker }],
  );
  assert.equal(store.getCheckpoint('s')?.state, marker);

  const plain = await openStore(t);
  await plain.close();
  await assert.rejects(Store.open({ path: plain.path, encryptionKey: key, env: {} }), hasCode('ERR_STORE_KEY'));
});

test('encryption: a sealed record moved to another key or tampered with is ERR_STORE_CORRUPT', async (t) => {
  const path = dataPath();
  const key = randomBytes(32);
  const first = await Store.open({ path, encryptionKey: key, env: {} });
  await first.createStream(stream('s'));
  // Two batches, so two records: ['s', 0] and ['s', 1].
  await first.appendChunks('s', 0, ['zero']);
  await first.appendChunks('s', 1, ['one']);
  await first.close();
  const zero = await readRaw(path, 'log', ['s', 0]);
  assert.ok(zero);
  await writeRaw(path, 'log', ['s', 1], zero); // replay batch 0 as batch 1
  const store = await openStore(t, { path, encryptionKey: key });
  assert.throws(() => store.readRange('s', 0, 10), (err: unknown) => {
    hasCode('ERR_STORE_CORRUPT')(err);
    assert.match((err as Error).message, /log\/s#1/);
    return true;
  });
});

test('corrupt records and unknown versions are coded errors naming the record, never skipped', async (t) => {
  const path = dataPath();
  const first = await Store.open({ path, env: {} });
  await first.createStream(stream('s'));
  await first.createStream(stream('t'));
  // One batch per chunk: records ['s', 0], ['s', 1], ['s', 2].
  for (const [seq, data] of ['a', 'b', 'c'].entries()) await first.appendChunks('s', seq, [data]);
  await first.putCheckpoint({ streamId: 's', seq: 1, state: 'x' });
  await first.close();

  await writeRaw(path, 'streams', 't', Buffer.from([1, 0, 0xff, 0x13, 0x37])); // version 1, garbage payload
  await writeRaw(path, 'log', ['s', 1], Buffer.from([9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1])); // version 9
  await writeRaw(path, 'checkpoints', 's', Buffer.from([1]));

  const store = await openStore(t, { path });
  const corruptNaming = (where: string) => (err: unknown) => {
    hasCode('ERR_STORE_CORRUPT')(err);
    assert.ok((err as Error).message.includes(where), (err as Error).message);
    return true;
  };
  assert.throws(() => store.getStream('t'), corruptNaming('streams/t'));
  assert.throws(() => store.listStreams(), corruptNaming('streams/t'));
  assert.throws(() => store.getCheckpoint('s'), corruptNaming('checkpoints/s'));
  assert.throws(() => store.readRange('s', 0, 10), (err: unknown) => {
    hasCode('ERR_STORE_VERSION')(err);
    assert.match((err as Error).message, /log\/s#1 has version 9/);
    return true;
  });
  // The reader yields what precedes the bad record, then fails with the code.
  const events: ReadEvent[] = [];
  await assert.rejects(
    (async () => {
      for await (const event of store.read('s')) events.push(event);
    })(),
    hasCode('ERR_STORE_VERSION'),
  );
  assert.deepEqual(events, [{ type: 'chunk', seq: 0, data: 'a' }]);
  await store.close();

  // A valid record with a missing field, and a hole in the log.
  const { serialize } = await import('node:v8');
  const payload = serialize({ id: 's', plugin: 'p' });
  await writeRaw(path, 'streams', 't', Buffer.concat([Buffer.from([1, 0]), payload]));
  const env = openLmdb({ path, noSubdir: false });
  await env.openDB('log', { encoding: 'binary' }).remove(['s', 1]);
  await env.close();
  const again = await openStore(t, { path });
  assert.throws(() => again.getStream('t'), /streams\/t is corrupt: field `action`/);
  await assert.rejects(collect(again.read('s')), (err: unknown) => {
    hasCode('ERR_STORE_CORRUPT')(err);
    assert.match((err as Error).message, /no chunk 1/);
    return true;
  });
});

test('file modes: folder 0700, files 0600, also for a folder that existed with wider modes', async (t) => {
  const path = dataPath();
  const store = await openStore(t, { path });
  assert.equal((await stat(path)).mode & 0o777, 0o700);
  for (const file of ['data.mdb', 'lock.mdb']) assert.equal((await stat(join(path, file))).mode & 0o777, 0o600, file);
  await store.close();

  const wide = dataPath();
  mkdirSync(wide, { recursive: true });
  await chmod(wide, 0o755);
  await openStore(t, { path: wide });
  assert.equal((await stat(wide)).mode & 0o777, 0o700);
});

test('options are validated with messages naming the option and the value', async (t) => {
  await assert.rejects(Store.open({ path: dataPath(), readPageSize: 0, env: {} }), (err: unknown) => {
    hasCode('ERR_INVALID_ARGUMENT')(err);
    assert.match((err as Error).message, /`readPageSize`.*got 0 \(number\)/);
    return true;
  });
  await assert.rejects(Store.open({ path: '', env: {} }), /`path`/);
  await assert.rejects(Store.open({ path: dataPath(), maintenanceIntervalMs: 1.5, env: {} }), /`maintenanceIntervalMs`/);
  const store = await openStore(t);
  await assert.rejects(store.createStream(stream('x', { durability: 'none' as never })), /`durability`.*'checkpoint', 'log'/);
  await assert.rejects(store.createStream(stream('x', { retention: { maxChunks: -1 } })), /`retention.maxChunks`/);
  await assert.rejects(store.createStream(stream('x', { params: { f: () => 1 } as never })), hasCode('ERR_INVALID_ARGUMENT'));
  await assert.rejects(store.createStream(stream('bad\nid')), /`id`/);
});

test('close is idempotent; use after close is ERR_STORE_CLOSED', async (t) => {
  const store = await openStore(t);
  await store.createStream(stream('s'));
  await Promise.all([store.close(), store.close()]);
  await store[Symbol.asyncDispose]();
  assert.equal(store.closed, true);
  assert.throws(() => store.getStream('s'), hasCode('ERR_STORE_CLOSED'));
  await assert.rejects(store.appendChunks('s', 0, ['x']), hasCode('ERR_STORE_CLOSED'));
  await assert.rejects(store.putCheckpoint({ streamId: 's', seq: 0, state: null }), hasCode('ERR_STORE_CLOSED'));
  assert.throws(() => store.read('s'), hasCode('ERR_STORE_CLOSED'));
});

test('crash durability: every seq printed after its flush is on disk after SIGKILL', { timeout: 30_000 }, async (t) => {
  const path = dataPath();
  const child = spawn(process.execPath, [fileURLToPath(new URL('./fixtures/store-crash-child.js', import.meta.url)), path], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.after(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const exited = new Promise<NodeJS.Signals | number | null>((resolve) => child.on('exit', (code, signal) => resolve(signal ?? code)));

  const KILL_AFTER_LINES = 60;
  const TIME_LIMIT_MS = 10_000;
  let printed = 0;
  let lines = 0;
  let buffered = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`child printed ${lines} lines in ${TIME_LIMIT_MS} ms; stderr: ${stderr}`)), TIME_LIMIT_MS);
    child.stdout.setEncoding('utf8').on('data', (text: string) => {
      buffered += text;
      const complete = buffered.split('\n');
      buffered = complete.pop() ?? '';
      for (const line of complete) {
        if (line === 'ready') continue;
        printed = Math.max(printed, Number(line));
        if (++lines === KILL_AFTER_LINES) {
          child.kill('SIGKILL'); // mid-way: more rounds are in flight
          clearTimeout(timer);
          resolve();
        }
      }
    });
    child.on('exit', () => {
      clearTimeout(timer);
      reject(new Error(`child exited before the kill; stderr: ${stderr}`));
    });
  });
  assert.equal(await exited, 'SIGKILL');
  assert.ok(printed >= KILL_AFTER_LINES * 10);

  const store = await openStore(t, { path });
  const tail = store.logTail('crash');
  assert.ok(tail >= printed, `log tail ${tail} is behind the last flushed seq ${printed}`);
  const chunks = store.readRange('crash', 0, 100_000);
  assert.deepEqual(chunks.map((c) => c.seq), range(0, tail), 'contiguous from 0');
  assert.ok(chunks.every((c) => (c.data as { n: number }).n === c.seq));
  const checkpoint = store.getCheckpoint('crash');
  assert.ok(checkpoint !== undefined && checkpoint.seq >= printed, `checkpoint ${checkpoint?.seq} is behind ${printed}`);
  assert.ok(checkpoint.seq <= tail, 'a checkpoint never runs ahead of the log');
  assert.deepEqual(store.listStreams({ status: UNFINISHED_STATUSES }).map((s) => s.id), ['crash']);
  // The resumed stream goes on where the log ends.
  assert.equal(await store.appendChunks('crash', checkpoint.seq, range(checkpoint.seq, tail + 1)), 1);
});

test('batch records: one per append, reads and trims inside a batch, overlap keeps only the new tail, v1 records refused', async (t) => {
  const path = dataPath();
  const first = await Store.open({ path, env: {}, readPageSize: 3, maintenanceBatchSize: 2 });
  await first.createStream(stream('s', { retention: { maxChunks: 12 } }));
  assert.equal(await first.appendChunks('s', 0, range(0, 10)), 10);
  // Overlapping batch: 8 and 9 are dropped, 10..14 stored as one record at key 10.
  assert.equal(await first.appendChunks('s', 8, range(8, 15)), 5);
  assert.equal(await first.appendChunks('s', 15, [new Uint8Array([15]), new Uint8Array([16])]), 2);
  assert.equal(await first.appendChunks('s', 17, [17, new Uint8Array([18])]), 2);
  assert.deepEqual(first.readRange('s', 4, 3).map((c) => c.seq), [4, 5, 6]);
  assert.deepEqual(first.readRange('s', 9, 100).map((c) => c.seq), range(9, 19));
  assert.deepEqual(first.readRange('s', 15, 4).map((c) => c.data), [new Uint8Array([15]), new Uint8Array([16]), 17, new Uint8Array([18])]);
  // maxChunks 12 of 19: head 7, inside the first record, which stays until its last chunk goes.
  assert.deepEqual(await first.runRetention(), { trimmed: 7, streams: 1 });
  assert.equal(first.logHead('s'), 7);
  await first.setStatus('s', 'done');
  const events = await collect(first.read('s', { fromSeq: 2 }));
  assert.deepEqual(events[0], { type: 'gap', fromSeq: 2, toSeq: 7 });
  assert.deepEqual(chunksOf(events), range(7, 19));
  await first.close();
  assert.ok(await readRaw(path, 'log', ['s', 0]), 'a partly trimmed record stays');
  assert.ok(await readRaw(path, 'log', ['s', 10]));
  assert.equal(await readRaw(path, 'log', ['s', 8]), undefined, 'no record for dropped repeats');

  // After a reopen the tail and head come back from the records; trimming past the first record deletes it.
  const store = await openStore(t, { path });
  assert.equal(store.logTail('s'), 19);
  assert.equal(store.logHead('s'), 7);
  await store.close();
  // A version 1 record (a chunk per record) is ERR_STORE_VERSION naming it.
  await writeRaw(path, 'log', ['s', 10], Buffer.from([1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]));
  const again = await openStore(t, { path });
  assert.throws(() => again.readRange('s', 0, 100), (err: unknown) => {
    hasCode('ERR_STORE_VERSION')(err);
    assert.match((err as Error).message, /log\/s#10 has version 1; this sluice reads version 2/);
    return true;
  });
});

test('batch records: retention deletes records wholly below the head', async () => {
  const path = dataPath();
  const store = await Store.open({ path, env: {}, maintenanceBatchSize: 2 });
  await store.createStream(stream('s', { retention: { maxChunks: 3 } }));
  for (let i = 0; i < 5; i++) await store.appendChunks('s', i * 4, range(i * 4, i * 4 + 4));
  assert.deepEqual(await store.runRetention(), { trimmed: 17, streams: 1 });
  assert.equal(store.logHead('s'), 17);
  assert.deepEqual(store.readRange('s', 0, 100).map((c) => c.seq), [17, 18, 19]);
  await store.close();
  for (const key of [0, 4, 8, 12]) assert.equal(await readRaw(path, 'log', ['s', key]), undefined, `record ${key} deleted`);
  assert.ok(await readRaw(path, 'log', ['s', 16]));
});
