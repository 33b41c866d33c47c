/**
 * `sluice/sdk`: what plugin authors import. Types plus `definePlugin`, which only
 * checks the shape and returns its argument, so a plugin bundled into an isolate
 * carries no host code. Nothing here touches Node APIs.
 *
 * @example
 * import { definePlugin } from 'sluice/sdk';
 * export default definePlugin({
 *   manifest: { name: 'counter', version: '1.0.0', sandbox: 'isolate' },
 *   actions: {
 *     async *count({ to }: { to: number }, ctx) {
 *       for (let i = ctx.resume?.seq ?? 0; i < to; i++) {
 *         ctx.progress(i / to);
 *         yield i;
 *       }
 *     },
 *   },
 * });
 */
import type { ChunkData } from '../protocol/chunk.js';
import type { Limits } from '../protocol/limits.js';
import type { Resume } from '../protocol/messages.js';

export type { ChunkData, Limits, Resume };

export interface PluginLogger {
  debug(...args: unknown[]): void;
  info(...args: unknown[]): void;
  warn(...args: unknown[]): void;
  error(...args: unknown[]): void;
}

/** What an action receives besides its params: the only host surface a plugin sees. */
export interface PluginContext {
  /** Aborted when the stream is cancelled or a limit is hit; stop work and return. */
  readonly signal: AbortSignal;
  /** The stream's id, stable across resumes. */
  readonly streamId: string;
  /** Where a resumed run starts: `seq` is the next chunk's sequence number. */
  readonly resume: Resume | undefined;
  /** Report progress in [0, 1]; only the latest value per batch reaches the host. */
  progress(fraction: number, message?: string): void;
  /** Save state to resume from: `ctx.resume` of a restarted run gets the last one, with seq = chunks yielded so far. */
  checkpoint(state: ChunkData): void;
  readonly log: PluginLogger;
}

export type UnaryAction<P = any, R = unknown> = (params: P, ctx: PluginContext) => R | Promise<R>;
export type StreamAction<P = any, C = unknown> = (params: P, ctx: PluginContext) => AsyncIterable<C> | Iterable<C>;
export type Action = UnaryAction | StreamAction;

export type SandboxKind = 'worker' | 'isolate';

/** JSON Schema (draft 2020-12) for an action's params, checked by the host before the action runs. */
export type JsonSchema = Record<string, unknown> | boolean;

export interface ActionManifest {
  description?: string;
  params?: JsonSchema;
}

export interface PluginManifest {
  name: string;
  version: string;
  description?: string;
  /** Which sandbox runs the plugin; the host may override per call. Default 'isolate'. */
  sandbox?: SandboxKind;
  limits?: Partial<Limits>;
  /** Declared capabilities; reserved, none are granted yet. */
  permissions?: string[];
  actions?: Record<string, ActionManifest>;
}

export interface PluginDefinition<A extends Record<string, Action> = Record<string, Action>> {
  manifest?: PluginManifest;
  actions: A;
}

/**
 * Throw from an action to reject its params with ERR_PARAMS_INVALID instead of the
 * generic ERR_PLUGIN_THREW.
 */
export class ParamsError extends Error {
  readonly code = 'ERR_PARAMS_INVALID';
  constructor(message: string) {
    super(message);
    this.name = 'ParamsError';
  }
}

/** Type a plugin. Checks only the shape, so it is safe to call in any sandbox. */
export function definePlugin<A extends Record<string, Action>>(plugin: PluginDefinition<A>): PluginDefinition<A> {
  if (typeof plugin !== 'object' || plugin === null || typeof plugin.actions !== 'object' || plugin.actions === null) {
    throw new TypeError('definePlugin expects { actions: { name: function } }');
  }
  for (const [name, fn] of Object.entries(plugin.actions)) {
    if (typeof fn !== 'function') throw new TypeError(`definePlugin: action \`${name}\` is not a function`);
  }
  return plugin;
}
