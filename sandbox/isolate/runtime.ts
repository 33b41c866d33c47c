/**
 * The isolate side of the isolate sandbox. bundle.ts bundles this module with the
 * plugin into one classic script that runs in a bare V8 isolate: no Node APIs, no
 * event loop, no timers, no console of its own. This module supplies what a plugin
 * needs from that list and drives one stream with the shared `StreamDriver`.
 *
 * Wiring (see bundle.ts and process.ts): the script is
 * `(function (emit, wake) { var __sluiceBridge = { emit, wake }; <bundle>; return dispatch })`.
 * The supervising process calls it with two ivm Callbacks (they arrive here as plain
 * functions) and keeps the returned `dispatch` as an ivm Reference on its own side.
 * This module's top level runs before the plugin's (ES import order) and moves the
 * bridge into a closure, clearing the variable, so plugin code cannot name it. Nothing
 * of ivm ever reaches a global.
 *
 * There is one stream per isolate, so the module-level state below is per stream; two
 * hosts in one process each get their own isolates.
 *
 * Isolates have no event loop: timers live in a table here, and the process calls
 * `dispatch('tick')` when the earliest one is due (the `wake` callback asks for that).
 * `DriverEnv.later` is a tick with a 0 ms delay rather than a microtask, so a batch
 * collects every chunk the plugin yields before the isolate goes idle. A 0 ms tick never
 * leaves the isolate's thread: `dispatch('bind')` receives an ivm Reference to `dispatch`
 * itself, kept only inside the `tickNext` closure, and `applyIgnored` on it queues the
 * tick as the isolate's next task, after the current one and its microtasks. Going
 * through the process instead cost two thread hops per batch. 'bind' is a call of its
 * own, before 'start', so the Reference is never an argument while plugin code runs;
 * and the bundle is strict (bundle.ts), so no `fn.arguments` exposes a frame anyway.
 */
import { StreamDriver } from '../driver.js';
import { MiniAbortController, MiniAbortSignal } from '../abort.js';
import { SluiceError, describeThrown, toWireError } from '../../protocol/errors.js';
import type { ActionKind, FromSandbox, StartSpec, ToSandbox } from '../../protocol/messages.js';
import type { PluginLogger } from '../sdk.js';

/** What the supervising process hands the script: two fire-and-forget functions. */
export interface Bridge {
  /**
   * One data-path message for the process (copied across the boundary). A batch's packed
   * bytes go as the second argument, out of the message: ivm copies a bare ArrayBuffer
   * for a fraction of what one nested in an object costs (about 15 vs 40-60 us per 128 KiB).
   */
  emit(msg: FromSandbox, packedBytes?: ArrayBuffer): void;
  /** Call `dispatch('tick')` in about `delayMs`; a later request for an earlier time replaces it. */
  wake(delayMs: number): void;
}

/** The operations the process may ask for. */
export type DispatchOp = 'bind' | 'start' | 'to' | 'tick' | 'describe';

/** The one method used of the ivm Reference to `dispatch` that `dispatch('bind')` receives. */
export interface SelfReference {
  applyIgnored(receiver: undefined, args: [DispatchOp]): void;
}

/** What `dispatch('describe')` returns (plain data; the process parses it). */
export type DescribeResult =
  | { ok: true; manifest: unknown; actions: Record<string, ActionKind> }
  | { ok: false; error: ReturnType<typeof toWireError> };

// Set by bundle.ts's wrapper function; undefined when this module is loaded any other way.
declare let __sluiceBridge: Bridge | undefined;

const bridge: Bridge | undefined = typeof __sluiceBridge === 'undefined' ? undefined : __sluiceBridge;
if (typeof __sluiceBridge !== 'undefined') __sluiceBridge = undefined;

function emit(msg: FromSandbox): void {
  if (msg.type === 'batch' && msg.packed !== undefined) {
    const { buffer, sizes } = msg.packed;
    bridge?.emit({ ...msg, packed: { sizes } } as FromSandbox, buffer);
  } else bridge?.emit(msg);
}

// ---- timers ----------------------------------------------------------------------

interface Timer {
  due: number;
  fn: (...args: unknown[]) => void;
  args: unknown[];
  /** Interval period, or undefined for a one-shot timeout. */
  every: number | undefined;
}

/** Node clamps timer delays to [1, 2^31 - 1] ms; so do we. */
const TIMEOUT_MAX = 2 ** 31 - 1;

const timers = new Map<number, Timer>();
let nextTimerId = 1;
let laterQueue: Array<() => void> = [];
/** The time a tick was last asked for; Infinity when no tick is pending. */
let wakeAt = Infinity;
/** Queues `dispatch('tick')` as this isolate's next task; set by `dispatch('bind')`. */
let tickNext: (() => void) | undefined;

