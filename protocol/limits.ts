/**
 * Per-stream limits. A stream's effective limits are the call's overrides, else the
 * manifest's, else the host defaults, each clamped by the host policy's maximum.
 * 0 means "no limit" only where the policy allows it (policy maximum 0).
 *
 * What each counts:
 * - `memoryMb`: the plugin's heap and external memory in its sandbox (worker: sampled
 *   from outside its thread; isolate: the isolate's own limit).
 * - `cpuMs`: CPU time the plugin's code spends, its `finally` and the reading of its
 *   chunks included.
 * - `wallMs`: time since the stream started running, that is once its plugin is
 *   bundled and loaded in a sandbox (status `running`); time queued behind other
 *   streams and a first load do not count (the load has its own bound).
 * - `idleMs`: time with no chunk while the plugin holds credit; a paused consumer is
 *   not idleness.
 * - `maxBytes`, `maxChunks`, `maxChunkBytes`: output, in chunks and in estimated
 *   encoded bytes (protocol/chunk.ts).
 */
import { assertInteger, assertObject, fail } from './assert.js';
import type { ErrorCode } from './errors.js';

export const LIMIT_NAMES = ['memoryMb', 'cpuMs', 'wallMs', 'idleMs', 'maxBytes', 'maxChunks', 'maxChunkBytes'] as const;
export type LimitName = (typeof LIMIT_NAMES)[number];
export type Limits = Record<LimitName, number>;

/** The error each limit ends a stream with. */
export const LIMIT_ERROR: Readonly<Record<LimitName, ErrorCode>> = Object.freeze({
  memoryMb: 'ERR_LIMIT_MEMORY',
  cpuMs: 'ERR_LIMIT_CPU',
  wallMs: 'ERR_LIMIT_WALL',
  idleMs: 'ERR_LIMIT_IDLE',
  maxBytes: 'ERR_LIMIT_BYTES',
  maxChunks: 'ERR_LIMIT_CHUNKS',
  maxChunkBytes: 'ERR_LIMIT_CHUNK_BYTES',
});

/** Defaults when neither the call nor the manifest says: generous, but finite where it matters. */
export const DEFAULT_LIMITS: Readonly<Limits> = Object.freeze({
  memoryMb: 128,
  cpuMs: 0,
  wallMs: 0,
  idleMs: 0,
  maxBytes: 0,
  maxChunks: 0,
  maxChunkBytes: 16 * 1024 * 1024,
});

/** Host policy: the largest value a manifest or call may ask for (0 = unlimited allowed). */
export const DEFAULT_POLICY: Readonly<Limits> = Object.freeze({
  memoryMb: 1024,
  cpuMs: 0,
  wallMs: 0,
  idleMs: 0,
  maxBytes: 0,
  maxChunks: 0,
  maxChunkBytes: 64 * 1024 * 1024,
});

/** The smallest isolate heap V8 accepts. */
export const MIN_MEMORY_MB = 8;

const MAX_LIMIT = Number.MAX_SAFE_INTEGER;

/** The smallest value a limit accepts (0 means "no limit" for all but memoryMb). */
export function minLimit(name: LimitName): number {
  return name === 'memoryMb' ? MIN_MEMORY_MB : 0;
}

/** Parse a partial limits object (from a manifest, a call, a CLI flag or a config file). */
export function parsePartialLimits(value: unknown, field: string, code: ErrorCode): Partial<Limits> {
  if (value === undefined) return {};
  assertObject(value, field, code);
  const out: Partial<Limits> = {};
  for (const key of Object.keys(value)) {
    if (!(LIMIT_NAMES as readonly string[]).includes(key)) {
      fail(code, `${field}.${key}`, `one of the limits ${LIMIT_NAMES.join(', ')}`, key);
    }
  }
  for (const name of LIMIT_NAMES) {
    const v = value[name];
    if (v === undefined) continue;
    assertInteger(v, `${field}.${name}`, code, minLimit(name), MAX_LIMIT);
    out[name] = v;
  }
  return out;
}

/** clamp(call ?? manifest ?? default, policy); a policy of 0 allows anything, including 0. */
export function resolveLimits(policy: Limits, defaults: Limits, ...layers: Partial<Limits>[]): Limits {
  const out = { ...defaults };
  for (const layer of layers) {
    for (const name of LIMIT_NAMES) {
      const v = layer[name];
      if (v !== undefined) out[name] = v;
    }
  }
  for (const name of LIMIT_NAMES) {
    const max = policy[name];
    if (max > 0 && (out[name] === 0 || out[name] > max)) out[name] = max;
  }
  return out;
}
