/**
 * Bundle a plugin for the isolate sandbox: one classic script holding the isolate
 * runtime (runtime.ts, compiled) and the plugin (JS or TypeScript), for bare V8.
 *
 * The script's completion value is a function `(emit, wake) => dispatch`: process.ts
 * runs the script, calls the function with its two Callbacks and keeps `dispatch`. See
 * runtime.ts for why the bridge arrives as arguments and not as a global.
 *
 * Isolate plugins get no Node APIs, so importing a Node builtin fails here with a clear
 * ERR_PLUGIN_LOAD instead of at run time. `sluice/sdk` resolves to the compiled SDK.
 *
 * Bundling reads files on the host, with the host's rights, and puts their contents in
 * the script: so a plugin's imports must stay inside its own folder (`root`, symlinks
 * followed). Otherwise `import key from '/etc/app/config.json'` would hand an untrusted
 * plugin any file the host can read.
 */
import { realpathSync } from 'node:fs';
import { builtinModules } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';
import { SluiceError } from '../../protocol/errors.js';

export interface BundleOptions {
  /** Minify the output (smaller script, less readable plugin stack traces). Default false. */
  minify?: boolean;
  /** Checked before and after the build (esbuild cannot stop a running build). */
  signal?: AbortSignal;
  /** The folder the plugin's imports must stay in: a folder plugin's own folder. Default: the entry's folder. */
  root?: string;
  /**
   * Resolve Node builtins to stand-ins that throw when used, instead of failing the build.
   * Only for reading the manifest a plugin exports (does a trusted plugin ask for the
   * worker sandbox?), never for running it.
   */
  stubBuiltins?: boolean;
}

const DEFAULT_BUNDLE_OPTIONS: Readonly<Required<Omit<BundleOptions, 'signal' | 'root'>>> = Object.freeze({ minify: false, stubBuiltins: false });

/** Name of the wrapper's bridge variable; runtime.ts reads and clears it. */
const BRIDGE_PARAM = '__sluiceBridge';
/** esbuild's IIFE assigns the entry's exports to this local. */
const ENTRY_NAME = '__sluiceEntry';

const RUNTIME_PATH = fileURLToPath(new URL('./runtime.js', import.meta.url));
const SDK_PATH = fileURLToPath(new URL('../sdk.js', import.meta.url));
const PROTOCOL_PATH = fileURLToPath(new URL('../../protocol/index.js', import.meta.url));

const NODE_BUILTINS = new Set(builtinModules);

function isNodeBuiltin(spec: string): boolean {
  if (spec.startsWith('node:')) return true;
  return NODE_BUILTINS.has(spec) || NODE_BUILTINS.has(spec.split('/')[0] ?? '');
}

/** The runtime's own module tree: it may import within it, and nothing else may. */
const SLUICE_DIRS = [path.dirname(path.dirname(RUNTIME_PATH)), path.dirname(PROTOCOL_PATH)].map((d) => realpathSync(d));
const REAL_RUNTIME_PATH = realpathSync(RUNTIME_PATH);
const STUB_NAMESPACE = 'sluice-node-stub';
/** The generated entry's file name (it exists only in memory, beside the plugin's entry). */
const STDIN_SOURCE = 'sluice-isolate-entry.js';
/** Marks esbuild.resolve calls made by the resolver itself, so it does not judge them twice. */
const OWN_RESOLVE = Symbol('sluice-own-resolve');

function inside(file: string, dirs: readonly string[]): boolean {
  return dirs.some((dir) => file === dir || file.startsWith(dir + path.sep));
}

/**
 * Resolve `sluice/*` to compiled pure-TS modules, refuse Node builtins (recording them in
 * `builtins`), and keep every other import inside `root` or, for the runtime's own
 * modules, inside sluice's tree.
 */
function isolateResolver(entry: string, root: string, stubBuiltins: boolean, builtins: Set<string>): esbuild.Plugin {
  const stdinImporter = path.join(path.dirname(entry), STDIN_SOURCE);
  // What each importer may reach: the generated entry its two modules, sluice's modules
  // their own tree, and the plugin's files its folder.
  const fromStdin = [realpathSync(entry), REAL_RUNTIME_PATH];
  const pluginDirs = [realpathSync(root)];
  const reachable = (importer: string, file: string): boolean => {
    if (importer === stdinImporter) return fromStdin.includes(file);
    return inside(file, inside(realpathSync(importer), SLUICE_DIRS) ? SLUICE_DIRS : pluginDirs);
  };
  return {
    name: 'sluice-isolate',
    setup(build) {
      build.onResolve({ filter: /^sluice(\/.*)?$/ }, (args) => {
        if (args.path === 'sluice/sdk') return { path: SDK_PATH };
        if (args.path === 'sluice/protocol') return { path: PROTOCOL_PATH };
        return { errors: [{ text: `Isolate plugins can import only "sluice/sdk" and "sluice/protocol" from sluice, not "${args.path}"` }] };
      });
      build.onResolve({ filter: /.*/ }, async (args) => {
        if (args.kind === 'entry-point' || args.pluginData === OWN_RESOLVE) return undefined;
        if (isNodeBuiltin(args.path)) {
          builtins.add(args.path);
          if (stubBuiltins) return { path: args.path, namespace: STUB_NAMESPACE };
          return {
            errors: [
              {
                text: `Isolate plugins cannot import the Node builtin "${args.path}": isolates have no Node APIs. Trusted code that needs them runs in the 'worker' sandbox: say \`sandbox: 'worker'\` in the plugin's plugin.json or package.json \`sluice\` key, or in its exported manifest if the module uses no builtin at its top level`,
              },
            ],
          };
        }
        const found = await build.resolve(args.path, { kind: args.kind, resolveDir: args.resolveDir, importer: args.importer, pluginData: OWN_RESOLVE });
        if (found.errors.length > 0 || found.namespace !== 'file' || found.path === '') return found.errors.length > 0 ? { errors: found.errors } : undefined;
        const file = realpathSync(found.path);
        if (!reachable(args.importer, file)) {
          return { errors: [{ text: `Plugin imports "${args.path}" (${file}), outside its folder ${pluginDirs[0]}: isolate plugins can import only their own files` }] };
        }
        return { path: found.path, sideEffects: found.sideEffects };
      });
      // A stand-in that fails on use: enough to evaluate a module that only imports.
      build.onLoad({ filter: /.*/, namespace: STUB_NAMESPACE }, (args) => ({
        contents: `const fail = () => { throw new Error(${JSON.stringify(`${args.path} is not available here`)}); };\nmodule.exports = new Proxy(fail, { get: (_, key) => (key === '__esModule' ? false : fail) });`,
        loader: 'js',
      }));
    },
  };
}