function requestWake(due: number): void {
  if (due >= wakeAt) return;
  wakeAt = due;
  const delay = due - Date.now();
  if (delay <= 0 && tickNext !== undefined) tickNext();
  else bridge?.wake(Math.max(0, delay));
}

function clampDelay(ms: unknown): number {
  const n = Number(ms);
  return n >= 1 && n <= TIMEOUT_MAX ? Math.floor(n) : 1;
}

function addTimer(fn: unknown, ms: unknown, args: unknown[], repeat: boolean): number {
  if (typeof fn !== 'function') throw new TypeError(`The "callback" argument must be of type function. Received ${describeThrown(fn)}`);
  const delay = clampDelay(ms);
  const id = nextTimerId++;
  const due = Date.now() + delay;
  timers.set(id, { due, fn: fn as Timer['fn'], args, every: repeat ? delay : undefined });
  requestWake(due);
  return id;
}

function clearTimer(id: unknown): void {
  if (typeof id === 'number') timers.delete(id);
}

function reportUncaught(where: string, err: unknown): void {
  // Node would crash the process; here the plugin's log says what happened and the
  // stream's own limits (idle, wall) end a stream that now waits forever.
  logTo('error', [`Uncaught exception in ${where}: ${describeThrown(err)}`]);
}

function tick(): void {
  wakeAt = Infinity;
  const queue = laterQueue;
  laterQueue = [];
  for (const fn of queue) {
    try {
      fn();
    } catch (err) {
      reportUncaught('a deferred callback', err);
    }
  }
  const now = Date.now();
  const due: Array<[number, Timer]> = [];
  for (const entry of timers) if (entry[1].due <= now) due.push(entry);
  due.sort((a, b) => a[1].due - b[1].due || a[0] - b[0]);
  for (const [id, timer] of due) {
    // An earlier callback in this tick may have cleared it.
    if (timers.get(id) !== timer) continue;
    if (timer.every === undefined) timers.delete(id);
    else timer.due = now + timer.every;
    try {
      timer.fn(...timer.args);
    } catch (err) {
      reportUncaught('a timer callback', err);
    }
  }
  if (laterQueue.length > 0) requestWake(0);
  let next = Infinity;
  for (const timer of timers.values()) if (timer.due < next) next = timer.due;
  if (next !== Infinity) requestWake(next);
}

function later(fn: () => void): void {
  laterQueue.push(fn);
  requestWake(0);
}

// ---- console ---------------------------------------------------------------------

type Level = 'debug' | 'info' | 'warn' | 'error';
/** The running action's `ctx.log`, so console lines keep their place among the chunks. */
let streamLog: PluginLogger | undefined;

function logTo(level: Level, args: unknown[]): void {
  if (streamLog !== undefined) {
    streamLog[level](...args);
    return;
  }
  emit({ type: 'log', level, message: args.map((a) => (typeof a === 'string' ? a : safeJson(a))).join(' ') });
}

function safeJson(value: unknown): string {
  try {
    const json = JSON.stringify(value);
    return json === undefined ? String(value) : json;
  } catch {
    return describeThrown(value);
  }
}

function makeConsole(): Record<string, (...args: unknown[]) => void> {
  const at = (level: Level) => (...args: unknown[]) => logTo(level, args);
  return {
    log: at('info'),
    info: at('info'),
    debug: at('debug'),
    trace: at('debug'),
    warn: at('warn'),
    error: at('error'),
    dir: at('info'),
  };
}

// ---- UTF-8 -----------------------------------------------------------------------

class TextEncoderShim {
  get encoding(): string {
    return 'utf-8';
  }
  encode(input: unknown = ''): Uint8Array {
    const s = String(input);
    const out = new Uint8Array(s.length * 3);
    let p = 0;
    for (let i = 0; i < s.length; i++) {
      let c = s.charCodeAt(i);
      if (c < 0x80) {
        out[p++] = c;
        continue;
      }
      if (c < 0x800) {
        out[p++] = 0xc0 | (c >> 6);
        out[p++] = 0x80 | (c & 63);
        continue;
      }
      if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
        const d = s.charCodeAt(i + 1);
        if (d >= 0xdc00 && d <= 0xdfff) {
          const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          i++;
          out[p++] = 0xf0 | (cp >> 18);
          out[p++] = 0x80 | ((cp >> 12) & 63);
          out[p++] = 0x80 | ((cp >> 6) & 63);
          out[p++] = 0x80 | (cp & 63);
          continue;
        }
      }
      if (c >= 0xd800 && c <= 0xdfff) c = 0xfffd; // lone surrogate
      out[p++] = 0xe0 | (c >> 12);
      out[p++] = 0x80 | ((c >> 6) & 63);
      out[p++] = 0x80 | (c & 63);
    }
    return out.slice(0, p);
  }
}

