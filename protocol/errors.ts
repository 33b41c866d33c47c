/**
 * The error catalogue. Every failure sluice reports carries a stable string `code`
 * from this table; callers branch on `err.code`, never on messages.
 *
 * Errors cross threads, processes and sockets as plain data (`WireError`): structured
 * clone drops the class, the name and own properties such as `code`, so they are
 * rebuilt with `fromWireError` on the other side.
 *
 * Pure TypeScript: no Node or package imports (the isolate runtime bundles this file).
 */

interface CodeInfo {
  /** Default message when none is given. */
  readonly message: string;
  /** A retriable failure is not the plugin's fault (its sandbox died); a retry may succeed. */
  readonly retriable?: boolean;
}

/**
 * The catalogue. Each code is documented in `protocol/ERRORS.md`; a test checks that
 * the two agree, so add the doc line when you add a code.
 */
export const ERROR_CODES = {
  // Arguments, configuration and CLI
  ERR_INVALID_ARGUMENT: { message: 'Invalid argument' },
  ERR_CONFIG_INVALID: { message: 'Invalid configuration' },
  ERR_CLI_USAGE: { message: 'Invalid command line' },

  // Plugins
  ERR_PLUGIN_NOT_FOUND: { message: 'Plugin not found' },
  ERR_MANIFEST_INVALID: { message: 'Plugin manifest is invalid' },
  ERR_PLUGIN_LOAD: { message: 'Plugin failed to load' },
  ERR_ACTION_NOT_FOUND: { message: 'Plugin has no such action' },
  ERR_PARAMS_INVALID: { message: 'Action params are invalid' },
  ERR_PLUGIN_THREW: { message: 'Plugin action threw' },

  // Plugin output
  ERR_CHUNK_INVALID: { message: 'Chunk is not JSON-compatible data or a Uint8Array' },
  ERR_PROTOCOL: { message: 'Sandbox sent a malformed or unexpected message' },

  // Per-stream limits
  ERR_LIMIT_MEMORY: { message: 'Stream exceeded its memory limit' },
  ERR_LIMIT_CPU: { message: 'Stream exceeded its CPU time limit' },
  ERR_LIMIT_WALL: { message: 'Stream exceeded its wall time limit' },
  ERR_LIMIT_IDLE: { message: 'Stream produced no chunk within its idle limit' },
  ERR_LIMIT_BYTES: { message: 'Stream exceeded its byte limit' },
  ERR_LIMIT_CHUNKS: { message: 'Stream exceeded its chunk limit' },
  ERR_LIMIT_CHUNK_BYTES: { message: 'A chunk exceeded the per-chunk byte limit' },

  // Lifecycle
  ERR_CANCELLED: { message: 'Stream was cancelled' },
  ERR_SANDBOX_CRASHED: { message: 'Sandbox crashed', retriable: true },
  ERR_SANDBOX_UNRESPONSIVE: { message: 'Sandbox stopped answering', retriable: true },
  ERR_QUEUE_FULL: { message: 'Admission queue is full' },
  ERR_HOST_CLOSED: { message: 'Host is closed' },
  ERR_STREAM_CONSUMED: { message: 'Stream can be iterated only once' },
  ERR_STREAM_NOT_FOUND: { message: 'Stream not found' },
  ERR_STREAM_GAP: { message: 'Chunks the reader asked for are no longer stored' },

  // Durable store
  ERR_STORE_CORRUPT: { message: 'Stored record is corrupt' },
  ERR_STORE_VERSION: { message: 'Stored record has an unknown version' },
  ERR_STORE_KEY: { message: 'Encryption key is missing or wrong' },
  ERR_STORE_CLOSED: { message: 'Store is closed' },
  ERR_STORE_SEQ: { message: 'Chunk seq would leave a hole in the stream log' },
  ERR_STORE_IO: { message: 'Store read or write failed' },
  ERR_STORE_LOCKED: { message: 'The data folder is in use by another host' },
  ERR_RESUME_FAILED: { message: 'Stream cannot be resumed' },

  // Server and WebSocket protocol
  ERR_UWS_NATIVE_MISSING: { message: 'uWebSockets.js native binary did not load' },
  ERR_UNAUTHORIZED: { message: 'Missing, malformed, expired or badly signed token' },
  ERR_FORBIDDEN: { message: 'Token does not allow this' },
  ERR_FRAME_INVALID: { message: 'WebSocket frame is malformed' },
  ERR_FRAME_TOO_LARGE: { message: 'WebSocket frame exceeds the maximum payload' },
  ERR_RATE_LIMITED: { message: 'Too many control frames' },
  ERR_SLOW_CONSUMER: { message: 'Client fell too far behind' },
  ERR_TOO_MANY_CONNECTIONS: { message: 'Connection limit reached' },
  ERR_TOO_MANY_SUBSCRIPTIONS: { message: 'Subscription limit per connection reached' },
  ERR_ROUTE_NOT_FOUND: { message: 'No such HTTP route' },

  // Operators and task graph
  ERR_BUFFER_OVERFLOW: { message: 'A bounded operator buffer overflowed' },
  ERR_PIPELINE_INVALID: { message: 'Pipeline description is invalid' },
  ERR_TASK_CYCLE: { message: 'Task dependencies form a cycle' },
  ERR_TASK_NOT_FOUND: { message: 'Task not found' },
  ERR_DEPENDENCY_FAILED: { message: 'A task this one depends on failed' },
  ERR_TASK_INVALID: { message: 'Task description is invalid' },
  ERR_SINK_FAILED: { message: "A task's output sink threw" },
} as const satisfies Record<string, CodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** An error as it crosses a thread, process or socket. */
export interface WireError {
  code: ErrorCode;
  message: string;
  retriable?: boolean;
  stack?: string;
  details?: Record<string, unknown>;
}

