/**
 * Public types of the host API (`sluice`). Kept apart from the engine so the server,
 * operators and CLI can depend on the shape without the implementation.
 */
import type { ChunkData } from '../protocol/chunk.js';
import type { Window } from '../protocol/credit.js';
import type { SluiceError } from '../protocol/errors.js';
import type { Limits } from '../protocol/limits.js';
import type { ActionKind, LogLevel } from '../protocol/messages.js';
import type { PluginManifest, SandboxKind } from '../sandbox/sdk.js';

export type Priority = 'high' | 'normal' | 'low';
export type Durability = 'none' | 'checkpoint' | 'log';
export type StreamStatus = 'queued' | 'running' | 'done' | 'failed' | 'cancelled';

export interface Chunk<T = ChunkData> {
  readonly seq: number;
  /**
   * The chunk as the plugin yielded it, read once into a copy the plugin cannot touch.
   * Byte chunks up to 64 KiB are views into one buffer per batch of the stream (as a
   * pooled Node Buffer is a view into its slab): keeping one keeps that buffer, at most
   * 320 KiB, alive. `data.slice()` what you keep for long out of a large stream.
   */
  readonly data: T;
}

export interface Progress {
  fraction: number;
  message?: string;
}

export interface StreamOptions {
  /** Override the manifest's sandbox. */
  sandbox?: SandboxKind;
  /** Override manifest limits for this call (still clamped by host policy). */
  limits?: Partial<Limits>;
  /** Credit window for this stream. */
  window?: Partial<Window>;
  priority?: Priority;
  /** Aborting cancels the stream (queued or running). */
  signal?: AbortSignal;
  /** Durable streams are recorded in the store (see the durable-streams docs). */
  durability?: Durability;
  /** Caller-chosen stream id (must be unique among live streams); default a random UUID. */
  id?: string;
  /**
   * An input stream for a stream-consuming action, which reads it as `params.input`.
   * Pulled only as fast as the action consumes it (credit flows back upstream);
   * cancelling this stream returns (cancels) the input. Host streams are unwrapped
   * to their chunks' data.
   */
  input?: AsyncIterable<unknown>;
  /** Credit window for the input (default: the host's window). */
  inputWindow?: Partial<Window>;
  /** `log` durability: how much of the log to keep (oldest chunks go first; readers then get a gap). */
  retention?: { maxChunks?: number; maxBytes?: number; maxAgeMs?: number };
}

/** A stream's state, live or stored (`host.streamInfo(id)`). */
export interface StreamInfo {
  id: string;
  plugin: string;
  action: string;
  status: StreamStatus;
  durability: Durability;
  /** Live: chunks produced this run. Stored: the log's tail (next seq). */
  chunks: number;
  progress?: Progress;
  checkpoint?: { seq: number; time: number };
  error?: { code: string; message: string };
  createdAt?: number;
  updatedAt?: number;
}

export interface StreamResult {
  status: Exclude<StreamStatus, 'queued' | 'running'>;
  /** Action kind as reported by the sandbox, once known. */
  kind?: ActionKind;
  /** Chunks and estimated bytes the sandbox produced. */
  chunks: number;
  bytes: number;
  error?: SluiceError;
}

export interface StreamEvents {
  progress: [Progress];
  log: [{ level: LogLevel; message: string }];
  checkpoint: [{ seq: number; state: unknown }];
  status: [StreamStatus];
}

/** A running (or queued) plugin stream: an async iterable of `{ seq, data }`, iterable once. */
export interface SluiceStream<T = ChunkData> extends AsyncIterable<Chunk<T>> {
  readonly id: string;
  readonly plugin: string;
  readonly action: string;
  readonly status: StreamStatus;
  /** Latest progress reported by the plugin. */
  readonly progress: Progress | undefined;
  /** Settles when the stream ends; never rejects (the error is in the result). */
  readonly result: Promise<StreamResult>;
  /** Cooperative cancel, then a hard stop after the host's grace period. Idempotent. */
  cancel(reason?: string): Promise<StreamResult>;
  /**
   * Optional fast path for the consumer that holds this stream's iterator: the chunks
   * already buffered, at most `max`, in order, taken exactly as that many `next()`
   * calls would take them (credit included) but without a promise per chunk. Empty
   * when nothing is buffered, when a `next()` is pending, or before the first `next()`:
   * then call `next()`, which waits and reports the end or the error.
   */
  takeBuffered?(max: number): Chunk<T>[];
  on<E extends keyof StreamEvents>(event: E, listener: (...args: StreamEvents[E]) => void): this;
  off<E extends keyof StreamEvents>(event: E, listener: (...args: StreamEvents[E]) => void): this;
}

export interface PluginInfo {
  name: string;
  version: string;
  description?: string;
  sandbox: SandboxKind;
  /** Absolute path of the plugin's entry module. */
  path: string;
  manifest: PluginManifest;
  actions: Record<string, { kind: ActionKind; description?: string }>;
}

/**
 * What a reader of a durable stream sees (`host.read(id, { fromSeq, epoch })`): the
 * chunks after `fromSeq` in order, live ones included, or an explicit event when it
 * cannot have them. Never a silent hole or a repeat.
 */
export type ReadEvent<T = ChunkData> =
  | { type: 'chunk'; seq: number; data: T }
  /** Chunks `fromSeq .. toSeq - 1` were removed by retention; reading goes on at `toSeq`. */
  | { type: 'gap'; fromSeq: number; toSeq: number }
  /** The store was re-created (its epoch changed): seqs restart; the reader's position is void. */
  | { type: 'reset'; epoch: string }
  /** The stream finished; no chunk follows. */
  | { type: 'end'; status: Exclude<StreamStatus, 'queued' | 'running'>; error?: { code: string; message: string } };
