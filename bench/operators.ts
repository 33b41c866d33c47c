/**
 * Question: what do the stream operators cost per chunk over a hand-written loop?
 *
 * One operation = reading ITEMS chunks `{ seq, data }` from an in-memory async
 * generator (the shape of a host stream) and doing a little work on each (multiply,
 * keep the even ones, sum):
 * - `operators`: `pipe(source, map(f), filter(p))`, read with `for await`;
 * - `hand-written`: the same work inline in one `for await` over the same generator.
 * `operator_overhead` = operators time / hand-written time (target <= 1.3).
 *
 * Also, each against its own hand-written baseline: `merge` of two generators vs
 * reading them one after the other, and `tee` into two branches read together under
 * the 'wait' policy vs one loop doing both branches' work.
 *
 * Not wired into a runner: `const figures = await benchOperators()`.
 */
import { Bench, type Task } from 'tinybench';
import { filter, map, merge, pipe, tee } from '../host/operators/index.js';

const ITEMS = 10_000;
const TASK_TIME_MS = 250;
const WARMUP_MS = 50;

interface Chunk {
  seq: number;
  data: number;
}

async function* chunks(n: number): AsyncGenerator<Chunk> {
  for (let i = 0; i < n; i++) yield { seq: i, data: i };
}

const triple = (c: Chunk): number => c.data * 3;
const even = (x: number): boolean => (x & 1) === 0;

async function handWritten(): Promise<number> {
  let sum = 0;
  for await (const c of chunks(ITEMS)) {
    const x = triple(c);
    if (even(x)) sum += x;
  }
  return sum;
}

async function withOperators(): Promise<number> {
  let sum = 0;
  for await (const x of pipe(chunks(ITEMS), map(triple), filter(even))) sum += x;
  return sum;
}

async function handTwoSources(): Promise<number> {
  let sum = 0;
  for await (const c of chunks(ITEMS / 2)) sum += c.data;
  for await (const c of chunks(ITEMS / 2)) sum += c.data;
  return sum;
}

async function withMerge(): Promise<number> {
  let sum = 0;
  for await (const c of merge(chunks(ITEMS / 2), chunks(ITEMS / 2))) sum += c.data;
  return sum;
}

async function handTwoConsumers(): Promise<number> {
  let a = 0;
  let b = 0;
  for await (const c of chunks(ITEMS)) {
    a += c.data;
    b ^= c.seq;
  }
  return a + b;
}

async function withTee(): Promise<number> {
  const [left, right] = tee(chunks(ITEMS), 2);
  const readLeft = async (): Promise<number> => {
    let a = 0;
    for await (const c of left!) a += c.data;
    return a;
  };
  const readRight = async (): Promise<number> => {
    let b = 0;
    for await (const c of right!) b ^= c.seq;
    return b;
  };
  const [a, b] = await Promise.all([readLeft(), readRight()]);
  return a + b;
}

function meanMs(task: Task | undefined): number {
  const result = task?.result;
  if (result === undefined || !('latency' in result)) {
    throw new Error(`bench task ${task?.name ?? '?'} has no result${result && 'error' in result ? `: ${String(result.error)}` : ''}`);
  }
  return result.latency.mean;
}

const ROUNDS = 5;

/**
 * Median over ROUNDS short tinybench runs of (candidate time / baseline time). The
 * two run back to back in each round, in alternating order, so a load change on a
 * shared machine hits both sides instead of biasing the ratio.
 */
async function medianRatio(baseline: () => Promise<number>, candidate: () => Promise<number>): Promise<{ ratio: number; baselineMs: number; candidateMs: number }> {
  const rounds: { ratio: number; baselineMs: number; candidateMs: number }[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const bench = new Bench({ time: TASK_TIME_MS, warmupTime: WARMUP_MS });
    if (round % 2 === 0) bench.add('baseline', baseline).add('candidate', candidate);
    else bench.add('candidate', candidate).add('baseline', baseline);
    await bench.run();
    const baselineMs = meanMs(bench.getTask('baseline'));
    const candidateMs = meanMs(bench.getTask('candidate'));
    rounds.push({ ratio: candidateMs / baselineMs, baselineMs, candidateMs });
  }
  rounds.sort((a, b) => a.ratio - b.ratio);
  return rounds[Math.floor(ROUNDS / 2)]!;
}

/** Run the operator benchmark (about 10 s) and return its figures. */
export async function benchOperators(): Promise<Record<string, number>> {
  // The two sides must agree, or the comparison is meaningless.
  if ((await handWritten()) !== (await withOperators())) throw new Error('operators and hand-written loop disagree');
  if ((await handTwoSources()) !== (await withMerge())) throw new Error('merge and hand-written loop disagree');
  if ((await handTwoConsumers()) !== (await withTee())) throw new Error('tee and hand-written loop disagree');

  const ops = await medianRatio(handWritten, withOperators);
  const merged = await medianRatio(handTwoSources, withMerge);
  const teed = await medianRatio(handTwoConsumers, withTee);
  const nsPerItem = (ms: number): number => (ms * 1e6) / ITEMS;
  return {
    operator_overhead: ops.ratio,
    hand_ns_per_item: nsPerItem(ops.baselineMs),
    operators_ns_per_item: nsPerItem(ops.candidateMs),
    merge_overhead: merged.ratio,
    tee_overhead: teed.ratio,
  };
}
