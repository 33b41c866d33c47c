/** Shared test helpers: fixture paths, hosts that close themselves, bounded waits, child processes. */
import { spawn } from 'node:child_process';
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

/** How a child process ended, and what it printed. */
export interface NodeRun {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/**
 * Run `node <args>` to its end, collecting its output. Bounded: past `timeoutMs` the
 * child is SIGKILLed and the promise rejects, naming the command and its stderr. A
 * child that dies by a signal of its own (SIGABRT) resolves, with `signal` set.
 */
export function runNode(args: string[], timeoutMs = 20_000, cwd?: string): Promise<NodeRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'], ...(cwd === undefined ? {} : { cwd }) });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`node ${args.join(' ').slice(0, 200)} timed out: ${stderr}`));
    }, timeoutMs);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    // 'close', not 'exit': output still in the pipes when the process exits arrives before it.
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** NDJSON output as objects, one per non-empty line. */
export function ndjson(text: string): Record<string, unknown>[] {
  return text
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);
}
