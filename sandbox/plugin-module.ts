/**
 * How a loaded plugin module is read, the same in every sandbox: `export const
 * actions` (+ optional `manifest`) or `export default definePlugin({ manifest, actions })`.
 */
import { SluiceError } from '../protocol/errors.js';
import type { ActionKind } from '../protocol/messages.js';

export interface LoadedPlugin {
  actions: Record<string, unknown>;
  manifest: unknown;
}

export function readPluginModule(mod: Record<string, unknown>): LoadedPlugin {
  const def = mod.default as { actions?: unknown; manifest?: unknown } | undefined;
  const fromDefault = def !== null && typeof def === 'object' && typeof def.actions === 'object' && def.actions !== null;
  const actions = fromDefault ? def.actions : mod.actions;
  if (actions === null || typeof actions !== 'object') {
    throw new SluiceError('ERR_PLUGIN_LOAD', 'Plugin module exports no `actions` object (export `actions`, or a default `definePlugin({ actions })`)');
  }
  return { actions: actions as Record<string, unknown>, manifest: fromDefault ? def.manifest : mod.manifest };
}

/** Generator functions are streams; anything else is unary until it returns an iterable. */
export function actionKinds(actions: Record<string, unknown>): Record<string, ActionKind> {
  const kinds: Record<string, ActionKind> = {};
  for (const name of Object.keys(actions)) {
    const fn = actions[name];
    if (typeof fn !== 'function') continue;
    const tag = Object.prototype.toString.call(fn);
    kinds[name] = tag === '[object AsyncGeneratorFunction]' || tag === '[object GeneratorFunction]' ? 'stream' : 'unary';
  }
  return kinds;
}

/** A manifest is data: copy it through JSON so nothing live crosses the boundary. */
export function manifestData(manifest: unknown): unknown {
  if (manifest === undefined) return undefined;
  try {
    return JSON.parse(JSON.stringify(manifest)) as unknown;
  } catch (err) {
    throw new SluiceError('ERR_MANIFEST_INVALID', `Plugin manifest is not JSON data: ${(err as Error).message}`);
  }
}
