/**
 * A minimal AbortController for realms without one: an isolate has bare V8, no Web
 * APIs. It implements what plugins use: `aborted`, `reason`, `throwIfAborted()`,
 * `onabort` and `addEventListener('abort')`.
 */
type Listener = (event: { type: 'abort'; target: unknown }) => void;

class MiniAbortSignal {
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
