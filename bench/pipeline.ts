/**
 * Question: what does splitting a job across two plugins cost? A two-plugin pipeline
 * (records -> enrich, the second consuming the first's stream as its input, credits
 * both ways) against one plugin doing both steps, same records, same output.
 */
import { fileURLToPath } from 'node:url';
import { Sluice } from '../host/index.js';
import { type Contender, medianRatio, race, round3, timed } from './harness.js';

const PLUGIN = fileURLToPath(new URL('../../bench/fixtures/plugins/steps.ts', import.meta.url));
const CHUNKS = 50_000;
const ROUNDS = 5;

export const targets = {};

export async function benchPipeline(log: (line: string) => void = console.log): Promise<Record<string, number>> {
  const host = await Sluice.open({ isolates: false, logger: false });
  try {
    const drain = async (stream: AsyncIterable<unknown>): Promise<void> => {
      let n = 0;
      for await (const _ of stream) n++;
      if (n !== CHUNKS) throw new Error(`expected ${CHUNKS} chunks, got ${n}`);
    };
    const pipelined = (): AsyncIterable<unknown> => host.stream(PLUGIN, 'enrich', {}, { input: host.stream(PLUGIN, 'records', { count: CHUNKS }) });
    await drain(pipelined());
    await drain(host.stream(PLUGIN, 'recordsEnriched', { count: CHUNKS }));
    const pipeline: Contender = { name: 'pipeline', ms: [], run: timed(() => drain(pipelined())) };
    const single: Contender = { name: 'single', ms: [], run: timed(() => drain(host.stream(PLUGIN, 'recordsEnriched', { count: CHUNKS }))) };
    log(`pipeline: ${CHUNKS} records, two plugins chained vs one plugin doing both, ${ROUNDS} rounds`);
    await race([pipeline, single], ROUNDS, log);
    return { pipeline_vs_single: round3(medianRatio(pipeline.ms, single.ms)) };
  } finally {
    await host.close();
  }
}
