/**
 * The plugin registry: finds plugins in the plugins folders at open, loads each one
 * inside a sandbox (its code never runs in the host) to learn its exported manifest
 * and actions, validates the manifest, and bundles it per sandbox kind on demand.
 *
 * A plugin is a module file (.js .mjs .ts .mts) or a folder whose `plugin.json`, or
 * the `sluice` key of its `package.json`, carries the manifest and names the entry
 * (`entry`, else package.json `main`, else index.{ts,mts,js,mjs}).
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, extname, join, resolve, sep } from 'node:path';
import { SluiceError, isSluiceError } from '../protocol/errors.js';
import type { ActionKind } from '../protocol/messages.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import { bundleForWorker, contentId } from './bundle.js';
import { ParamsValidator, validateManifest, type ValidatedManifest } from './manifest.js';
import type { BundledPlugin, PluginDescription, SandboxPool } from './sandbox/types.js';
import type { PluginInfo } from './types.js';

const MODULE_EXTENSIONS = new Set(['.js', '.mjs', '.ts', '.mts']);
const INDEX_NAMES = ['index.ts', 'index.mts', 'index.js', 'index.mjs'];

/** Bundles a plugin for an isolate; `root` is the folder its imports must stay in (see sandbox/isolate/bundle.ts). */
export type IsolateBundler = (entryPath: string, options: { root: string; stubBuiltins?: boolean }) => Promise<string>;

export interface RegistryDeps {
  cacheDir: string;
  pools: Partial<Record<SandboxKind, SandboxPool>>;
  bundleForIsolate: IsolateBundler | undefined;
}

export interface PluginProblem {
  path: string;
  error: SluiceError;
}

/** A loaded, validated plugin. */
export class PluginRecord {
  readonly #bundles = new Map<SandboxKind, Promise<BundledPlugin>>();
  readonly params: ParamsValidator;

  constructor(
    readonly manifest: ValidatedManifest,
    readonly entryPath: string,
    /** The plugin's folder: a folder plugin's own, or a single file's. */
    readonly root: string,
    readonly actions: Record<string, ActionKind>,
    private readonly deps: RegistryDeps,
    bundled: { kind: SandboxKind; bundle: BundledPlugin },
  ) {
    this.params = new ParamsValidator(manifest, entryPath);
    this.#bundles.set(bundled.kind, Promise.resolve(bundled.bundle));
  }

  get name(): string {
    return this.manifest.name;
  }

  bundle(kind: SandboxKind): Promise<BundledPlugin> {
    let p = this.#bundles.get(kind);
    if (p === undefined) {
      p = makeBundle(this.entryPath, this.root, this.manifest.name, kind, this.deps);
      // A failed bundle is not cached: the file may be fixed and tried again.
      p.catch(() => this.#bundles.delete(kind));
      this.#bundles.set(kind, p);
    }
    return p;
  }

  info(): PluginInfo {
    const actions: PluginInfo['actions'] = {};
    for (const [name, kind] of Object.entries(this.actions)) {
      const description = this.manifest.actions?.[name]?.description;
      actions[name] = description === undefined ? { kind } : { kind, description };
    }
    const info: PluginInfo = { name: this.name, version: this.manifest.version, sandbox: this.manifest.sandbox, path: this.entryPath, manifest: this.manifest, actions };
    if (this.manifest.description !== undefined) info.description = this.manifest.description;
    return info;
  }
}

async function makeBundle(entryPath: string, root: string, name: string, kind: SandboxKind, deps: RegistryDeps): Promise<BundledPlugin> {
  if (kind === 'worker') {
    const { id, modulePath } = await bundleForWorker(entryPath, deps.cacheDir);
    return { id, name, modulePath, script: '' };
  }
  if (deps.bundleForIsolate === undefined) throw new SluiceError('ERR_PLUGIN_LOAD', 'The isolate sandbox is not available in this host');
  const script = await deps.bundleForIsolate(entryPath, { root });
  return { id: contentId(script), name, modulePath: '', script };
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch {
    return false;
  }
}

async function readJson(path: string): Promise<unknown> {
  const text = await readFile(path, 'utf8');
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new SluiceError('ERR_MANIFEST_INVALID', `${path} is not valid JSON: ${(err as Error).message}`);
  }
}

