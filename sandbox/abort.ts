/**
 * A minimal AbortController for realms without one: an isolate has bare V8, no Web
 * APIs. It implements what plugins use: `aborted`, `reason`, `throwIfAborted()`,
 * `onabort`, `addEventListener('abort')` and the statics `abort`, `timeout` and `any`,
 * so that a plugin combining `ctx.signal` with its own runs unchanged in both sandboxes
 * (the isolate runtime installs these as the `AbortController` and `AbortSignal` globals).
 */
type Listener = (event: { type: 'abort'; target: unknown }) => void;

/** What Node's reasons are (DOMExceptions there; no DOMException in a bare isolate). */
function abortError(name: 'AbortError' | 'TimeoutError', message: string): Error {
  const err = new Error(message);
  err.name = name;
  return err;
}

/** `abort()` without a reason, as Node gives it. */
const orDefault = (reason: unknown): unknown => (reason === undefined ? abortError('AbortError', 'This operation was aborted') : reason);

export class MiniAbortSignal {
  static abort(reason?: unknown): MiniAbortSignal {
    const signal = new MiniAbortSignal();
    signal.fire(orDefault(reason));
    return signal;
  }

  static timeout(ms: number): MiniAbortSignal {
    const signal = new MiniAbortSignal();
    setTimeout(() => signal.fire(abortError('TimeoutError', 'The operation was aborted due to timeout')), ms);
    return signal;
  }

  static any(signals: Iterable<MiniAbortSignal>): MiniAbortSignal {
    const signal = new MiniAbortSignal();
    const list = [...signals];
    const first = list.find((s) => s.aborted);
    if (first !== undefined) signal.fire(first.reason);
    else for (const s of list) s.addEventListener('abort', () => signal.fire(s.reason), { once: true });
    return signal;
  }

  aborted = false;
  reason: unknown = undefined;
  onabort: Listener | null = null;
  private listeners: Listener[] = [];

  addEventListener(type: string, listener: Listener, options?: { once?: boolean }): void {
    if (type !== 'abort' || typeof listener !== 'function') return;
    if (options?.once === true) {
      const once: Listener = (e) => {
        this.removeEventListener('abort', once);
        listener(e);
      };
      this.listeners.push(once);
    } else this.listeners.push(listener);
  }

  removeEventListener(type: string, listener: Listener): void {
    if (type === 'abort') this.listeners = this.listeners.filter((l) => l !== listener);
  }

  throwIfAborted(): void {
    if (this.aborted) throw this.reason;
  }

  /** @internal */
  fire(reason: unknown): void {
    if (this.aborted) return;
    this.aborted = true;
    this.reason = reason;
    const event = { type: 'abort' as const, target: this };
    for (const l of [this.onabort, ...this.listeners]) {
      if (l === null) continue;
      try {
        l(event);
      } catch {
        // A plugin's abort listener failing must not stop the others or the driver.
      }
    }
  }
}

export class MiniAbortController {
  readonly signal = new MiniAbortSignal();
  abort(reason?: unknown): void {
    this.signal.fire(orDefault(reason));
  }
}

export interface AbortPair {
  signal: AbortSignal;
  abort(reason: unknown): void;
}

export function createAbort(): AbortPair {
  const Native = (globalThis as { AbortController?: typeof AbortController }).AbortController;
  if (Native !== undefined) {
    const c = new Native();
    return { signal: c.signal, abort: (reason) => c.abort(reason) };
  }
  const signal = new MiniAbortSignal();
  return { signal: signal as unknown as AbortSignal, abort: (reason) => signal.fire(reason) };
}
