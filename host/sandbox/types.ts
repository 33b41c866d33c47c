/**
 * What the host needs from a sandbox kind. A pool runs streams; each running stream
 * is a `SandboxHandle`. The pool enforces the limits only it can see from outside the
 * plugin's thread (cpuMs, memoryMb) and reports every way a stream can end without
 * its own `end`/`error` message (crash, OOM, hard stop) through `onExit`.
 */
import type { SluiceError } from '../../protocol/errors.js';
import type { ActionKind, FromSandbox, StartSpec, ToSandbox } from '../../protocol/messages.js';
import type { PluginManifest, SandboxKind } from '../../sandbox/sdk.js';

/** A plugin, bundled once per sandbox kind by the registry. */
export interface BundledPlugin {
  /** Content hash of the bundle: the same id means the same code. */
  readonly id: string;
  readonly name: string;
  /** Worker: absolute path of an ES module bundle to import(). */
  readonly modulePath: string;
  /** Isolate: one classic script (IIFE) holding the isolate runtime and the plugin. */
  readonly script: string;
}

/** What loading a plugin inside a sandbox found (its exported manifest and action kinds). */
export interface PluginDescription {
  manifest: unknown;
  /** `stream` when the action is a generator function; a unary action may still return an iterable. */
  actions: Record<string, ActionKind>;
}

export interface SandboxEvents {
  /** A parsed message from the sandbox, in order. */
  message(msg: FromSandbox): void;
  /**
   * The stream's sandbox is gone. `error` says why when the stream did not end by its
   * own `end`/`error` message (crash, limit, terminate); undefined after a normal end.
   * Called exactly once, after the last `message`.
   */
  exit(error: SluiceError | undefined): void;
}

export interface SandboxHandle {
  /** Credit or cancel; dropped silently once the stream's sandbox has exited. A credit's `buffers` are moved, not copied. */
  send(msg: ToSandbox): void;
  /** Hard stop this stream only (worker terminate, isolate dispose); `exit(reason)` follows. */
  terminate(reason: SluiceError): void;
  /**
   * True when a credit's `buffers` reach the sandbox without a copy (a MessagePort
   * transfer): the host then hands spent batch buffers back for the sandbox to pack into.
   */
  readonly movesBuffers?: boolean;
}

export interface PoolStats {
  kind: SandboxKind;
  running: number;
  /** Sandbox threads or processes alive now. */
  sandboxes: number;
  /** Sandboxes replaced after a crash since the pool opened. */
  replaced: number;
}

export interface SandboxPool {
  readonly kind: SandboxKind;
  /** Load the plugin in a sandbox and report its manifest and actions; plugin code never runs in the host. */
  describe(plugin: BundledPlugin, signal?: AbortSignal): Promise<PluginDescription>;
  /** Start one stream. Rejects only when the pool is closed; every later failure goes to `events.exit`. */
  start(plugin: BundledPlugin, spec: StartSpec, events: SandboxEvents): Promise<SandboxHandle>;
  stats(): PoolStats;
  /** Stop accepting streams, wait for running ones up to `timeoutMs`, then destroy. Idempotent. */
  close(timeoutMs?: number): Promise<void>;
  /** Kill everything now. Idempotent. */
  destroy(): Promise<void>;
}
