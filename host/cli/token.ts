/**
 * `sluice token create`: sign a bearer token with the server's secret (from
 * `--config`, `SLUICE_SECRET`, or the data folder's `server-secret`, created on first
 * use) and print it on stdout.
 */
import type { Command } from 'commander';
import { createToken, resolveSecret } from '../server/auth.js';
import { CLI_DEFAULTS, EXIT, reportError, usageError, writeStdout } from './common.js';
import { readServerConfig } from './serve.js';

interface TokenOptions {
  plugins: string[];
  streams: string[];
  ttl: string;
  subject?: string;
  data?: string;
  config?: string;
}

const TTL_PATTERN = /^\d+\s*(s|sec|m|min|h|hr|d|day|w|week)s?$/i;

function csv(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
}

export function register(program: Command): void {
  const token = program.command('token').description('Bearer tokens for the server');
  token
    .command('create')
    .description('Print a signed token (JWT HS256) with the given scopes')
    .option('--plugins <list>', "what it may start: '*', 'name' or 'name:action', comma-separated", csv, [])
    .option('--streams <list>', "what it may read: '*', 'own' or stream ids, comma-separated", csv, ['own'])
    .option('--ttl <span>', 'lifetime: 30m, 1h, 7d, or seconds', '1h')
    .option('--subject <name>', 'who the token is for (the `sub` claim)')
    .option('--data <dir>', `data folder holding the secret (default ${CLI_DEFAULTS.data})`)
    .option('--config <file>', 'server config JSON (for its `secret`)')
    .action(async (opts: TokenOptions) => {
      process.exitCode = await create(opts);
    });
}

async function create(opts: TokenOptions): Promise<number> {
  try {
    const ttl: string | number = /^\d+$/.test(opts.ttl) ? Number(opts.ttl) : opts.ttl;
    if (typeof ttl === 'string' && !TTL_PATTERN.test(ttl)) throw usageError(`--ttl takes a span such as 30m, 1h or 7d, or seconds; got \`${opts.ttl}\``);
    const config = opts.config !== undefined ? await readServerConfig(opts.config) : {};
    const secret = await resolveSecret({ secret: config.secret, dataDir: opts.data ?? config.dataDir ?? CLI_DEFAULTS.data });
    const spec: Parameters<typeof createToken>[1] = { plugins: opts.plugins, streams: opts.streams, ttl };
    if (opts.subject !== undefined) spec.subject = opts.subject;
    writeStdout(`${await createToken(secret, spec)}\n`);
    return EXIT.ok;
  } catch (err) {
    return reportError(err, false);
  }
}
