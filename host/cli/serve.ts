/**
 * `sluice serve`: the host behind the WebSocket / HTTP server. Flags win over the
 * `--config` JSON file, which wins over the defaults. SIGINT / SIGTERM shut down
 * gracefully: stop accepting, close sockets with 1001 (going away), then
 * `host.close()`, which checkpoints streams. A second signal forces the exit.
 */
import { readFile } from 'node:fs/promises';
import { InvalidArgumentError, type Command } from 'commander';
import { SluiceError } from '../../protocol/errors.js';
import { Sluice, type SluiceOptions } from '../host.js';
import { parseServerConfig, SERVER_DEFAULTS, type ServerConfig } from '../server/config.js';
import { asServerHost } from '../server/adapter.js';
import { startServer } from '../server/server.js';
import { CLI_DEFAULTS, EXIT, reportError } from './common.js';

interface ServeOptions {
  port?: number;
  host?: string;
  plugins?: string;
  data?: string;
  config?: string;
}

function parsePort(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n > 65535) throw new InvalidArgumentError(`expected a port number (0-65535), got \`${value}\``);
  return n;
}

/** Read and validate a `--config` file (ERR_CONFIG_INVALID naming the file and the option). */
export async function readServerConfig(file: string): Promise<ServerConfig> {
  let data: unknown;
  try {
    data = JSON.parse(await readFile(file, 'utf8'));
  } catch (err) {
    throw new SluiceError('ERR_CONFIG_INVALID', `Cannot read config file ${file}: ${(err as Error).message}`, { cause: err });
  }
  return parseServerConfig(data, 'ERR_CONFIG_INVALID', file);
}

export function register(program: Command): void {
  program
    .command('serve')
    .description('Serve plugins over WebSocket (sluice.v1) and HTTP, with a dashboard at /')
    .option('--port <port>', `port to listen on (default ${SERVER_DEFAULTS.port}; 0 = any free port)`, parsePort)
    .option('--host <address>', `address to bind (default ${SERVER_DEFAULTS.host})`)
    .option('--plugins <dir>', `plugins folder (default ${CLI_DEFAULTS.plugins})`)
    .option('--data <dir>', `data folder: token secret, durable streams (default ${CLI_DEFAULTS.data})`)
    .option('--config <file>', 'server config JSON (limits, origins, secret, ...)')
    .action(async (opts: ServeOptions) => {
      process.exitCode = await serve(opts);
    });
}

async function serve(opts: ServeOptions): Promise<number> {
  let host: Sluice | undefined;
  try {
    const config = opts.config !== undefined ? await readServerConfig(opts.config) : {};
    const plugins = opts.plugins ?? config.pluginsDir ?? CLI_DEFAULTS.plugins;
    const dataDir = opts.data ?? config.dataDir ?? CLI_DEFAULTS.data;
    // The durable store lives in the data folder; unfinished `log` streams resume at open.
    const hostOptions: SluiceOptions & { dataDir?: string; resume?: 'auto' | 'manual' } = { plugins, dataDir, resume: 'auto' };
    host = await Sluice.open(hostOptions);
    const server = await startServer(asServerHost(host), {
      ...config,
      host: opts.host ?? config.host ?? SERVER_DEFAULTS.host,
      port: opts.port ?? config.port ?? SERVER_DEFAULTS.port,
      dataDir,
      onWaitingForPort: ({ host, port }) => process.stderr.write(`sluice: ${host}:${port} is still held by the last run's closed connections (TCP TIME_WAIT); waiting up to a minute\n`),
    });
    process.stderr.write(`sluice: serving ${server.url} (WebSocket ${server.wsUrl}, dashboard ${server.url}/)\n`);
    const running = host;
    await new Promise<void>((resolve) => {
      let stopping = false;
      const onSignal = (signal: NodeJS.Signals): void => {
        if (stopping) {
          process.stderr.write(`sluice: ${signal} again, forcing exit\n`);
          void running.destroy().finally(() => process.exit(EXIT.interrupted));
          return;
        }
        stopping = true;
        process.stderr.write(`sluice: ${signal}, shutting down\n`);
        void (async () => {
          await server.close();
          await running.close();
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          resolve();
        })();
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
    });
    host = undefined;
    return EXIT.ok;
  } catch (err) {
    return reportError(err, false);
  } finally {
    await host?.close();
  }
}
