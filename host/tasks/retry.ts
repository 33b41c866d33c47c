/**
 * Retry decisions and jittered exponential backoff.
 *
 * Jitter spreads retries of many tasks that failed together (one sandbox process
 * crashing under several streams) so they do not all come back at the same instant:
 * the delay is `base * (1 - jitter * random)`, with `base = min(maxBackoffMs,
 * backoffMs * factor^(retry - 1))`. See "Exponential Backoff And Jitter" (AWS
 * Architecture Blog, 2015); `jitter: 1` is its "full jitter".
 */
import type { SluiceError } from '../../protocol/errors.js';
import type { RetryPolicy } from './spec.js';

/** Delay before retry number `retry` (1 for the first retry). `random` returns [0, 1). */
export function backoffDelay(policy: RetryPolicy, retry: number, random: () => number = Math.random): number {
  const base = Math.min(policy.maxBackoffMs, policy.backoffMs * policy.factor ** Math.max(0, retry - 1));
  return Math.round(base * (1 - policy.jitter * random()));
}

/**
 * Whether a task that failed with `error` after `retriesSoFar` retries gets another:
 * retriable errors (the sandbox died, not the plugin's fault) always qualify, other
 * codes only when the policy lists them. Cancellation never does.
 */
export function shouldRetry(error: SluiceError, policy: RetryPolicy, retriesSoFar: number): boolean {
  if (retriesSoFar >= policy.max) return false;
  if (error.code === 'ERR_CANCELLED' || error.code === 'ERR_HOST_CLOSED') return false;
  return error.retriable || policy.on.includes(error.code);
}

/** Wait `ms`, or reject with `signal.reason` as soon as it aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  signal?.throwIfAborted();
  return new Promise((resolve, reject) => {
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
