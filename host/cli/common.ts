/**
 * What every CLI command shares: option parsers that fail with ERR_CLI_USAGE naming
 * the flag, the defaults of `npm start`, and how an error is printed (human or JSON)
 * with a non-zero exit status.
 */
import { stat } from 'node:fs/promises';
import { InvalidArgumentError } from 'commander';
import { SluiceError, isSluiceError, toWireError } from '../../protocol/errors.js';

/** The embedded defaults: a local data folder and the example plugins. */
export const CLI_DEFAULTS = Object.freeze({
  plugins: './plugins',
  data: './data',
});

/**
 * Exit statuses: 1 a stream or command failed, 2 bad usage, 130 interrupted (128 +
 * SIGINT), 141 stdout's reader went away (128 + SIGPIPE: what a shell reports for
 * `yes | head -1`; Node ignores SIGPIPE, so the CLI exits with it itself).
 */
export const EXIT = Object.freeze({ ok: 0, failed: 1, usage: 2, interrupted: 130, closedPipe: 141 });

/**
 * A command stopped because stdout failed (its reader closed the pipe: EPIPE).
 * `reportError` prints nothing for EPIPE: the reader left on purpose (`| head`).
 */
export class StdoutFailedError extends Error {
  constructor(cause: Error) {
    super(`Cannot write to stdout: ${cause.message}`, { cause });
  }
}

/**
 * Write to stdout, or throw StdoutFailedError once a write has failed. Node keeps the
 * failure in `stdout.errored` as soon as the write returns (pipes are written
 * synchronously), so a loop stops at the first lost line instead of writing on into
 * a destroyed stream. main() listens for stdout's 'error' event, so the failure does
 * not also crash the process.
 */
export function writeStdout(text: string): void {
  if (process.stdout.errored !== null) throw new StdoutFailedError(process.stdout.errored);
  process.stdout.write(text);
  if (process.stdout.errored !== null) throw new StdoutFailedError(process.stdout.errored);
}

/**
 * The plugins folder to open: one the user named must exist (the registry's
 * ERR_CONFIG_INVALID says so), but the default `./plugins` is only a convenience, so a
 * missing one means "no folder" and a plugin given by path still runs.
 */
export async function pluginsFolder(dir: string, userGiven: boolean): Promise<string | undefined> {
  if (userGiven) return dir;
  try {
    await stat(dir);
    return dir;
  } catch (err) {
    // Anything but "not there" (a permission problem) is left for the registry to report.
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? undefined : dir;
  }
}

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
  if (err instanceof StdoutFailedError) {
    const code = (err.cause as NodeJS.ErrnoException).code;
    if (code === 'EPIPE') return EXIT.closedPipe;
    process.stderr.write(`sluice: ${code ?? 'ERR_STDOUT'}: ${err.message}\n`);
    return EXIT.failed;
  }
  const wire = toWireError(err, false, 'ERR_INVALID_ARGUMENT');
  // A failed stdout cannot carry the JSON error line; stderr still can.
  if (json && process.stdout.errored === null) process.stdout.write(`${JSON.stringify({ error: { code: wire.code, message: wire.message } })}\n`);
  else process.stderr.write(`sluice: ${wire.code}: ${wire.message}\n`);
  if (isSluiceError(err) && err.code === 'ERR_CLI_USAGE') return EXIT.usage;
  return EXIT.failed;
}

/** A chunk's data as a human output line: a string as it is, anything else as JSON. */
export function chunkLine(data: unknown): string {
  return `${typeof data === 'string' ? data : JSON.stringify(data, jsonReplacer)}\n`;
}

/** JSON for a chunk's data: bytes become `{ "$bytes": base64 }` since JSON has no binary type. */
export function jsonReplacer(_key: string, value: unknown): unknown {
  if (value instanceof Uint8Array) return { $bytes: Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('base64') };
  return value;
}
