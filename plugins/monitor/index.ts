/**
 * A monitoring stream: the machine's load and memory every `intervalMs`, until the
 * consumer cancels. It runs in the worker sandbox (trusted code) because it reads
 * Node's `os` module, which an isolate plugin cannot reach.
 */
import { freemem, loadavg, totalmem, uptime } from 'node:os';
import { definePlugin, type PluginContext } from 'sluice/sdk';

function status(tick: number) {
  const [load1, load5, load15] = loadavg();
  return {
    tick,
    time: new Date().toISOString(),
    load: { '1m': load1, '5m': load5, '15m': load15 },
    memory: { freeMb: Math.round(freemem() / 2 ** 20), totalMb: Math.round(totalmem() / 2 ** 20) },
    uptimeS: Math.round(uptime()),
  };
}

/** Resolves after `ms`, or rejects as soon as the stream is cancelled. */
function tick(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

export default definePlugin({
  actions: {
    async *watch({ intervalMs = 1000, count }: { intervalMs?: number; count?: number }, ctx: PluginContext) {
      for (let n = 0; count === undefined || n < count; n++) {
        if (n > 0) await tick(intervalMs, ctx.signal);
        if (count !== undefined) ctx.progress((n + 1) / count);
        yield status(n);
      }
    },
    async status() {
      return status(0);
    },
  },
});
