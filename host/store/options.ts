/**
 * Store options: defaults in one frozen object, validated at the public edge with
 * messages that name the option and the bad value.
 */
import { Buffer } from 'node:buffer';
import { assertInteger, assertString, fail, isObject, show } from '../../protocol/assert.js';
import { SluiceError } from '../../protocol/errors.js';

/** Key length of AES-256. */
export const KEY_BYTES = 32;

/** The environment variable read when `encryptionKey` is not given. */
export const STORE_KEY_ENV = 'SLUICE_STORE_KEY';

export interface StoreOptions {
  /** Data folder of the LMDB environment; created with mode 0700, its files 0600. */
  path: string;
  /**
   * 32-byte AES-256-GCM key for chunk data, checkpoint state and stream records:
   * a Buffer/Uint8Array, or a string of 64 hex digits or base64/base64url.
   * Wins over the `SLUICE_STORE_KEY` environment variable. `null` means "no key, and
   * ignore the environment variable".
   */
  encryptionKey?: string | Uint8Array | null;
  /** Where `SLUICE_STORE_KEY` is read from (tests pass their own). Default `process.env`. */
  env?: Readonly<Record<string, string | undefined>>;
  /** Chunks a reader fetches from the log per page (its buffer bound). */
  readPageSize?: number;
  /** Log entries or streams removed per retention/cleanup transaction. */
  maintenanceBatchSize?: number;
  /** Run retention (and cleanup, when `finishedRetentionMs` is set) every N ms; 0 = never. */
  maintenanceIntervalMs?: number;
  /** With the maintenance timer: remove finished streams last updated more than N ms ago. */
  finishedRetentionMs?: number;
  /** Called with an error thrown by a timer-driven maintenance run. Default: `process.emitWarning`. */
  onMaintenanceError?: (err: unknown) => void;
  /**
   * Hold the folder's host lock (lock.ts) while open: what a host running streams needs.
   * Default false, for inspecting a folder a host may be using.
   */
  exclusive?: boolean;
}

export interface ResolvedStoreOptions {
  readonly path: string;
  readonly key: Buffer | undefined;
  readonly readPageSize: number;
  readonly maintenanceBatchSize: number;
  readonly maintenanceIntervalMs: number;
  readonly finishedRetentionMs: number | undefined;
  readonly onMaintenanceError: (err: unknown) => void;
  readonly exclusive: boolean;
}

export const STORE_DEFAULTS = Object.freeze({
  readPageSize: 256,
  maintenanceBatchSize: 1000,
  maintenanceIntervalMs: 0,
  finishedRetentionMs: undefined as number | undefined,
  onMaintenanceError: (err: unknown): void => {
    process.emitWarning(err instanceof Error ? err : new Error(String(err)), { code: 'SLUICE_STORE_MAINTENANCE' });
  },
});

const MAX_PAGE = 100_000;
const MAX_INTERVAL_MS = 2 ** 31 - 1;

const HEX_KEY = /^[0-9a-fA-F]{64}$/;
const BASE64_KEY = /^[A-Za-z0-9+/_-]{43}=?$/;

/** Decode a key without ever echoing it into an error message. */
export function parseKey(value: unknown, source: string): Buffer {
  if (value instanceof Uint8Array) {
    if (value.byteLength !== KEY_BYTES) {
      throw new SluiceError('ERR_STORE_KEY', `Expected \`${source}\` to be ${KEY_BYTES} bytes, got ${value.byteLength} bytes`);
    }
    return Buffer.from(value);
  }
  if (typeof value === 'string') {
    const text = value.trim();
    if (HEX_KEY.test(text)) return Buffer.from(text, 'hex');
    if (BASE64_KEY.test(text)) {
      const key = Buffer.from(text, text.includes('-') || text.includes('_') ? 'base64url' : 'base64');
      if (key.byteLength === KEY_BYTES) return key;
    }
    throw new SluiceError(
      'ERR_STORE_KEY',
      `Expected \`${source}\` to be ${KEY_BYTES} bytes as 64 hex digits or base64, got a string of ${value.length} characters`,
    );
  }
  throw new SluiceError('ERR_STORE_KEY', `Expected \`${source}\` to be a string or a Uint8Array, got ${show(value)}`);
}

function optionalInteger(value: unknown, field: string, fallback: number, min: number, max: number): number {
  if (value === undefined) return fallback;
  assertInteger(value, field, 'ERR_INVALID_ARGUMENT', min, max);
  return value;
}

export function resolveStoreOptions(options: unknown): ResolvedStoreOptions {
  if (!isObject(options)) fail('ERR_INVALID_ARGUMENT', 'options', 'an object', options);
  assertString(options.path, 'path', 'ERR_INVALID_ARGUMENT', 4096);
  const env = options.env ?? process.env;
  if (!isObject(env)) fail('ERR_INVALID_ARGUMENT', 'env', 'an object', env);

  let key: Buffer | undefined;
  if (options.encryptionKey !== undefined && options.encryptionKey !== null) {
    key = parseKey(options.encryptionKey, 'encryptionKey');
  } else if (options.encryptionKey === undefined) {
    const fromEnv = env[STORE_KEY_ENV];
    if (typeof fromEnv === 'string' && fromEnv !== '') key = parseKey(fromEnv, STORE_KEY_ENV);
  }

  const finished = options.finishedRetentionMs;
  if (finished !== undefined) assertInteger(finished, 'finishedRetentionMs', 'ERR_INVALID_ARGUMENT', 0);
  const onError = options.onMaintenanceError ?? STORE_DEFAULTS.onMaintenanceError;
  if (typeof onError !== 'function') fail('ERR_INVALID_ARGUMENT', 'onMaintenanceError', 'a function', onError);
  if (options.exclusive !== undefined && typeof options.exclusive !== 'boolean') fail('ERR_INVALID_ARGUMENT', 'exclusive', 'a boolean', options.exclusive);

  return Object.freeze({
    path: options.path,
    key,
    readPageSize: optionalInteger(options.readPageSize, 'readPageSize', STORE_DEFAULTS.readPageSize, 1, MAX_PAGE),
    maintenanceBatchSize: optionalInteger(options.maintenanceBatchSize, 'maintenanceBatchSize', STORE_DEFAULTS.maintenanceBatchSize, 1, MAX_PAGE),
    maintenanceIntervalMs: optionalInteger(options.maintenanceIntervalMs, 'maintenanceIntervalMs', STORE_DEFAULTS.maintenanceIntervalMs, 0, MAX_INTERVAL_MS),
    finishedRetentionMs: finished as number | undefined,
    onMaintenanceError: onError as (err: unknown) => void,
    exclusive: options.exclusive === true,
  });
}
