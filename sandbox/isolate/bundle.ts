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
 */
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
}

const DEFAULT_BUNDLE_OPTIONS: Readonly<Required<Omit<BundleOptions, 'signal'>>> = Object.freeze({ minify: false });

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

/** Resolve `sluice/*` to compiled pure-TS modules and refuse Node builtins. */
const isolateResolver: esbuild.Plugin = {
  name: 'sluice-isolate',
  setup(build) {
    build.onResolve({ filter: /^sluice(\/.*)?$/ }, (args) => {
      if (args.path === 'sluice/sdk') return { path: SDK_PATH };
      if (args.path === 'sluice/protocol') return { path: PROTOCOL_PATH };
      return { errors: [{ text: `Isolate plugins can import only "sluice/sdk" and "sluice/protocol" from sluice, not "${args.path}"` }] };
    });
    build.onResolve({ filter: /.*/ }, (args) => {
      if (args.kind === 'entry-point' || !isNodeBuiltin(args.path)) return undefined;
      return {
        errors: [{ text: `Isolate plugins cannot import the Node builtin "${args.path}": isolates have no Node APIs (use the 'worker' sandbox for trusted code that needs them)` }],
      };
    });
  },
};

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
  const contents = [
    `export { dispatch } from ${JSON.stringify(RUNTIME_PATH)};`,
    `import { register } from ${JSON.stringify(RUNTIME_PATH)};`,
    `import * as plugin from ${JSON.stringify(entry)};`,
    `register(plugin);`,
  ].join('\n');
  let result: esbuild.BuildResult<{ write: false }>;
  try {
    result = await esbuild.build({
      stdin: { contents, resolveDir: path.dirname(entry), sourcefile: 'sluice-isolate-entry.js', loader: 'js' },
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
      plugins: [isolateResolver],
    });
  } catch (err) {
    if (isBuildFailure(err)) {
      const messages = err.errors.map(formatMessage);
      throw new SluiceError('ERR_PLUGIN_LOAD', `Plugin ${entry} does not bundle for an isolate:\n${messages.join('\n')}`, {
        cause: err,
        details: { entry, errors: messages },
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
