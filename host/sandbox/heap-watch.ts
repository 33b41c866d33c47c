/**
 * Memory sampling of worker threads from outside them, through the inspector.
 *
 * `resourceLimits` alone cannot enforce a worker's `memoryMb`. One allocation past the
 * limit (a Map or array that doubles) is V8's fatal out-of-memory, which Node cannot
 * turn into a worker error: the whole host process aborts (measured on Node 20: a Map
 * grown past 64 MiB, exit 134). And `resourceLimits` bound only the V8 heap, not the
 * ArrayBuffer backing stores outside it (a thread holding 12 x 32 MiB Uint8Arrays under
 * a 64 MiB limit ran to its end). So the worker pool gives threads a V8 limit well above
 * `memoryMb` and stops a stream whose sampled heap plus external memory passes it.
 *
 * Every request goes to the thread's inspector session, which delivers it as a V8
 * interrupt: a thread that spins in plugin code still answers (between two
 * allocations, not during one). JavaScript run by `Runtime.callFunctionOn` does too
 * (Node 20: a thread in `for (;;) {}` answered in ~70 µs), so a sample calls the
 * thread's own `v8.getHeapStatistics` for `used_heap_size` and `external_memory` in one
 * round trip. `Runtime.getHeapUsage` needs no JavaScript but, on V8 11.3 (Node 20),
 * answers only usedSize/totalSize; its `backingStorageSize` came in later V8s.
 *
 * The function is captured at a thread's first sample and called by reference after.
 * Not when the thread attaches: that is during its bootstrap, where the console's
 * `require` threw (`testEnabled is not a function`, in Node's debuglog). Worker code is
 * trusted: a plugin that reassigns `v8.getHeapStatistics` before its thread's first
 * sample could feed it numbers. Where the capture fails, the thread's sample is
 * `Runtime.getHeapUsage`, the heap alone; where the inspector is unavailable, there is
 * no sample and `resourceLimits` is the only guard.
 *
 * `external_memory` counts the thread's ArrayBuffer backing stores (its own and those
 * transferred in; one transferred out leaves it at once), WebAssembly memories and
 * external strings. Not counted: SharedArrayBuffers (V8 charges shared backing stores to
 * no isolate) and what native addons allocate themselves. Like the heap, it counts
 * garbage until V8 collects it, and V8 lets dropped buffers reach ~64 MiB first: hence
 * `collectGarbage`, so a stream is not stopped for memory it no longer holds.
 */
import { Session } from 'node:inspector';

/** How long a thread may take to answer a sample; a thread deep in one huge GC may be slow. */
const SAMPLE_TIMEOUT_MS = 1000;
/** A full collection of a heap near a large memoryMb takes seconds. */
const COLLECT_TIMEOUT_MS = 5000;
const COLLECT_GROUP = 'sluice-collect';
/** Evaluated once per thread, with the console's `require`: the globals are the plugin's to change. */
const STATS_EXPRESSION = "require('v8').getHeapStatistics";
/** Called on the captured function: one number pair, no object graph to serialise. */
const STATS_CALL = 'function () { const s = this(); return [s.used_heap_size, s.external_memory]; }';
/**
 * A thread's id, from its inspector title: "[worker 7]" on Node 20, "Worker 7" in later
 * Node (src/inspector/worker_inspector.cc). `workerInfo.workerId` is not it but the
 * session's own attach counter: threads that existed before the session attach in no
 * set order, and a second host's session counts from 1 again, so keyed by it, samples
 * went to another thread or to none. A thread whose title does not parse is not sampled.
 */
const TITLE_THREAD_ID = /\bworker (\d+)\b/i;

/** One reading of a worker thread's memory, in bytes. */
export interface MemorySample {
  /** V8 heap in use, garbage not yet collected included. */
  heap: number;
  /** Memory outside the heap that V8 charges to the thread; undefined when only the heap could be read. */
  external: number | undefined;
}

interface Thread {
  sessionId: string;
  /** Remote object id of the thread's `v8.getHeapStatistics`; null when it could not be captured. */
  stats: string | null | undefined;
}

/** A protocol reply: `result` or `error`, as the inspector sent it. */
interface Reply {
  result?: Record<string, unknown>;
  error?: unknown;
}

interface Pending {
  resolve: (reply: Reply | undefined) => void;
  timer: NodeJS.Timeout;
}

export class WorkerHeapWatch {
  readonly #session: Session | undefined;
  /** Each worker thread's inspector session, by threadId. */
  readonly #threads = new Map<number, Thread>();
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;