/** Where a plugin's code is and what its files declare. */
async function locate(path: string): Promise<{ entryPath: string; root: string; declared: Record<string, unknown> }> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new SluiceError('ERR_PLUGIN_NOT_FOUND', `No plugin at ${path}`);
  }
  if (st.isFile()) {
    if (!MODULE_EXTENSIONS.has(extname(path))) throw new SluiceError('ERR_PLUGIN_LOAD', `${path} is not a .js, .mjs, .ts or .mts module`);
    return { entryPath: path, root: dirname(path), declared: {} };
  }
  let declared: Record<string, unknown> = {};
  let entry: string | undefined;
  const pluginJson = join(path, 'plugin.json');
  const packageJson = join(path, 'package.json');
  if (await exists(pluginJson)) {
    const json = await readJson(pluginJson);
    if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new SluiceError('ERR_MANIFEST_INVALID', `${pluginJson} must hold an object`);
    declared = { ...(json as Record<string, unknown>) };
    entry = typeof declared.entry === 'string' ? declared.entry : undefined;
  } else if (await exists(packageJson)) {
    const pkg = (await readJson(packageJson)) as Record<string, unknown>;
    const sluice = pkg.sluice;
    if (sluice !== undefined && (sluice === null || typeof sluice !== 'object' || Array.isArray(sluice))) {
      throw new SluiceError('ERR_MANIFEST_INVALID', `${packageJson}: \`sluice\` must be an object`);
    }
    declared = { ...(sluice as Record<string, unknown> | undefined) };
    if (declared.name === undefined && typeof pkg.name === 'string') declared.name = pkg.name.replace(/^@[^/]+\//, '');
    if (declared.version === undefined && typeof pkg.version === 'string') declared.version = pkg.version;
    if (declared.description === undefined && typeof pkg.description === 'string') declared.description = pkg.description;
    entry = typeof declared.entry === 'string' ? declared.entry : typeof pkg.main === 'string' ? pkg.main : undefined;
  }
  if (entry !== undefined) {
    const entryPath = resolve(path, entry);
    if (!entryPath.startsWith(resolve(path) + sep)) throw new SluiceError('ERR_MANIFEST_INVALID', `Plugin entry ${entry} points outside ${path}`);
    if (!(await exists(entryPath))) throw new SluiceError('ERR_PLUGIN_LOAD', `Plugin entry ${entryPath} does not exist`);
    return { entryPath, root: path, declared };
  }
  for (const name of INDEX_NAMES) {
    if (await exists(join(path, name))) return { entryPath: join(path, name), root: path, declared };
  }
  throw new SluiceError('ERR_PLUGIN_LOAD', `${path} has no plugin entry (plugin.json \`entry\`, package.json \`main\`, or index.ts/.js)`);
}

export class PluginRegistry {
  readonly #byName = new Map<string, PluginRecord>();
  readonly #byPath = new Map<string, Promise<PluginRecord>>();
  readonly #problems: PluginProblem[] = [];

  constructor(private readonly deps: RegistryDeps) {}

  /** Load every plugin in `dirs`. A bad plugin is recorded as a problem and skipped. */
  async discover(dirs: string[]): Promise<void> {
    for (const dir of dirs) {
      let names: string[];
      try {
        names = (await readdir(dir)).sort();
      } catch (err) {
        throw new SluiceError('ERR_CONFIG_INVALID', `Plugins folder ${dir} cannot be read: ${(err as Error).message}`);
      }
      const candidates = names.filter((n) => !n.startsWith('.') && n !== 'node_modules').map((n) => join(dir, n));
      const loaded = await Promise.allSettled(candidates.map((path) => this.load(path)));
      loaded.forEach((r, i) => {
        if (r.status === 'rejected') {
          const error = isSluiceError(r.reason) ? r.reason : new SluiceError('ERR_PLUGIN_LOAD', String(r.reason));
          this.#problems.push({ path: candidates[i]!, error });
        }
      });
    }
  }

