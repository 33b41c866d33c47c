/**
 * Durable streams from the command line: `sluice streams ls|show|read|rm` work on the
 * store alone (no sandbox starts), `sluice resume <id>` restarts one and prints what
 * it produces from there.
 */
import { Option, type Command } from 'commander';
import { resolve } from 'node:path';
import { SluiceError } from '../../protocol/errors.js';
import { Store } from '../store/store.js';
import { Sluice } from '../host.js';
import type { StreamStatus } from '../types.js';
import { CLI_DEFAULTS, EXIT, chunkLine, jsonReplacer, parseNonNegativeInt, reportError, writeStdout } from './common.js';
import { printStream } from './run.js';

interface StoreOpts {
  data: string;
  json?: boolean;
}

/**
 * Run `fn` on the data folder's store. Reading takes no lock, so it works beside a
 * running host; `exclusive` (changing the store) takes the host lock, so it cannot pull
 * a stream out from under a host that is appending to it (ERR_STORE_LOCKED instead).
 */
async function withStore(opts: StoreOpts, fn: (store: Store) => Promise<number>, exclusive = false): Promise<void> {
  let store: Store | undefined;
  try {
    store = await Store.open({ path: resolve(opts.data), exclusive });
    process.exitCode = await fn(store);
  } catch (err) {
    process.exitCode = reportError(err, opts.json === true);
  } finally {
    await store?.close();
  }
}

const out = (value: unknown): void => writeStdout(`${JSON.stringify(value, jsonReplacer)}\n`);

export function register(program: Command): void {
  const streams = program.command('streams').description('Durable streams in the data folder');
  const data = (): Option => new Option('--data <dir>', 'data folder').default(CLI_DEFAULTS.data);

  streams
    .command('ls')
    .description('List durable streams')
    .addOption(data())
    .addOption(new Option('--status <status>', 'only this status').choices(['queued', 'running', 'done', 'failed', 'cancelled']))
    .option('--json', 'one JSON line per stream')
    .action((opts: StoreOpts & { status?: StreamStatus }) =>
      withStore(opts, async (store) => {
        for (const r of store.listStreams(opts.status === undefined ? {} : { status: opts.status })) {
          const row = { id: r.id, plugin: r.plugin, action: r.action, status: r.status, durability: r.durability, chunks: store.logTail(r.id), updatedAt: new Date(r.updatedAt).toISOString() };
          if (opts.json === true) out(row);
          else writeStdout(`${row.id}  ${row.status.padEnd(9)} ${row.durability.padEnd(10)} ${String(row.chunks).padStart(8)} chunks  ${row.plugin} ${row.action}  ${row.updatedAt}\n`);
        }
        return EXIT.ok;
      }),
    );

  streams
    .command('show')
    .description('One durable stream: record, checkpoint and log extent')
    .argument('<id>')
    .addOption(data())
    .option('--json', 'JSON output')
    .action((id: string, opts: StoreOpts) =>
      withStore(opts, async (store) => {
        const r = store.getStream(id);
        if (r === undefined) return notFound(id, opts.json === true);
        const cp = store.getCheckpoint(id);
        const info = { ...r, log: { head: store.logHead(id), tail: store.logTail(id) }, checkpoint: cp === undefined ? null : { seq: cp.seq, time: new Date(cp.time).toISOString(), state: cp.state } };
        writeStdout(opts.json === true ? `${JSON.stringify(info, jsonReplacer)}\n` : `${JSON.stringify(info, jsonReplacer, 2)}\n`);
        return EXIT.ok;
      }),
    );

  streams
    .command('read')
    .description('Print the logged chunks of a stream from a position (up to its current tail)')
    .argument('<id>')
    .option('--from <seq>', 'first seq to print', parseNonNegativeInt, 0)
    .addOption(data())
    .option('--json', 'NDJSON: chunks, gap events, then a done line')
    .action((id: string, opts: StoreOpts & { from: number }) =>
      withStore(opts, async (store) => {
        if (store.getStream(id) === undefined) return notFound(id, opts.json === true);
        // Another process may be appending; a reader in this one stops at the tail it found.
        const tail = store.logTail(id);
        const ac = new AbortController();
        let count = 0;
        if (opts.from < tail) {
          for await (const e of store.read(id, { fromSeq: opts.from, signal: ac.signal })) {
            if (e.type === 'chunk') {
              count++;
              if (opts.json === true) out({ seq: e.seq, data: e.data });
              else writeStdout(chunkLine(e.data));
              if (e.seq >= tail - 1) break;
            } else if (e.type === 'gap') {
              if (opts.json === true) out(e);
              else process.stderr.write(`sluice: chunks ${e.fromSeq}..${e.toSeq - 1} were removed by retention\n`);
            } else break;
          }
        }
        ac.abort();
        if (opts.json === true) out({ done: true, chunks: count });
        return EXIT.ok;
      }),
    );

  streams
    .command('rm')
    .description('Remove a durable stream: its record, log and checkpoint (not while a host runs on the folder)')
    .argument('<id>')
    .addOption(data())
    .option('--json', 'JSON output')
    .action((id: string, opts: StoreOpts) =>
      withStore(
        opts,
        async (store) => {
          if (!(await store.removeStream(id))) return notFound(id, opts.json === true);
          if (opts.json === true) out({ removed: id });
          return EXIT.ok;
        },
        true,
      ),
    );

  program
    .command('resume')
    .description('Resume an unfinished durable stream from its last checkpoint and print what it produces')
    .argument('<id>')
    .option('--plugins <dir>', 'plugins folder', CLI_DEFAULTS.plugins)
    .addOption(data())
    .option('--json', 'NDJSON output')
    .action(async (id: string, opts: StoreOpts & { plugins: string }) => {
      let host: Sluice | undefined;
      try {
        host = await Sluice.open({ plugins: opts.plugins, dataDir: opts.data });
        const stream = host.resume(id);
        const stop = (): void => void stream.cancel('interrupted');
        process.once('SIGINT', stop);
        await printStream(stream, opts.json === true).finally(() => process.off('SIGINT', stop));
        process.exitCode = EXIT.ok;
      } catch (err) {
        process.exitCode = reportError(err, opts.json === true);
      } finally {
        await host?.close();
      }
    });
}

function notFound(id: string, json: boolean): number {
  return reportError(new SluiceError('ERR_STREAM_NOT_FOUND', `No durable stream \`${id}\``), json);
}