  constructor() {
    let session: Session;
    try {
      session = new Session();
      session.connect();
    } catch (err) {
      // Not fatal (a Node built without the inspector): worker streams then have only
      // V8's backstop. Said once, where an operator will see it.
      process.emitWarning(`Worker memoryMb is not enforced: no inspector session (${(err as Error)?.message ?? String(err)}); only V8's limit at ~3x stops a worker`, { code: 'SLUICE_NO_HEAP_WATCH' });
      return;
    }
    this.#session = session;
    session.on('NodeWorker.attachedToWorker', ({ params }) => {
      const threadId = TITLE_THREAD_ID.exec(params.workerInfo.title)?.[1];
      if (threadId !== undefined) this.#threads.set(Number(threadId), { sessionId: params.sessionId, stats: undefined });
    });
    session.on('NodeWorker.detachedFromWorker', ({ params }) => {
      for (const [threadId, thread] of this.#threads) if (thread.sessionId === params.sessionId) this.#threads.delete(threadId);
    });
    session.on('NodeWorker.receivedMessageFromWorker', ({ params }) => {
      let reply: Reply & { id?: unknown };
      try {
        reply = JSON.parse(params.message) as typeof reply;
      } catch {
        return;
      }
      // Messages without a pending id are events or late replies to a request that timed out.
      const pending = typeof reply.id === 'number' ? this.#pending.get(reply.id) : undefined;
      if (pending === undefined) return;
      this.#pending.delete(reply.id as number);
      clearTimeout(pending.timer);
      pending.resolve(reply);
    });
    // Threads that exist now and every later one attach; none waits for a debugger.
    session.post('NodeWorker.enable', { waitForDebuggerOnStart: false }, () => undefined);
  }

  /** The captured function's id, or null; undefined when the thread did not answer in time (it is asked again). */
  async #capture(thread: Thread): Promise<string | null | undefined> {
    const reply = await this.#request(thread.sessionId, 'Runtime.evaluate', { expression: STATS_EXPRESSION, includeCommandLineAPI: true, silent: true }, SAMPLE_TIMEOUT_MS);
    if (reply === undefined) return undefined;
    const remote = reply.result?.result as { type?: unknown; objectId?: unknown } | undefined;
    thread.stats = remote?.type === 'function' && typeof remote.objectId === 'string' ? remote.objectId : null;
    return thread.stats;
  }

  /** Thread `threadId`'s heap and external memory; undefined when it cannot be read in time. */
  async sample(threadId: number): Promise<MemorySample | undefined> {
    const thread = this.#threads.get(threadId);
    if (thread === undefined) return undefined;
    if (thread.stats === undefined && (await this.#capture(thread)) === undefined) return undefined;
    if (typeof thread.stats === 'string') {
      const reply = await this.#request(thread.sessionId, 'Runtime.callFunctionOn', { objectId: thread.stats, functionDeclaration: STATS_CALL, returnByValue: true, silent: true }, SAMPLE_TIMEOUT_MS);
      if (reply === undefined) return undefined;
      const value = (reply.result?.result as { value?: unknown } | undefined)?.value;
      if (Array.isArray(value) && typeof value[0] === 'number' && typeof value[1] === 'number') return { heap: value[0], external: value[1] };
      // The call failed (its object gone, say): from now on this thread gets the heap sample.
      thread.stats = null;
    }
    const used = (await this.#request(thread.sessionId, 'Runtime.getHeapUsage', {}, SAMPLE_TIMEOUT_MS))?.result?.usedSize;
    return typeof used === 'number' ? { heap: used, external: undefined } : undefined;
  }

  /**
   * Has thread `threadId` collect all its garbage, now. Resolves true once it has, false
   * when it did not in time or cannot be asked.
   *
   * `HeapProfiler.collectGarbage` would be the plain way, but V8 runs it as a task on
   * the thread's event loop, which a stream's driver does not turn while it has credit
   * (no answer in 1 s, measured, whether the plugin spins or yields). `Runtime.queryObjects`
   * runs in the interrupt and V8 collects all garbage before it looks for objects
   * (HeapProfiler::QueryObjects). Asked for instances of the captured function, which has
   * none, it finds nothing. It stops the thread for a few full collections and a heap
   * walk: ~45 ms with a 5 MiB heap, ~250 ms with 300k small objects (Node 20).
   */
  async collectGarbage(threadId: number): Promise<boolean> {
    const thread = this.#threads.get(threadId);
    if (thread === undefined || typeof thread.stats !== 'string') return false;
    const reply = await this.#request(thread.sessionId, 'Runtime.queryObjects', { prototypeObjectId: thread.stats, objectGroup: COLLECT_GROUP }, COLLECT_TIMEOUT_MS);
    // The reply's (empty) array stays referenced by the session until released.
    void this.#request(thread.sessionId, 'Runtime.releaseObjectGroup', { objectGroup: COLLECT_GROUP }, SAMPLE_TIMEOUT_MS);
    return reply?.result !== undefined;
  }

  #request(sessionId: string, method: string, params: Record<string, unknown>, timeoutMs: number): Promise<Reply | undefined> {
    const session = this.#session;
    if (session === undefined) return Promise.resolve(undefined);
    const id = this.#nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        resolve(undefined);
      }, timeoutMs);
      timer.unref();
      this.#pending.set(id, { resolve, timer });
      session.post('NodeWorker.sendMessageToWorker', { sessionId, message: JSON.stringify({ id, method, params }) }, () => undefined);
    });
  }

  close(): void {
    for (const { resolve, timer } of this.#pending.values()) {
      clearTimeout(timer);
      resolve(undefined);
    }
    this.#pending.clear();
    this.#threads.clear();
    this.#session?.disconnect();
  }
}
