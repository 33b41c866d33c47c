/**
 * Question: what does the durable store cost over a bare LMDB put?
 *
 * Appends: one round = STREAMS concurrent batches of BATCH chunks of 1 KiB (what
 * STREAMS durable streams do when each flushes a credit window), through
 * `Store.appendChunks` (encode, contiguity, group commit, notify), and as the raw
 * baselines the same number of bare async `put([id, seq], bytes)` into a binary LMDB
 * table of the same kind (a put per chunk), and one bare put per batch of the batch's
 * bytes concatenated (what the store's batch records cost at best), awaiting the commit. Appends are I/O bound and the disk is
 * shared, so a sequential race (A for a second, then B) mostly measures the disk's
 * mood and the files' growth; the contenders instead take turns round by round, in a
 * rotating order, and each figure is total chunks over its own total time.
 *
 * tinybench times what is not a disk race: checkpoints awaited until flushed (100 in
 * flight) and reading a finished stream back through `read()`.
 *
 * Not wired into a runner: `const figures = await benchStore()`.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { open } from 'lmdb';
import { Bench, type Task } from 'tinybench';
import type { ChunkData } from '../protocol/chunk.js';
import { Store } from '../host/store/store.js';

const STREAMS = 10;
const BATCH = 100;
const CHUNKS_PER_ROUND = STREAMS * BATCH;
const CHUNK_BYTES = 1024;
const ROUNDS = 80;
const WARMUP_ROUNDS = 5;
const CHECKPOINTS_PER_ROUND = 100;
const READ_CHUNKS = 10_000;

export interface StoreFigures {
  /** Bare lmdb async puts of 1 KiB per second (committed). */
  raw_put_per_s: number;
  /** 1 KiB chunks per second as bare puts of one 100 KiB value per batch (committed). */
  raw_batch_put_per_s: number;
  /** 1 KiB Uint8Array chunks appended (committed) per second. */
  store_append_per_s: number;
  /** ~1 KiB JSON object chunks appended per second. */
  store_append_json_per_s: number;
  /** 1 KiB Uint8Array chunks appended per second with AES-256-GCM. */
  store_append_encrypted_per_s: number;
  store_append_vs_raw_put: number;
  store_append_json_vs_raw_put: number;
  store_append_encrypted_vs_raw_put: number;
  /** The store's JSON appends against one bare put per batch. */
  store_append_json_vs_raw_batch_put: number;
  /** Checkpoints per second, each awaited until flushed, 100 in flight. */
  checkpoint_flushed_per_s: number;
  /** Chunks per second through `read()` (1 KiB bytes, default page size). */
  read_chunks_per_s: number;
}

function throughput(task: Task | undefined): number {
  const result = task?.result;
  if (result === undefined || !('throughput' in result)) {
    throw new Error(`bench task ${task?.name ?? '?'} has no result${result && 'error' in result ? `: ${String(result.error)}` : ''}`);
  }
  return result.throughput.mean;
}

interface Contender {
  name: string;
  round: () => Promise<void>;
  ms: number;
}