function formatMessage(m: esbuild.Message): string {
  const where = m.location === null ? '' : `${m.location.file}:${m.location.line}:${m.location.column + 1}: `;
  return `${where}${m.text}`;
}

function isBuildFailure(err: unknown): err is esbuild.BuildFailure {
  return err instanceof Error && Array.isArray((err as Partial<esbuild.BuildFailure>).errors);
}

/**
 * Bundle `entryPath` (a plugin module, `.js`/`.ts`/`.mjs`/...) with the isolate runtime.
 * Rejects with ERR_PLUGIN_LOAD carrying esbuild's messages when the plugin does not
 * bundle, including any import of a Node builtin.
 *
 * @example
 * const script = await bundleForIsolate('/plugins/counter/index.ts');
 * const handle = await pool.start({ id: hash(script), name: 'counter', modulePath: '', script }, spec, events);
 */
export async function bundleForIsolate(entryPath: string, options: BundleOptions = {}): Promise<string> {
  if (typeof entryPath !== 'string' || entryPath.length === 0) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`entryPath\` to be a non-empty string, got ${typeof entryPath}`);
  }
  const opts = { ...DEFAULT_BUNDLE_OPTIONS, ...options };
  if (typeof opts.minify !== 'boolean') {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`minify\` to be a boolean, got \`${String(opts.minify)}\` (${typeof opts.minify})`);
  }
  options.signal?.throwIfAborted();
  const entry = path.resolve(entryPath);
  const root = path.resolve(opts.root ?? path.dirname(entry));
  const builtins = new Set<string>();
  const contents = [
    `export { dispatch } from ${JSON.stringify(RUNTIME_PATH)};`,
    `import { register } from ${JSON.stringify(RUNTIME_PATH)};`,
    `import * as plugin from ${JSON.stringify(entry)};`,
    `register(plugin);`,
  ].join('\n');
  let result: esbuild.BuildResult<{ write: false }>;
  try {
    result = await esbuild.build({
      stdin: { contents, resolveDir: path.dirname(entry), sourcefile: STDIN_SOURCE, loader: 'js' },
      bundle: true,
      write: false,
      format: 'iife',
      globalName: ENTRY_NAME,
      platform: 'neutral',
      target: 'es2022',
      mainFields: ['module', 'main'],
      conditions: ['import', 'default'],
      resolveExtensions: ['.ts', '.mts', '.js', '.mjs', '.cjs', '.json'],
      minify: opts.minify,
      logLevel: 'silent',
      plugins: [isolateResolver(entry, root, opts.stubBuiltins === true, builtins)],
    });
  } catch (err) {
    if (isBuildFailure(err)) {
      const messages = err.errors.map(formatMessage);
      throw new SluiceError('ERR_PLUGIN_LOAD', `Plugin ${entry} does not bundle for an isolate:\n${messages.join('\n')}`, {
        cause: err,
        details: { entry, errors: messages, ...(builtins.size > 0 ? { builtins: [...builtins] } : {}) },
      });
    }
    throw new SluiceError('ERR_PLUGIN_LOAD', `Bundling ${entry} failed: ${String((err as Error)?.message ?? err)}`, { cause: err });
  }
  options.signal?.throwIfAborted();
  const out = result.outputFiles[0];
  if (out === undefined) throw new SluiceError('ERR_PLUGIN_LOAD', `Bundling ${entry} produced no output`);
  // The process passes the two Callbacks as arguments; they are folded into one bridge
  // object at once and the parameters cleared, so only runtime.ts ever holds them.
  // Strict, as the ES modules it was bundled from are: in sloppy code a plugin could walk
  // `fn.caller` / `fn.arguments` up into the runtime's frames and their arguments.
  return [
    `(function (__sluiceEmit, __sluiceWake) {`,
    `'use strict';`,
    `var ${BRIDGE_PARAM} = { emit: __sluiceEmit, wake: __sluiceWake };`,
    `__sluiceEmit = __sluiceWake = undefined;`,
    out.text,
    `return ${ENTRY_NAME}.dispatch;`,
    `})`,
  ].join('\n');
}
