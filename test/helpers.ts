/** Shared test helpers: fixture paths, hosts that close themselves, bounded waits. */
import { fileURLToPath } from 'node:url';
import type { TestContext } from 'node:test';
import { Sluice, type SluiceOptions } from '../host/index.js';
import type { SluiceStream, Chunk } from '../host/types.js';

/** Source fixtures live in test/fixtures (not compiled); tests run from dist/test. */
export function fixture(path: string): string {
  return fileURLToPath(new URL(`../../test/fixtures/${path}`, import.meta.url));
}

export const CONFORMANCE = fixture('plugins/conformance.ts');

export async function openHost(t: TestContext, options: SluiceOptions = {}): Promise<Sluice> {
  const host = await Sluice.open({ logger: false, isolates: false, ...options });
  t.after(() => host.destroy());
  return host;
}

/** Read at most `max` chunks, with a deadline so a broken stream fails the test instead of hanging it. */
export async function collect<T>(stream: SluiceStream<T> | AsyncIterable<Chunk<T>>, max = 1_000_000, deadlineMs = 30_000): Promise<Chunk<T>[]> {
  const out: Chunk<T>[] = [];
  const deadline = Date.now() + deadlineMs;
  for await (const c of stream) {
    out.push(c);
    if (out.length >= max) break;
    if (Date.now() > deadline) throw new Error(`collect: deadline of ${deadlineMs} ms passed`);
  }
  return out;
}

/** The error a stream ends with (or undefined), plus the chunks before it. */
export async function outcome<T>(stream: SluiceStream<T>): Promise<{ chunks: Chunk<T>[]; error: (Error & { code?: string }) | undefined }> {
  const chunks: Chunk<T>[] = [];
  try {
    for await (const c of stream) chunks.push(c);
    return { chunks, error: undefined };
  } catch (error) {
    return { chunks, error: error as Error & { code?: string } };
  }
}

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
