/**
 * The crash soak (`npm run soak`): the SIGKILL test of test/durable.test.ts, longer.
 * A child process (test/fixtures/durable-child.ts) runs a host with one durable `log`
 * stream and is SIGKILLed at a random moment, again and again, until the stream
 * finishes. After every kill, before the next start, the script checks what the
 * product promises of the store the dead host left:
 * - the log holds exactly seq 0..tail-1, each once, with its own content;
 * - the next run's `ctx.resume` is the last checkpoint stored before the kill, and that
 *   checkpoint is never ahead of the log.
 * At the end a reader sees 0..N-1 exactly once and the stream's end.
 *
 *   npm run soak -- [--kills 200] [--chunks 100000] [--kill-ms 50-1500] [--minutes 30] [--data DIR]
 *
 * It reports how many kills landed while the log was growing (its tail moved since the
 * kill before and the stream was not finished): kills during start-up test less.
 *
 * Exit status 0 when every check held, 1 on the first violation (the data folder is
 * kept and named), 2 on a usage error.
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError } from 'commander';
import { Sluice } from '../host/index.js';
import { Store } from '../host/store/store.js';
import { CONFORMANCE } from './helpers.js';

const CHILD = fileURLToPath(new URL('./fixtures/durable-child.js', import.meta.url));
const STREAM = 'crash';

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function range(value: string): [number, number] {
  const m = /^(\d+)-(\d+)$/.exec(value);
  if (m === null || Number(m[1]) >= Number(m[2])) throw new InvalidArgumentError('expected lo-hi in ms, lo < hi (e.g. 50-1500)');
  return [Number(m[1]), Number(m[2])];
}

interface Options {
  kills: number;
  chunks: number;
  killMs: [number, number];
  minutes: number;
  data?: string;
}

class Violation extends Error {}

/** The log as the dead host left it: contiguous from 0, each chunk its own content. Returns its length. */
async function checkLog(dir: string): Promise<{ tail: number; checkpoint: { seq: number; state: unknown } | undefined }> {
  const store = await Store.open({ path: dir });
  try {
    // Killed before the stream was recorded: nothing is promised yet.
    if (store.getStream(STREAM) === undefined) return { tail: 0, checkpoint: undefined };
    const cp = store.getCheckpoint(STREAM);
    // A reader follows a live log; this one stops at the tail the dead host left.
    const tail = store.logTail(STREAM);
    let next = 0;
    if (tail > 0) {
      for await (const e of store.read(STREAM, { fromSeq: 0, signal: AbortSignal.timeout(60_000) })) {
        if (e.type === 'end') break;
        if (e.type !== 'chunk') throw new Violation(`unexpected ${e.type} event at seq ${next}`);
        if (e.seq !== next) throw new Violation(`seq ${e.seq} where ${next} was due: ${e.seq < next ? 'a duplicate' : 'a gap'}`);
        const i = (e.data as { i?: unknown } | null)?.i;
        if (i !== next) throw new Violation(`chunk ${next} holds the content of chunk ${String(i)}`);
        if (++next === tail) break;
      }
    }
    if (next !== tail) throw new Violation(`the log's tail is ${tail} but a reader got ${next} chunks`);
    const checkpoint = cp === undefined ? undefined : { seq: cp.seq, state: cp.state };
    if (checkpoint !== undefined && checkpoint.seq > next) throw new Violation(`checkpoint at seq ${checkpoint.seq} is ahead of the log's tail ${next}`);
    return { tail: next, checkpoint };
  } finally {
    await store.close();
  }
}