const DECODE_SLICE = 8192;

class TextDecoderShim {
  constructor(label: unknown = 'utf-8') {
    const l = String(label).toLowerCase();
    if (l !== 'utf-8' && l !== 'utf8') throw new RangeError(`TextDecoder: only utf-8 is supported in isolates, got ${JSON.stringify(l)}`);
  }
  get encoding(): string {
    return 'utf-8';
  }
  decode(input?: unknown): string {
    if (input === undefined) return '';
    let b: Uint8Array;
    if (input instanceof Uint8Array) b = input;
    else if (input instanceof ArrayBuffer) b = new Uint8Array(input);
    else if (ArrayBuffer.isView(input)) b = new Uint8Array(input.buffer, input.byteOffset, input.byteLength);
    else throw new TypeError('TextDecoder.decode expects an ArrayBuffer or a view');
    const units: number[] = [];
    let out = '';
    let i = 0;
    // Skip a BOM, as the WHATWG decoder does by default.
    if (b.length >= 3 && b[0] === 0xef && b[1] === 0xbb && b[2] === 0xbf) i = 3;
    const cont = (k: number): number => {
      const x = b[k];
      return x !== undefined && (x & 0xc0) === 0x80 ? x & 63 : -1;
    };
    while (i < b.length) {
      const c = b[i] as number;
      let cp = 0xfffd;
      let n = 1;
      if (c < 0x80) cp = c;
      else if (c >= 0xc2 && c <= 0xdf) {
        const c1 = cont(i + 1);
        if (c1 >= 0) [cp, n] = [((c & 31) << 6) | c1, 2];
      } else if (c >= 0xe0 && c <= 0xef) {
        const c1 = cont(i + 1);
        const c2 = cont(i + 2);
        const v = ((c & 15) << 12) | (c1 << 6) | c2;
        if (c1 >= 0 && c2 >= 0 && v >= 0x800 && (v < 0xd800 || v > 0xdfff)) [cp, n] = [v, 3];
      } else if (c >= 0xf0 && c <= 0xf4) {
        const c1 = cont(i + 1);
        const c2 = cont(i + 2);
        const c3 = cont(i + 3);
        const v = ((c & 7) << 18) | (c1 << 12) | (c2 << 6) | c3;
        if (c1 >= 0 && c2 >= 0 && c3 >= 0 && v >= 0x10000 && v <= 0x10ffff) [cp, n] = [v, 4];
      }
      i += n;
      if (cp >= 0x10000) {
        cp -= 0x10000;
        units.push(0xd800 + (cp >> 10), 0xdc00 + (cp & 0x3ff));
      } else units.push(cp);
      if (units.length >= DECODE_SLICE) {
        out += String.fromCharCode(...units);
        units.length = 0;
      }
    }
    return out + String.fromCharCode(...units);
  }
}

// ---- globals ---------------------------------------------------------------------

function defineGlobal(name: string, value: unknown): void {
  Object.defineProperty(globalThis, name, { value, writable: true, configurable: true, enumerable: false });
}

function installShims(): void {
  defineGlobal('setTimeout', (fn: unknown, ms?: unknown, ...args: unknown[]) => addTimer(fn, ms, args, false));
  defineGlobal('setInterval', (fn: unknown, ms?: unknown, ...args: unknown[]) => addTimer(fn, ms, args, true));
  defineGlobal('clearTimeout', clearTimer);
  defineGlobal('clearInterval', clearTimer);
  defineGlobal('queueMicrotask', (fn: unknown) => {
    if (typeof fn !== 'function') throw new TypeError('queueMicrotask expects a function');
    void Promise.resolve().then(() => {
      try {
        (fn as () => void)();
      } catch (err) {
        reportUncaught('a microtask', err);
      }
    });
  });
  defineGlobal('console', makeConsole());
  if (typeof (globalThis as { TextEncoder?: unknown }).TextEncoder === 'undefined') defineGlobal('TextEncoder', TextEncoderShim);
  if (typeof (globalThis as { TextDecoder?: unknown }).TextDecoder === 'undefined') defineGlobal('TextDecoder', TextDecoderShim);
  // Installed before any driver exists, so ctx.signal is one of these and `instanceof AbortSignal` holds.
  if (typeof (globalThis as { AbortController?: unknown }).AbortController === 'undefined') {
    defineGlobal('AbortController', MiniAbortController);
    defineGlobal('AbortSignal', MiniAbortSignal);
  }
}

