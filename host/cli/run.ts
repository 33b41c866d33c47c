/**
 * `sluice run <plugin> <action>`: run one action and print its chunks.
 *
 * Human mode prints each chunk's data on stdout and a progress bar on stderr (when
 * stderr is a terminal and the plugin reports progress). `--json` prints one NDJSON
 * line per chunk, `{"seq":N,"data":...}`, then `{"done":true,"chunks":N}` or
 * `{"error":{"code":"...","message":"..."}}`. Ctrl-C cancels the stream (the plugin's
 * `finally` runs) and exits 130.
 */
import { readFile } from 'node:fs/promises';
import { Option, type Command } from 'commander';
import cliProgress from 'cli-progress';
import { LIMIT_NAMES, type Limits } from '../../protocol/limits.js';
import { Sluice } from '../host.js';
import type { Durability, SluiceStream, StreamOptions } from '../types.js';
import { CLI_DEFAULTS, EXIT, jsonReplacer, parseJsonOption, parseNonNegativeInt, reportError, usageError } from './common.js';

interface RunOptions {
  params?: unknown;
  paramsFile?: string;
  sandbox?: 'worker' | 'isolate';
  plugins: string;
  json?: boolean;
  window?: number;
  priority?: 'high' | 'normal' | 'low';
  durable?: string | boolean;
  data: string;
  [limit: string]: unknown;
}

function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

export function register(program: Command): void {
  const cmd = program
    .command('run')
    .description('Run a plugin action and print its chunks')
    .argument('<plugin>', 'plugin name (from --plugins) or path to a plugin module or folder')
    .argument('<action>', 'action name')
    .option('--params <json>', 'action params as JSON', parseJsonOption)
    .option('--params-file <file>', 'read action params from a JSON file')
    .addOption(new Option('--sandbox <kind>', 'override the manifest sandbox').choices(['worker', 'isolate']))
    .addOption(new Option('--priority <p>', 'admission priority').choices(['high', 'normal', 'low']))
    .option('--window <chunks>', 'credit window in chunks', parseNonNegativeInt)
    .option('--plugins <dir>', 'plugins folder', CLI_DEFAULTS.plugins)
    .option('--data <dir>', 'data folder (durable streams)', CLI_DEFAULTS.data)
    .option('--durable [mode]', 'record the stream: log (default) or checkpoint')
    .option('--json', 'NDJSON output: one line per chunk, then a done or error line');
  for (const name of LIMIT_NAMES) {
    // Both --limit-cpuMs (the limit's own name) and --limit-cpu-ms work.
    cmd.option(`--limit-${kebab(name)} <n>`, `per-stream limit ${name}`, parseNonNegativeInt);
    cmd.addOption(new Option(`--limit-${name} <n>`).argParser(parseNonNegativeInt).hideHelp());
  }
  cmd.action(async (plugin: string, action: string, opts: RunOptions) => {
    process.exitCode = await run(plugin, action, opts);
  });
}

async function run(plugin: string, action: string, opts: RunOptions): Promise<number> {
  const json = opts.json === true;
  let host: Sluice | undefined;
  let interrupted = false;
  try {
    const params = opts.paramsFile !== undefined ? parseJsonOption(await readFile(opts.paramsFile, 'utf8')) : (opts.params ?? {});
    const limits: Partial<Limits> = {};
    for (const name of LIMIT_NAMES) {
      const v = opts[`limit${name[0]!.toUpperCase()}${name.slice(1)}`];
      if (typeof v === 'number') limits[name] = v;
    }
    const options: StreamOptions = { limits };
    if (opts.sandbox !== undefined) options.sandbox = opts.sandbox;
    if (opts.priority !== undefined) options.priority = opts.priority;
    if (opts.window !== undefined) {
      if (opts.window === 0) throw usageError('--window must be at least 1');
      options.window = { chunks: opts.window };
    }
    if (opts.durable !== undefined) {
      const mode = opts.durable === true ? 'log' : opts.durable;
      if (mode !== 'log' && mode !== 'checkpoint') throw usageError(`--durable takes log or checkpoint, got \`${String(mode)}\``);
      options.durability = mode as Durability;
    }

    host = await Sluice.open({ plugins: opts.plugins, ...(opts.durable !== undefined ? { dataDir: opts.data } : {}) });
    const stream = host.stream(plugin, action, params, options);
    const onSignal = (): void => {
      interrupted = true;
      void stream.cancel('interrupted');
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    if (options.durability !== undefined) process.stderr.write(`stream ${stream.id}\n`);

    try {
      await printStream(stream, json);
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    return EXIT.ok;
  } catch (err) {
    const status = reportError(err, json);
    return interrupted ? EXIT.interrupted : status;
  } finally {
    await host?.close();
  }
}

/**
 * Print a stream's chunks: data lines (human) or NDJSON with a final done line, a
 * progress bar on a terminal. Throws the stream's error after its chunks.
 */
export async function printStream(stream: SluiceStream, json: boolean): Promise<number> {
  const bar = !json && process.stderr.isTTY ? new cliProgress.SingleBar({ format: ' {bar} {percentage}% | {message}', hideCursor: true, clearOnComplete: true }, cliProgress.Presets.shades_classic) : undefined;
  let barStarted = false;
  stream.on('progress', (p) => {
    if (bar === undefined) return;
    if (!barStarted) {
      bar.start(1000, Math.round(p.fraction * 1000), { message: p.message ?? '' });
      barStarted = true;
    } else bar.update(Math.round(p.fraction * 1000), { message: p.message ?? '' });
  });
  stream.on('log', (l) => {
    if (!json) process.stderr.write(`[${l.level}] ${l.message}\n`);
  });
  let count = 0;
  try {
    for await (const chunk of stream) {
      count++;
      if (json) process.stdout.write(`${JSON.stringify({ seq: chunk.seq, data: chunk.data }, jsonReplacer)}\n`);
      else {
        // The bar redraws on stderr; clear it so data lines on stdout stay clean.
        if (barStarted) bar?.stop();
        barStarted = false;
        process.stdout.write(`${typeof chunk.data === 'string' ? chunk.data : JSON.stringify(chunk.data, jsonReplacer)}\n`);
      }
    }
  } finally {
    bar?.stop();
  }
  if (json) process.stdout.write(`${JSON.stringify({ done: true, chunks: count })}\n`);
  return count;
}
