/**
 * `sluice run <plugin> <action>`: run one action and print its chunks.
 *
 * Human mode prints each chunk's data on stdout and a progress bar on stderr (when
 * stderr is a terminal and the plugin reports progress). `--json` prints one NDJSON
 * line per chunk, `{"seq":N,"data":...}`, then `{"done":true,"chunks":N}` or
 * `{"error":{"code":"...","message":"..."}}`. Ctrl-C cancels the stream (the plugin's
 * `finally` runs) and exits 130. A reader closing stdout (`| head -1`) cancels it too
 * and exits 141, printing nothing.
 */
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError, Option, type Command } from 'commander';
import cliProgress from 'cli-progress';
import { LIMIT_NAMES, minLimit, type LimitName, type Limits } from '../../protocol/limits.js';
import { Sluice } from '../host.js';
import type { Durability, SluiceStream, StreamOptions } from '../types.js';
import { CLI_DEFAULTS, EXIT, chunkLine, jsonReplacer, parseJsonOption, parseNonNegativeInt, pluginsFolder, reportError, usageError, writeStdout } from './common.js';

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

/**
 * A limit flag's value, checked here rather than by the host so that the usage error
 * names the flag the user typed (commander prefixes it), not `options.limits.<name>`.
 */
function limitParser(name: LimitName): (value: string) => number {
  return (value) => {
    const n = parseNonNegativeInt(value);
    if (n < minLimit(name)) throw new InvalidArgumentError(`expected at least ${minLimit(name)}, got \`${value}\``);
    return n;
  };
}

export function register(program: Command): void {
  const cmd = program
    .command('run')
    .description('Run a plugin action and print its chunks')
    .argument('<plugin>', 'plugin name (from --plugins) or path to a plugin module or folder')
    .argument('<action>', 'action name')
    .option('--params <json>', 'action params as JSON', parseJsonOption)
    .addOption(new Option('--params-file <file>', 'read action params from a JSON file').conflicts('params'))
    .addOption(new Option('--sandbox <kind>', 'override the manifest sandbox').choices(['worker', 'isolate']))
    .addOption(new Option('--priority <p>', 'admission priority').choices(['high', 'normal', 'low']))
    .option('--window <chunks>', 'credit window in chunks', parseNonNegativeInt)
    .option('--plugins <dir>', 'plugins folder (the default is skipped when missing)', CLI_DEFAULTS.plugins)
    .option('--data <dir>', 'data folder (durable streams)', CLI_DEFAULTS.data)
    .option('--durable [mode]', 'record the stream: log (default) or checkpoint')
    .option('--json', 'NDJSON output: one line per chunk, then a done or error line');
  for (const name of LIMIT_NAMES) {
    // Both --limit-cpuMs (the limit's own name) and --limit-cpu-ms work.
    cmd.option(`--limit-${kebab(name)} <n>`, `per-stream limit ${name}`, limitParser(name));
    cmd.addOption(new Option(`--limit-${name} <n>`).argParser(limitParser(name)).hideHelp());
  }
  cmd.action(async (plugin: string, action: string, opts: RunOptions, command: Command) => {
    process.exitCode = await run(plugin, action, opts, command.getOptionValueSource('plugins') !== 'default');
  });
}

async function readParamsFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw usageError(`--params-file: cannot read ${file}: ${(err as Error).message}`);
  }
  try {
    return parseJsonOption(text);
  } catch (err) {
    throw usageError(`--params-file: ${file}: ${(err as Error).message}`);
  }
}

async function run(plugin: string, action: string, opts: RunOptions, pluginsGiven: boolean): Promise<number> {
  const json = opts.json === true;
  let host: Sluice | undefined;
  let interrupted = false;
  try {
    const params = opts.paramsFile !== undefined ? await readParamsFile(opts.paramsFile) : (opts.params ?? {});
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

    const plugins = await pluginsFolder(opts.plugins, pluginsGiven);
    host = await Sluice.open({ ...(plugins !== undefined ? { plugins } : {}), ...(opts.durable !== undefined ? { dataDir: opts.data } : {}) });
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
      // A failed write throws out of the loop, which cancels the stream.
      if (json) writeStdout(`${JSON.stringify({ seq: chunk.seq, data: chunk.data }, jsonReplacer)}\n`);
      else {
        // The bar redraws on stderr; clear it so data lines on stdout stay clean.
        if (barStarted) bar?.stop();
        barStarted = false;
        writeStdout(chunkLine(chunk.data));
      }
    }
  } finally {
    bar?.stop();
  }
  if (json) writeStdout(`${JSON.stringify({ done: true, chunks: count })}\n`);
  return count;
}