export interface SluiceErrorOptions {
  cause?: unknown;
  /** Small JSON-compatible facts about the failure (the limit, the observed value, a path). */
  details?: Record<string, unknown>;
}

/** Base class of every error sluice throws. */
export class SluiceError extends Error {
  readonly code: ErrorCode;
  readonly retriable: boolean;
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message?: string, options: SluiceErrorOptions = {}) {
    super(message ?? ERROR_CODES[code].message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'SluiceError';
    this.code = code;
    this.retriable = (ERROR_CODES[code] as CodeInfo).retriable === true;
    this.details = options.details;
  }

  toJSON(): WireError {
    return toWireError(this, false);
  }
}

type ErrorClass<C extends ErrorCode> = new (message?: string, options?: SluiceErrorOptions) => SluiceError & { readonly code: C };

function makeClass<C extends ErrorCode>(code: C): ErrorClass<C> {
  const cls = class extends SluiceError {
    constructor(message?: string, options?: SluiceErrorOptions) {
      super(code, message, options);
    }
  };
  Object.defineProperty(cls, 'name', { value: code });
  return cls as unknown as ErrorClass<C>;
}

/**
 * One subclass per code, generated from the table: `throw new errors.ERR_QUEUE_FULL()`.
 * `err instanceof errors.ERR_QUEUE_FULL` works, but `err.code === 'ERR_QUEUE_FULL'`
 * is what survives a thread hop.
 */
export const errors = Object.freeze(
  Object.fromEntries((Object.keys(ERROR_CODES) as ErrorCode[]).map((code) => [code, makeClass(code)])),
) as { readonly [C in ErrorCode]: ErrorClass<C> };

export function isErrorCode(value: unknown): value is ErrorCode {
  return typeof value === 'string' && Object.prototype.hasOwnProperty.call(ERROR_CODES, value);
}

export function isSluiceError(value: unknown, code?: ErrorCode): value is SluiceError {
  return value instanceof SluiceError && (code === undefined || value.code === code);
}

const MAX_WIRE_MESSAGE = 4096;

/** Describe any thrown value without running plugin code that could throw again. */
export function describeThrown(value: unknown): string {
  try {
    if (value instanceof Error) return String(value.message).slice(0, MAX_WIRE_MESSAGE);
    if (typeof value === 'string') return value.slice(0, MAX_WIRE_MESSAGE);
    if (value === null || value === undefined || typeof value !== 'object') return String(value);
    return Object.prototype.toString.call(value);
  } catch {
    // A hostile getter or toString threw while we described its throw; the type is all we can say.
    return `non-Error value of type ${typeof value}`;
  }
}

/**
 * Turn anything thrown into wire data. A non-sluice value becomes `fallback`
 * (by default ERR_PLUGIN_THREW, the right code when plugin code threw it).
 */
export function toWireError(err: unknown, withStack = true, fallback: ErrorCode = 'ERR_PLUGIN_THREW'): WireError {
  if (err instanceof SluiceError) {
    const wire: WireError = { code: err.code, message: err.message };
    if (err.retriable) wire.retriable = true;
    if (err.details !== undefined) wire.details = err.details;
    if (withStack && typeof err.stack === 'string') wire.stack = err.stack;
    return wire;
  }
  const wire: WireError = { code: fallback, message: describeThrown(err) };
  if (!(err instanceof Error)) wire.details = { thrownType: err === null ? 'null' : typeof err };
  else if (withStack) {
    try {
      if (typeof err.stack === 'string') wire.stack = err.stack.slice(0, 8 * MAX_WIRE_MESSAGE);
    } catch {
      // stack is an accessor on hostile errors; a missing stack is fine.
    }
  }
  return wire;
}

/** Rebuild a SluiceError from wire data (already parsed). */
export function fromWireError(wire: WireError): SluiceError {
  const err = new SluiceError(wire.code, wire.message, wire.details === undefined ? {} : { details: wire.details });
  if (wire.stack !== undefined) err.stack = wire.stack;
  return err;
}
