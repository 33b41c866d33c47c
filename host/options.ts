/**
 * The host's options: their types, defaults in one frozen object, and the validation
 * that runs before `Sluice.open` acquires anything (so a bad option leaks no thread,
 * process or file handle). Messages name the option and the bad value.
 */
import { resolve } from 'node:path';
import { pino, type Logger } from 'pino';
import { assertInteger, assertNumber, assertOneOf, assertString, fail, isObject } from '../protocol/assert.js';
import { DEFAULT_WINDOW, MAX_WINDOW_BYTES, MAX_WINDOW_CHUNKS, type Window } from '../protocol/credit.js';
import { DEFAULT_LIMITS, DEFAULT_POLICY, parsePartialLimits, resolveLimits, type Limits } from '../protocol/limits.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import type { WorkerPoolOptions } from './sandbox/worker-pool.js';
import type { RetentionPolicy } from './store/store.js';

export interface SluiceOptions {
  /** Plugin folders, discovered at open. */
  plugins?: string | string[];
  /** Where bundles (and, with durable streams, the store) live. Default: a folder under the OS temp dir. */
  cacheDir?: string;
  /** Worker sandbox threads; `maxThreads` is also how many worker streams run at once. */
  workers?: Partial<WorkerPoolOptions>;
  /** Isolate sandbox processes, or false to run without isolates. */
  isolates?: { processes?: number; maxStreams?: number } | false;
  /** Sum of running streams' memory limits allowed per sandbox kind (0 = no budget). */
  memoryBudgetMb?: Partial<Record<SandboxKind, number>>;
  /** Streams that may wait for admission before ERR_QUEUE_FULL. */
  maxQueued?: number;
  /** Default credit window per stream. */
  window?: Partial<Window>;
  /** Default per-stream limits, below the policy. */
  limits?: Partial<Limits>;
  /** The most a manifest or call may ask for; 0 for a limit means unlimited is allowed. */
  policy?: Partial<Limits>;
  /** Time a cancelled plugin gets to run its `finally` before its sandbox is stopped hard. */
  cancelGraceMs?: number;
  /** How long `close()` waits for streams to stop before it destroys the sandboxes. */
  closeTimeoutMs?: number;
  /** A pino logger, or false for none. Default: warnings and errors to stderr. */
  logger?: Logger | false;
  /** Reject `open` when any plugin in the folders fails to load (default: record it in `pluginProblems()`). */
  strictPlugins?: boolean;
  /**
   * The data folder of the durable store (LMDB). Without it the host keeps nothing and
   * durable streams are refused; the CLI and server default it to `./data`.
   */
  dataDir?: string;
  /** Store options: encryption at rest (else env SLUICE_STORE_KEY), default retention, upkeep. */
  store?: { encryptionKey?: string | Uint8Array | null; retention?: RetentionPolicy; maintenanceIntervalMs?: number; finishedRetentionMs?: number };
  /** `auto`: at open, resume unfinished `log` streams (they run with no consumer: the log is theirs). Default `manual`. */
  resume?: 'auto' | 'manual';
  /** Retries of durable streams whose sandbox died (retriable errors), resuming from the last checkpoint. */
  retries?: Partial<RetryPolicy>;
}

export interface RetryPolicy {
  max: number;
  backoffMs: number;
  factor: number;
  maxBackoffMs: number;
}

export const RETRY_DEFAULTS: Readonly<RetryPolicy> = Object.freeze({ max: 3, backoffMs: 100, factor: 2, maxBackoffMs: 5000 });

export const DEFAULTS = Object.freeze({
  maxQueued: 1000,
  cancelGraceMs: 2000,
  closeTimeoutMs: 5000,
  isolateProcesses: 1,
  isolateStreams: 64,
  /** `call()` collects chunks in memory, so it is bounded even when the stream is not. */
  callMaxBytes: 64 * 1024 * 1024,
  callMaxChunks: 1_000_000,
  watchdogMs: 25,
});

