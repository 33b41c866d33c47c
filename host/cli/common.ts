/**
 * What every CLI command shares: option parsers that fail with ERR_CLI_USAGE naming
 * the flag, the defaults of `npm start`, and how an error is printed (human or JSON)
 * with a non-zero exit status.
 */
import { InvalidArgumentError } from 'commander';
import { SluiceError, isSluiceError, toWireError } from '../../protocol/errors.js';

/** The embedded defaults: a local data folder and the example plugins. */
export const CLI_DEFAULTS = Object.freeze({
  plugins: './plugins',
  data: './data',
});

/** Exit statuses: 1 a stream or command failed, 2 bad usage, 130 interrupted (128 + SIGINT). */
export const EXIT = Object.freeze({ ok: 0, failed: 1, usage: 2, interrupted: 130 });

export function parseNonNegativeInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) throw new InvalidArgumentError(`expected a non-negative integer, got \`${value}\``);
  return n;
}

export function parseJsonOption(value: string): unknown {
  try {
    return JSON.parse(value) as unknown;
  } catch (err) {
    throw new InvalidArgumentError(`expected JSON, got \`${value.slice(0, 80)}\` (${(err as Error).message})`);
  }
}

export function usageError(message: string): SluiceError {
  return new SluiceError('ERR_CLI_USAGE', message);
}

/** Print an error the way the command's mode wants it and return the exit status. */
export function reportError(err: unknown, json: boolean): number {
  const wire = toWireError(err, false, 'ERR_INVALID_ARGUMENT');
  if (json) process.stdout.write(`${JSON.stringify({ error: { code: wire.code, message: wire.message } })}\n`);
  else process.stderr.write(`sluice: ${wire.code}: ${wire.message}\n`);
  if (isSluiceError(err) && err.code === 'ERR_CLI_USAGE') return EXIT.usage;
  return EXIT.failed;
}

/** JSON for a chunk's data: bytes become `{ "$bytes": base64 }` since JSON has no binary type. */
export function jsonReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  return value;
}
