/**
 * Question: what does durability cost? The same stream of ~1 KiB JSON records with
 * durability none, checkpoint (a checkpoint every 64 chunks) and log (every chunk
 * appended to LMDB, group-committed, and handed to the consumer only once committed:
 * from memory while it keeps up, as the product does), in one run.
 *
 * Read `log_vs_none` with the records in mind: each is `{ i, pad }` with ~900 characters
 * of pseudo-words, distinct per record (LZ4 would halve them, as real JSON records;
 * a run of one letter would shrink ~50x). The log is not compressed (host/store/engine.ts
 * says why), so a run writes ~200 MB of synced pages: on the bench machine's disk
 * (~150-200 MB/s with sync) that alone is ~1 s, against ~0.35 s for the whole stream
 * without durability, so this ratio has a ceiling near 0.35 here that no host code lifts.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Sluice } from '../host/index.js';
import type { StreamOptions } from '../host/types.js';
import { type Contender, medianRatio, perS, race, round3, timed } from './harness.js';

const PLUGIN = fileURLToPath(new URL('../../bench/fixtures/plugins/steps.ts', import.meta.url));
const CHUNKS = 200_000;
const ROUNDS = 5;

export const targets = { checkpoint_vs_none: '>= 0.95', log_vs_none: '>= 0.5' };

export async function benchDurable(log: (line: string) => void = console.log): Promise<Record<string, number>> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-bench-durable-'));
  const host = await Sluice.open({ dataDir: join(dir, 'data'), isolates: false, logger: false });
  try {
    const drain = async (params: object, options: StreamOptions): Promise<void> => {
      let n = 0;
      for await (const _ of host.stream(PLUGIN, 'records', params, options)) n++;
      if (n !== CHUNKS) throw new Error(`expected ${CHUNKS} chunks, got ${n}`);
    };
    await drain({ count: CHUNKS }, {}); // warm: bundle, threads, JIT
    const none: Contender = { name: 'none', ms: [], run: timed(() => drain({ count: CHUNKS }, {})) };
    const checkpoint: Contender = { name: 'checkpoint', ms: [], run: timed(() => drain({ count: CHUNKS, checkpointEvery: 64 }, { durability: 'checkpoint' })) };
    const logged: Contender = { name: 'log', ms: [], run: timed(() => drain({ count: CHUNKS }, { durability: 'log' })) };
    log(`durability: ${CHUNKS} records of ~1 KiB, worker sandbox, ${ROUNDS} rounds`);
    await race([none, checkpoint, logged], ROUNDS, log);
    return {
      checkpoint_vs_none: round3(medianRatio(checkpoint.ms, none.ms)),
      log_vs_none: round3(medianRatio(logged.ms, none.ms)),
      durable_none_chunks_per_s: perS(CHUNKS, none.ms),
      durable_checkpoint_chunks_per_s: perS(CHUNKS, checkpoint.ms),
      durable_log_chunks_per_s: perS(CHUNKS, logged.ms),
    };
  } finally {
    await host.close();
    await rm(dir, { recursive: true, force: true });
  }
}