if (bridge !== undefined) installShims();

// ---- the plugin ------------------------------------------------------------------

interface LoadedPlugin {
  actions: Record<string, unknown>;
  manifest: unknown;
}

let plugin: LoadedPlugin | undefined;
let loadError: SluiceError | undefined;
let driver: StreamDriver | undefined;

function isObj(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null;
}

/** Called by the bundle's entry with the plugin module's namespace. */
export function register(ns: Record<string, unknown>): void {
  try {
    const d = ns.default;
    if (isObj(d) && isObj(d.actions)) plugin = { actions: d.actions, manifest: d.manifest };
    else if (isObj(ns.actions)) plugin = { actions: ns.actions, manifest: ns.manifest };
    else {
      loadError = new SluiceError('ERR_PLUGIN_LOAD', 'Plugin module must export `actions` (and optionally `manifest`) or a default `definePlugin({ manifest, actions })`');
    }
  } catch (err) {
    loadError = new SluiceError('ERR_PLUGIN_LOAD', `Reading the plugin's exports threw: ${describeThrown(err)}`);
  }
}

function kindOf(fn: unknown): ActionKind {
  const tag = Object.prototype.toString.call(fn);
  return tag === '[object AsyncGeneratorFunction]' || tag === '[object GeneratorFunction]' ? 'stream' : 'unary';
}

function describe(): DescribeResult {
  try {
    if (plugin === undefined) throw loadError ?? new SluiceError('ERR_PLUGIN_LOAD', 'Plugin did not register');
    const actions: Record<string, ActionKind> = {};
    for (const name of Object.keys(plugin.actions)) {
      const fn = plugin.actions[name];
      if (typeof fn === 'function') actions[name] = kindOf(fn);
    }
    // JSON keeps the manifest plain data; the host validates its shape.
    const manifest: unknown = plugin.manifest === undefined ? undefined : JSON.parse(JSON.stringify(plugin.manifest));
    return { ok: true, manifest, actions };
  } catch (err) {
    return { ok: false, error: toWireError(err, false, 'ERR_PLUGIN_LOAD') };
  }
}

/**
 * The actions object the driver sees: the plugin's own, with the started action wrapped
 * to capture `ctx.log` for the console shim. `this` inside actions still finds the
 * plugin's other actions through the prototype.
 */
function withConsoleCapture(actions: Record<string, unknown>, name: string): Record<string, unknown> {
  const fn = Object.prototype.hasOwnProperty.call(actions, name) ? actions[name] : undefined;
  if (typeof fn !== 'function') return actions;
  const view = Object.create(actions) as Record<string, unknown>;
  view[name] = function (this: unknown, params: unknown, ctx: { log: PluginLogger }) {
    streamLog = ctx.log;
    return (fn as (p: unknown, c: unknown) => unknown).call(this, params, ctx);
  };
  return view;
}

function start(spec: StartSpec): void {
  if (driver !== undefined) throw new Error('stream already started');
  if (plugin === undefined) {
    emit({ type: 'error', error: toWireError(loadError ?? new SluiceError('ERR_PLUGIN_LOAD', 'Plugin did not register'), false) });
    return;
  }
  driver = new StreamDriver(withConsoleCapture(plugin.actions, spec.action), spec, { send: emit, later });
  void driver.run();
}

/**
 * The one entry the process calls (through an ivm Reference it keeps). Its arguments
 * come from the process, not from plugin code. The process calls 'to' and 'tick' without
 * waiting for an outcome, so a failure there is reported as the stream's error here.
 */
export function dispatch(op: DispatchOp, arg: unknown): unknown {
  switch (op) {
    case 'bind': {
      if (tickNext !== undefined) return undefined;
      const self = arg as SelfReference;
      tickNext = () => self.applyIgnored(undefined, ['tick']);
      return undefined;
    }
    case 'start':
      start(arg as StartSpec);
      return undefined;
    case 'to':
      guard(() => driver?.onMessage(arg as ToSandbox));
      return undefined;
    case 'tick':
      guard(tick);
      return undefined;
    case 'describe':
      return describe();
    default:
      throw new Error(`unknown dispatch op ${String(op)}`);
  }
}

function guard(fn: () => void): void {
  try {
    fn();
  } catch (err) {
    emit({ type: 'error', error: toWireError(new SluiceError('ERR_PLUGIN_THREW', `Isolate runtime failed: ${describeThrown(err)}`), false) });
  }
}
