/**
 * Server options: one frozen default object, one zod schema that validates both
 * `startServer` options and a `--config` JSON file, with messages that name the
 * option and the bad value.
 */
import { z } from 'zod';
import { show } from '../../protocol/assert.js';
import { SluiceError, type ErrorCode } from '../../protocol/errors.js';

const KIB = 1024;
const MIB = 1024 * KIB;

export const SERVER_DEFAULTS = Object.freeze({
  host: '127.0.0.1',
  port: 8080,
  /** Largest client frame accepted; larger ones close the socket with 1009 (ERR_FRAME_TOO_LARGE). */
  maxPayload: 64 * KIB,
  maxConnections: 10_000,
  /** Subscriptions one connection may hold at once. */
  maxSubscriptions: 64,
  /** Control-frame token bucket per connection: `burst` frames, refilled at `perSecond`. */
  rateLimit: Object.freeze({ burst: 200, perSecond: 100 }),
  /** Close a connection with no frame and no subscription for this long (4000); 0 disables. */
  idleTimeoutMs: 120_000,
  /**
   * Send-buffer watermarks on `getBufferedAmount()`: stop feeding a socket above `high`,
   * resume on `drain` below `low`. A socket past `hard` is closed with 4008.
   */
  watermarks: Object.freeze({ low: 64 * KIB, high: 256 * KIB, hard: 16 * MIB }),
  /** One `chunks` frame carries at most this many chunks / about this many bytes. */
  batch: Object.freeze({ chunks: 256, bytes: 64 * KIB }),
  /**
   * Non-durable fan-out: the last `chunks` chunks (at most `bytes`) of each stream are
   * kept; one that reconnects within them resumes without loss.
   */
  fanout: Object.freeze({ chunks: 1024, bytes: 8 * MIB }),
  /**
   * A subscriber whose unsent chunks fill the fan-out ring holds its stream back; once it
   * has done so this long without sending anything, it gets ERR_SLOW_CONSUMER and the
   * others go on (0: at once). Until then the stream waits for it, so readers of equal
   * speed, a few frames apart, all keep up, and a brief stall is forgiven.
   */
  slowConsumerMs: 1000,
  /** A non-durable stream with no subscriber for this long is cancelled. */
  lingerMs: 30_000,
  /**
   * Outstanding credit a client may hold per subscription (grants beyond are clamped).
   * Credit only permits sending; what is in flight is bounded by the socket watermarks
   * and the fan-out ring, not by this.
   */
  maxCredit: 1 << 20,
  /** Browser `Origin`s allowed to open a socket or call the API; requests without `Origin` are allowed. */
  allowedOrigins: Object.freeze([] as string[]),
  /** Graceful close bound: sockets and host.close() get this long. */
  shutdownTimeoutMs: 10_000,
});

const positive = z.number().int().positive();
const nonNegative = z.number().int().nonnegative();

export const serverConfigSchema = z
  .object({
    host: z.string().min(1).optional(),
    port: z.number().int().min(0).max(65535).optional(),
    secret: z.string().min(16).optional(),
    dataDir: z.string().min(1).optional(),
    pluginsDir: z.string().min(1).optional(),
    maxPayload: z.number().int().min(1024).max(64 * MIB).optional(),
    maxConnections: positive.optional(),
    maxSubscriptions: positive.optional(),
    rateLimit: z.object({ burst: positive, perSecond: positive }).strict().optional(),
    idleTimeoutMs: nonNegative.optional(),
    watermarks: z.object({ low: nonNegative, high: positive, hard: positive }).strict().optional(),
    batch: z.object({ chunks: positive, bytes: positive }).strict().optional(),
    fanout: z.object({ chunks: positive, bytes: positive }).strict().optional(),
    lingerMs: nonNegative.optional(),
    slowConsumerMs: nonNegative.optional(),
    maxCredit: positive.optional(),
    allowedOrigins: z.array(z.string().min(1)).optional(),
    shutdownTimeoutMs: positive.optional(),
  })
  .strict()
  .superRefine((v, ctx) => {
    const w = v.watermarks;
    if (w !== undefined && !(w.low < w.high && w.high < w.hard)) {
      ctx.addIssue({ code: 'custom', path: ['watermarks'], message: 'needs low < high < hard' });
    }
  });

/** What a config file or the options object may hold (the secret may also be bytes). */
export type ServerConfig = z.infer<typeof serverConfigSchema>;

export interface ResolvedServerConfig {
  host: string;
  port: number;
  maxPayload: number;
  maxConnections: number;
  maxSubscriptions: number;
  rateLimit: { burst: number; perSecond: number };
  idleTimeoutMs: number;
  watermarks: { low: number; high: number; hard: number };
  batch: { chunks: number; bytes: number };
  fanout: { chunks: number; bytes: number };
  lingerMs: number;
  slowConsumerMs: number;
  maxCredit: number;
  allowedOrigins: readonly string[];
  shutdownTimeoutMs: number;
}

function issuePath(path: readonly PropertyKey[]): string {
  return path.length === 0 ? 'options' : path.map(String).join('.');
}

/** Validate with the schema; throw `code` naming the first bad option and its value. */
export function parseServerConfig(value: unknown, code: ErrorCode = 'ERR_INVALID_ARGUMENT', source = 'options'): ServerConfig {
  const result = serverConfigSchema.safeParse(value);
  if (result.success) return result.data;
  const issue = result.error.issues[0]!;
  let bad: unknown = value;
  for (const key of issue.path) bad = typeof bad === 'object' && bad !== null ? (bad as Record<PropertyKey, unknown>)[key] : undefined;
  const name = issuePath(issue.path);
  throw new SluiceError(code, `Invalid ${source}: \`${name}\` ${issue.message}, got ${show(bad)}`, { details: { field: name } });
}

export function resolveServerConfig(config: ServerConfig): ResolvedServerConfig {
  const d = SERVER_DEFAULTS;
  return {
    host: config.host ?? d.host,
    port: config.port ?? d.port,
    maxPayload: config.maxPayload ?? d.maxPayload,
    maxConnections: config.maxConnections ?? d.maxConnections,
    maxSubscriptions: config.maxSubscriptions ?? d.maxSubscriptions,
    rateLimit: { ...(config.rateLimit ?? d.rateLimit) },
    idleTimeoutMs: config.idleTimeoutMs ?? d.idleTimeoutMs,
    watermarks: { ...(config.watermarks ?? d.watermarks) },
    batch: { ...(config.batch ?? d.batch) },
    fanout: { ...(config.fanout ?? d.fanout) },
    lingerMs: config.lingerMs ?? d.lingerMs,
    slowConsumerMs: config.slowConsumerMs ?? d.slowConsumerMs,
    maxCredit: config.maxCredit ?? d.maxCredit,
    allowedOrigins: Object.freeze([...(config.allowedOrigins ?? d.allowedOrigins)]),
    shutdownTimeoutMs: config.shutdownTimeoutMs ?? d.shutdownTimeoutMs,
  };
}