/** Validated options: what the host runs with. */
export interface Settings {
  options: SluiceOptions;
  maxQueued: number;
  defaults: Limits;
  policy: Limits;
  window: Window;
  retries: RetryPolicy;
  logger: Logger;
  dataDir: string | undefined;
}

export function parseWindowOverride(value: unknown, field: string): Partial<Window> {
  if (value === undefined) return {};
  if (!isObject(value)) fail('ERR_INVALID_ARGUMENT', field, 'an object', value);
  const out: Partial<Window> = {};
  if (value.chunks !== undefined) {
    assertInteger(value.chunks, `${field}.chunks`, 'ERR_INVALID_ARGUMENT', 1, MAX_WINDOW_CHUNKS);
    out.chunks = value.chunks;
  }
  if (value.bytes !== undefined) {
    assertInteger(value.bytes, `${field}.bytes`, 'ERR_INVALID_ARGUMENT', 1, MAX_WINDOW_BYTES);
    out.bytes = value.bytes;
  }
  return out;
}

/** Check every option; no side effects beyond creating the logger. */
export function resolveSettings(options: SluiceOptions): Settings {
  if (typeof options !== 'object' || options === null) fail('ERR_INVALID_ARGUMENT', 'options', 'an object', options);
  const maxQueued = options.maxQueued ?? DEFAULTS.maxQueued;
  assertInteger(maxQueued, 'maxQueued', 'ERR_INVALID_ARGUMENT', 0);
  if (options.cancelGraceMs !== undefined) assertInteger(options.cancelGraceMs, 'cancelGraceMs', 'ERR_INVALID_ARGUMENT', 0);
  if (options.closeTimeoutMs !== undefined) assertInteger(options.closeTimeoutMs, 'closeTimeoutMs', 'ERR_INVALID_ARGUMENT', 0);
  const policy: Limits = { ...DEFAULT_POLICY, ...parsePartialLimits(options.policy, 'policy', 'ERR_INVALID_ARGUMENT') };
  const defaults = resolveLimits(policy, DEFAULT_LIMITS, parsePartialLimits(options.limits, 'limits', 'ERR_INVALID_ARGUMENT'));
  const window: Window = { ...DEFAULT_WINDOW, ...parseWindowOverride(options.window, 'window') };
  const retries: RetryPolicy = { ...RETRY_DEFAULTS, ...options.retries };
  for (const key of Object.keys(RETRY_DEFAULTS) as (keyof RetryPolicy)[]) {
    if (key === 'factor') assertNumber(retries[key], `retries.${key}`, 'ERR_INVALID_ARGUMENT', 1, 100);
    else assertInteger(retries[key], `retries.${key}`, 'ERR_INVALID_ARGUMENT', 0);
  }
  if (options.resume !== undefined) assertOneOf(options.resume, ['auto', 'manual'] as const, 'resume', 'ERR_INVALID_ARGUMENT');
  if (options.dataDir !== undefined) assertString(options.dataDir, 'dataDir', 'ERR_INVALID_ARGUMENT', 4096);
  if (options.resume === 'auto' && options.dataDir === undefined) fail('ERR_INVALID_ARGUMENT', 'resume', "'manual' without a dataDir", options.resume);
  for (const key of ['worker', 'isolate'] as const) {
    const budget = options.memoryBudgetMb?.[key];
    if (budget !== undefined) assertInteger(budget, `memoryBudgetMb.${key}`, 'ERR_INVALID_ARGUMENT', 0);
  }
  const logger = options.logger === false ? pino({ level: 'silent' }) : (options.logger ?? pino({ level: process.env.SLUICE_LOG_LEVEL ?? 'warn' }, pino.destination(2)));
  return { options, maxQueued, defaults, policy, window, retries, logger, dataDir: options.dataDir === undefined ? undefined : resolve(options.dataDir) };
}