  /** Load (once) the plugin at `path` and register it by name. */
  load(path: string): Promise<PluginRecord> {
    const abs = resolve(path);
    let p = this.#byPath.get(abs);
    if (p === undefined) {
      p = this.#load(abs).then((record) => {
        const clash = this.#byName.get(record.name);
        if (clash !== undefined && clash.entryPath !== record.entryPath) {
          throw new SluiceError('ERR_MANIFEST_INVALID', `Two plugins are named \`${record.name}\`: ${clash.entryPath} and ${record.entryPath}`);
        }
        this.#byName.set(record.name, record);
        return record;
      });
      p.catch(() => this.#byPath.delete(abs));
      this.#byPath.set(abs, p);
    }
    return p;
  }

  async #load(path: string): Promise<PluginRecord> {
    const { entryPath, root, declared } = await locate(path);
    const declaredSandbox = declared.sandbox === 'worker' || declared.sandbox === 'isolate' ? declared.sandbox : undefined;
    // Untrusted until a file says otherwise: describe in an isolate when there is one.
    let kind: SandboxKind = declaredSandbox ?? (this.deps.pools.isolate !== undefined ? 'isolate' : 'worker');
    if (this.deps.pools[kind] === undefined) throw new SluiceError('ERR_PLUGIN_LOAD', `Plugin ${path} needs the ${kind} sandbox, which this host does not run`);
    const name = basename(path, extname(path));
    let bundle: BundledPlugin;
    try {
      bundle = await makeBundle(entryPath, root, name, kind, this.deps);
    } catch (err) {
      // A single file that imports Node builtins may be a trusted plugin whose exported
      // manifest asks for the worker sandbox: only its code can say so.
      if (declaredSandbox !== undefined || !(await this.#asksForWorker(entryPath, root, err))) throw err;
      kind = 'worker';
      bundle = await makeBundle(entryPath, root, name, kind, this.deps);
    }
    const description: PluginDescription = await this.deps.pools[kind]!.describe(bundle);
    const exported = description.manifest !== null && typeof description.manifest === 'object' ? (description.manifest as Record<string, unknown>) : {};
    const merged: Record<string, unknown> = { ...exported, ...declared };
    merged.name ??= basename(path, extname(path));
    merged.version ??= '0.0.0';
    delete merged.entry;
    const manifest = validateManifest(merged, path);
    for (const action of Object.keys(manifest.actions ?? {})) {
      if (!(action in description.actions)) throw new SluiceError('ERR_MANIFEST_INVALID', `Manifest of ${path} describes action \`${action}\`, which the module does not export`);
    }
    if (Object.keys(description.actions).length === 0) throw new SluiceError('ERR_PLUGIN_LOAD', `Plugin ${path} exports no actions`);
    return new PluginRecord(manifest, entryPath, root, description.actions, this.deps, { kind, bundle: { ...bundle, name: manifest.name } });
  }

  /**
   * Whether a plugin that failed to bundle for an isolate because it imports Node
   * builtins exports `manifest.sandbox: 'worker'`. Read in an isolate from a bundle whose
   * builtins are stand-ins that throw when used, so its code still runs untrusted; a
   * module that uses a builtin at its top level cannot be read this way and has to
   * declare its sandbox in plugin.json or package.json.
   */
  async #asksForWorker(entryPath: string, root: string, err: unknown): Promise<boolean> {
    const builtins = isSluiceError(err) ? (err.details as { builtins?: unknown } | undefined)?.builtins : undefined;
    const { isolate, worker } = this.deps.pools;
    if (!Array.isArray(builtins) || builtins.length === 0 || isolate === undefined || worker === undefined || this.deps.bundleForIsolate === undefined) return false;
    try {
      const script = await this.deps.bundleForIsolate(entryPath, { root, stubBuiltins: true });
      const { manifest } = await isolate.describe({ id: contentId(script), name: basename(entryPath), modulePath: '', script });
      return (manifest as { sandbox?: unknown } | null)?.sandbox === 'worker';
    } catch {
      return false;
    }
  }

  /** A plugin by name (discovered) or by path (loaded now). */
  async resolve(ref: string): Promise<PluginRecord> {
    const byName = this.#byName.get(ref);
    if (byName !== undefined) return byName;
    if (ref.includes('/') || ref.includes('\\') || MODULE_EXTENSIONS.has(extname(ref))) return this.load(ref);
    const problem = this.#problems.find((p) => basename(p.path, extname(p.path)) === ref);
    if (problem !== undefined) throw problem.error;
    throw new SluiceError('ERR_PLUGIN_NOT_FOUND', `No plugin named \`${ref}\` (known: ${[...this.#byName.keys()].join(', ') || 'none'})`, { details: { plugin: ref } });
  }

  list(): PluginInfo[] {
    return [...this.#byName.values()].map((r) => r.info());
  }

  problems(): PluginProblem[] {
    return [...this.#problems];
  }
}
