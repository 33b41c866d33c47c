/**
 * Shared by the end-to-end questions: contenders race in rounds with a rotating order
 * (so drift on a shared machine hits every contender alike), a full GC before each run,
 * and a figure is the median over rounds of one contender's throughput relative to another's.
 */
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

/** One contender: `run` does one timed run and returns its duration in ms. */
export interface Contender {
  name: string;
  run: () => Promise<number>;
  ms: number[];
}

/**
 * A full GC between runs, so one contender's garbage is not collected on the next one's
 * clock. The runner cannot pass --expose-gc (package.json fixes its flags); V8 takes it at runtime.
 */
export const collectGarbage: () => void = (() => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as unknown;
  return typeof gc === 'function' ? (gc as () => void) : () => undefined;
})();

/** Time `fn`: for contenders whose run does not time itself. */
export function timed(fn: () => Promise<void>): () => Promise<number> {
  return async () => {
    const start = performance.now();
    await fn();
    return performance.now() - start;
  };
}

/** Each round runs every contender once, the order rotating per round. */
export async function race(contenders: Contender[], rounds: number, log?: (line: string) => void): Promise<void> {
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < contenders.length; k++) {
      const c = contenders[(r + k) % contenders.length]!;
      collectGarbage();
      c.ms.push(await c.run());
    }
    log?.(`round ${r + 1}: ${contenders.map((c) => `${c.name} ${c.ms.at(-1)!.toFixed(0)} ms`).join(', ')}`);
  }
}

export function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? sorted[mid]! : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

/** Median over rounds of (baseline ms / candidate ms): candidate throughput as a fraction of the baseline's. */
export function medianRatio(candidate: number[], baseline: number[]): number {
  return median(candidate.map((ms, i) => baseline[i]! / ms));
}

export const ratios = (candidate: number[], baseline: number[]): string => candidate.map((ms, i) => (baseline[i]! / ms).toFixed(2)).join(' ');
export const perS = (chunks: number, ms: number[]): number => Math.round((chunks / median(ms)) * 1000);
export const round3 = (n: number): number => Math.round(n * 1000) / 1000;
