/**
 * Shared by the end-to-end questions: contenders race in rounds with a rotating order
 * (so drift on a shared machine hits every contender alike), and a figure is the
 * median over rounds of one contender's throughput relative to another's.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** A forced GC before each run, so one contender's garbage is not collected on another's clock. */
const gc = ((): (() => void) | undefined => {
  setFlagsFromString('--expose-gc');
  const fn = runInNewContext('gc') as unknown;
  return typeof fn === 'function' ? (fn as () => void) : undefined;
})();

export interface Contender {
  name: string;
  /** One timed run; returns its duration in ms. */
  run(): Promise<number>;
  times: number[];
}

export function contender(name: string, run: () => Promise<void>): Contender {
  return {
    name,
    times: [],
    async run() {
      gc?.();
      const t0 = performance.now();
      await run();
      return performance.now() - t0;
    },
  };
}

export async function race(contenders: Contender[], rounds: number, log: (line: string) => void): Promise<void> {
  for (let r = 0; r < rounds; r++) {
    const order = contenders.map((_, i) => contenders[(i + r) % contenders.length]!);
    for (const c of order) c.times.push(await c.run());
    log(`round ${r + 1}: ${contenders.map((c) => `${c.name} ${c.times.at(-1)!.toFixed(0)} ms`).join(', ')}`);
  }
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** Median over rounds of baseline time / candidate time: the candidate's throughput as a fraction of the baseline's. */
export function ratio(candidate: Contender, baseline: Contender): number {
  return median(candidate.times.map((t, i) => baseline.times[i]! / t));
}

export function round3(n: number): number {
  return Math.round(n * 1000) / 1000;
}