/** Run the store benchmark (about 10 to 15 s) and return its figures. */
export async function benchStore(): Promise<StoreFigures> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-bench-store-'));
  const plain = await Store.open({ path: join(dir, 'plain'), env: {}, encryptionKey: null });
  const sealed = await Store.open({ path: join(dir, 'sealed'), env: {}, encryptionKey: randomBytes(32) });
  const rawEnv = open({ path: join(dir, 'raw'), noSubdir: false, encoding: 'binary' });
  const rawLog = rawEnv.openDB<Buffer, [string, number]>('log', { encoding: 'binary' });
  try {
    const bytes = new Uint8Array(randomBytes(CHUNK_BYTES));
    const json = { kind: 'row', id: 0, text: 'x'.repeat(CHUNK_BYTES - 64), tags: ['a', 'b'], ok: true };
    const ids = Array.from({ length: STREAMS }, (_, i) => `bench-${i}`);
    for (const id of ids) {
      await plain.createStream({ id, plugin: 'bench', action: 'bytes', durability: 'log' });
      await plain.createStream({ id: `${id}-json`, plugin: 'bench', action: 'json', durability: 'log' });
      await sealed.createStream({ id, plugin: 'bench', action: 'bytes', durability: 'log' });
    }
    const bytesBatch: ChunkData[] = Array.from({ length: BATCH }, () => bytes);
    const jsonBatch: ChunkData[] = Array.from({ length: BATCH }, (_, i) => ({ ...json, id: i }));

    const appender = (store: Store, suffix: string, batch: readonly ChunkData[]): (() => Promise<void>) => {
      let seq = 0;
      return async () => {
        const first = seq;
        seq += BATCH;
        await Promise.all(ids.map((id) => store.appendChunks(`${id}${suffix}`, first, batch)));
      };
    };
    let rawSeq = 0;
    const rawValue = Buffer.from(bytes);
    const rawRound = async (): Promise<void> => {
      let last: Promise<boolean> | undefined;
      for (const id of ids) for (let i = 0; i < BATCH; i++) last = rawLog.put([id, rawSeq + i], rawValue);
      rawSeq += BATCH;
      await last;
    };

    let rawBatchSeq = 0;
    const rawBatchValue = Buffer.concat(Array.from({ length: BATCH }, () => rawValue));
    const rawBatchRound = async (): Promise<void> => {
      let last: Promise<boolean> | undefined;
      for (const id of ids) last = rawLog.put([`${id}-batch`, rawBatchSeq], rawBatchValue);
      rawBatchSeq += BATCH;
      await last;
    };

    const contenders: Contender[] = [
      { name: 'raw', round: rawRound, ms: 0 },
      { name: 'raw-batch', round: rawBatchRound, ms: 0 },
      { name: 'bytes', round: appender(plain, '', bytesBatch), ms: 0 },
      { name: 'json', round: appender(plain, '-json', jsonBatch), ms: 0 },
      { name: 'sealed', round: appender(sealed, '', bytesBatch), ms: 0 },
    ];
    for (let r = 0; r < WARMUP_ROUNDS + ROUNDS; r++) {
      for (let k = 0; k < contenders.length; k++) {
        const c = contenders[(r + k) % contenders.length] as Contender;
        const start = performance.now();
        await c.round();
        if (r >= WARMUP_ROUNDS) c.ms += performance.now() - start;
      }
    }
    const perS = (c: Contender | undefined): number => ((ROUNDS * CHUNKS_PER_ROUND) / (c?.ms ?? Infinity)) * 1000;
    const [raw, rawBatch, store, storeJson, storeSealed] = contenders.map(perS) as [number, number, number, number, number];

    await plain.createStream({ id: 'checkpoints', plugin: 'bench', action: 'cp', durability: 'checkpoint' });
    let cpSeq = 0;
    const checkpointRound = async (): Promise<void> => {
      const pending: Promise<unknown>[] = [];
      for (let i = 0; i < CHECKPOINTS_PER_ROUND; i++) pending.push(plain.putCheckpoint({ streamId: 'checkpoints', seq: cpSeq++, state: { cursor: cpSeq } }));
      await Promise.all(pending);
    };
    await plain.createStream({ id: 'read', plugin: 'bench', action: 'read', durability: 'log' });
    for (let seq = 0; seq < READ_CHUNKS; seq += BATCH) await plain.appendChunks('read', seq, bytesBatch);
    await plain.setStatus('read', 'done');
    const readAll = async (): Promise<void> => {
      let n = 0;
      for await (const event of plain.read('read')) if (event.type === 'chunk') n++;
      if (n !== READ_CHUNKS) throw new Error(`read ${n} chunks, expected ${READ_CHUNKS}`);
    };
    const bench = new Bench({ time: 1000, warmupTime: 200, iterations: 5 });
    bench.add('store putCheckpoint flushed', checkpointRound).add('store read', readAll);
    await bench.run();
    const [checkpoints, read] = bench.tasks.map(throughput) as [number, number];

    const ratio = (n: number): number => Math.round((n / raw) * 1000) / 1000;
    return {
      raw_put_per_s: Math.round(raw),
      raw_batch_put_per_s: Math.round(rawBatch),
      store_append_per_s: Math.round(store),
      store_append_json_per_s: Math.round(storeJson),
      store_append_encrypted_per_s: Math.round(storeSealed),
      store_append_vs_raw_put: ratio(store),
      store_append_json_vs_raw_put: ratio(storeJson),
      store_append_encrypted_vs_raw_put: ratio(storeSealed),
      store_append_json_vs_raw_batch_put: Math.round((storeJson / rawBatch) * 1000) / 1000,
      checkpoint_flushed_per_s: Math.round(checkpoints * CHECKPOINTS_PER_ROUND),
      read_chunks_per_s: Math.round(read * READ_CHUNKS),
    };
  } finally {
    await plain.close();
    await sealed.close();
    await rawEnv.close();
    await rm(dir, { recursive: true, force: true });
  }
}