async function soak(opts: Options): Promise<void> {
  const root = opts.data ?? (await mkdtemp(join(tmpdir(), 'sluice-soak-')));
  const dir = join(root, 'data');
  const deadline = Date.now() + opts.minutes * 60_000;
  let kills = 0;
  let runs = 0;
  let expected: unknown = null;
  let lastTail = 0;
  let midStream = 0;
  let finished = false;
  const started = Date.now();
  try {
    while (!finished) {
      if (Date.now() > deadline) throw new Violation(`time budget of ${opts.minutes} min spent after ${kills} kills, stream not finished`);
      runs++;
      const proc = spawn(process.execPath, [CHILD, dir, CONFORMANCE, String(opts.chunks)], { stdio: ['ignore', 'pipe', 'inherit'] });
      const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      const [lo, hi] = opts.killMs;
      const killAfter = kills < opts.kills ? lo + Math.floor(Math.random() * (hi - lo)) : Infinity;
      let killTimer: NodeJS.Timeout | undefined;
      for await (const line of createInterface({ input: proc.stdout! })) {
        const msg = JSON.parse(line) as { ready?: boolean; log?: string; done?: string; error?: string };
        if (msg.ready === true && killAfter !== Infinity) killTimer = setTimeout(() => proc.kill('SIGKILL'), killAfter);
        else if (msg.log?.startsWith('resume ') === true) {
          const got = msg.log.slice('resume '.length);
          if (got !== JSON.stringify(expected)) throw new Violation(`run ${runs}: ctx.resume was ${got}, the last checkpoint stored was ${JSON.stringify(expected)}`);
        } else if (msg.done !== undefined) {
          if (msg.done !== 'done') throw new Violation(`run ${runs}: the stream ended ${msg.done} (${msg.error ?? ''})`);
          finished = true;
        }
      }
      clearTimeout(killTimer);
      await exited;
      const killed = proc.signalCode === 'SIGKILL';
      if (killed) kills++;
      else if (proc.exitCode !== 0) throw new Violation(`run ${runs}: the host exited with status ${proc.exitCode}`);
      const { tail, checkpoint } = await checkLog(dir);
      if (killed && tail > lastTail && tail < opts.chunks) midStream++;
      lastTail = tail;
      expected = checkpoint ?? null;
      if (runs % 10 === 0 || finished) process.stderr.write(`soak: ${kills} kills (${midStream} while the log grew), ${runs} runs, log tail ${tail}/${opts.chunks}, ${Math.round((Date.now() - started) / 1000)} s\n`);
    }
    const host = await Sluice.open({ dataDir: dir, isolates: false, logger: false });
    try {
      let n = 0;
      let ended = false;
      for await (const e of host.read(STREAM, { signal: AbortSignal.timeout(60_000) })) {
        if (e.type === 'end') {
          ended = true;
          break;
        }
        if (e.type !== 'chunk' || e.seq !== n || (e.data as { i: number }).i !== n) throw new Violation(`final read: unexpected event at ${n}: ${JSON.stringify(e)}`);
        n++;
      }
      if (!ended || n !== opts.chunks) throw new Violation(`final read: ${n} chunks, end ${ended}; expected ${opts.chunks} and the end`);
    } finally {
      await host.close();
    }
    process.stdout.write(`soak: ok, ${kills} SIGKILLs (${midStream} while the log grew) over ${runs} runs; a reader saw 0..${opts.chunks - 1} exactly once\n`);
    if (opts.data === undefined) await rm(root, { recursive: true, force: true });
  } catch (err) {
    process.stderr.write(`soak: FAILED after ${kills} kills: ${(err as Error).message}\nsoak: data kept in ${dir}\n`);
    process.exitCode = 1;
  }
}

const program = new Command('soak')
  .description('SIGKILL a host with a durable log stream at random moments and check the store after every kill')
  .option('--kills <n>', 'at most n SIGKILLs, then the stream runs to its end', positiveInt, 200)
  .option('--chunks <n>', 'chunks in the stream', positiveInt, 100_000)
  .option('--kill-ms <lo-hi>', 'each kill comes lo..hi ms after the host says it is ready', range, [50, 1500] as [number, number])
  .option('--minutes <n>', 'time budget', positiveInt, 30)
  .option('--data <dir>', 'work in this folder (kept) instead of a temporary one')
  .exitOverride((err) => process.exit(err.exitCode === 0 ? 0 : 2))
  .action(soak);
await program.parseAsync();
