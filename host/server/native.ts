/**
 * Load uWebSockets.js and refuse its JavaScript fallback.
 *
 * The installed build (`@trufflesuite/uws-js-unofficial`, aliased as `uWebSockets.js`)
 * tries `require('../binaries/uws_<platform>_<arch>_<abi>.node')` and, when that
 * throws (wrong ABI, missing file, libc mismatch) or when `UWS_USE_FALLBACK` is set,
 * prints a warning and silently returns `require('../dist/index')`: a pure-JS shim
 * over `ws` that is an order of magnitude slower and lacks most of the API. A server
 * that "works" at a tenth of its speed is worse than one that refuses to start, so
 * we check what we got.
 *
 * The fallback is recognisable by shape: it exports only `App`, `_cfg`,
 * `us_listen_socket_close`, `us_socket_local_port` and `default` (an ES-module
 * interop object with `__esModule`), and its functions are JavaScript. The native
 * addon exports `SSLApp`, `getParts`, compressor constants, and its `App` is a
 * native function (`Function.prototype.toString` gives `[native code]`).
 */
import { createRequire } from 'node:module';
import { SluiceError } from '../../protocol/errors.js';

export type Uws = typeof import('uWebSockets.js');

const NATIVE_CODE = /\{\s*\[native code\]\s*\}\s*$/;
/** Exports only the native addon has; the fallback has none of them. */
const NATIVE_ONLY_EXPORTS = ['SSLApp', 'getParts', 'DEDICATED_COMPRESSOR_4KB'] as const;

/** Why a loaded module is not the native addon, or undefined when it is. */
export function whyNotNative(mod: unknown): string | undefined {
  if (typeof mod !== 'object' || mod === null) return `the module is ${mod === null ? 'null' : typeof mod}, not an object`;
  const m = mod as Record<string, unknown>;
  if (m.__esModule === true || 'default' in m) return 'the module is the JavaScript fallback (dist/index.js, an ES-module interop object)';
  if (typeof m.App !== 'function') return 'the module has no App() function';
  let source: string;
  try {
    source = Function.prototype.toString.call(m.App);
  } catch (err) {
    return `App cannot be inspected: ${String(err)}`;
  }
  if (!NATIVE_CODE.test(source)) return 'App() is a JavaScript function (the fallback), not native code';
  const missing = NATIVE_ONLY_EXPORTS.filter((name) => !(name in m));
  if (missing.length > 0) return `the module lacks native exports ${missing.join(', ')}`;
  return undefined;
}

const requireFromHere = createRequire(import.meta.url);

/** The default loader: exactly what `import 'uWebSockets.js'` would run. */
export function requireUws(): unknown {
  return requireFromHere('uWebSockets.js');
}

/**
 * Load uWS through `loader` (tests inject one) and return it only if it is the native
 * addon. Throws ERR_UWS_NATIVE_MISSING with the reason, the platform tuple the
 * package looks for, and what to do.
 */
export function loadNativeUws(loader: () => unknown = requireUws): Uws {
  let mod: unknown;
  try {
    mod = loader();
  } catch (err) {
    throw missing(`loading it threw: ${String((err as Error)?.message ?? err)}`, err);
  }
  const why = whyNotNative(mod);
  if (why !== undefined) throw missing(why);
  return mod as Uws;
}

function missing(why: string, cause?: unknown): SluiceError {
  const wanted = `uws_${process.platform}_${process.arch}_${process.versions.modules}.node`;
  const hint = process.env.UWS_USE_FALLBACK ? ' UWS_USE_FALLBACK is set in the environment; unset it.' : '';
  return new SluiceError(
    'ERR_UWS_NATIVE_MISSING',
    `uWebSockets.js native binary did not load (${why}). sluice refuses to serve on the slow JavaScript fallback. ` +
      `The package needs binaries/${wanted} for Node ${process.version}; install a uWebSockets.js build that ships it.${hint}`,
    { cause, details: { binary: wanted, node: process.version } },
  );
}
