/**
 * Heap sampling of worker threads from outside them, through the inspector.
 *
 * `resourceLimits` alone cannot enforce a worker's `memoryMb`. One allocation past the
 * limit (a Map or array that doubles) is V8's fatal out-of-memory, which Node cannot
 * turn into a worker error: the whole host process aborts (measured on Node 20: a Map
 * grown past 64 MiB, exit 134). So the worker pool gives threads a V8 limit well above
 * `memoryMb` and stops a stream whose sampled heap passes `memoryMb`, before V8's
 * limit is near.
 *
 * The sample is `Runtime.getHeapUsage`, sent to the thread's inspector session. The
 * inspector delivers it as a V8 interrupt, so a thread that spins in plugin code still
 * answers (between two allocations, not during one). Attaching costs the threads
 * nothing until asked. Where the inspector is unavailable, `heapUsed` answers
 * undefined and `resourceLimits` is the only guard, as before.
 */
import { Session } from 'node:inspector';

/** How long a thread may take to answer a sample; a thread deep in one huge GC may be slow. */
const SAMPLE_TIMEOUT_MS = 1000;

interface Pending {
  resolve: (used: number | undefined) => void;
  timer: NodeJS.Timeout;
}

export class WorkerHeapWatch {
  readonly #session: Session | undefined;
  /** Inspector session id of each worker thread, by threadId. */
  readonly #threads = new Map<number, string>();
  readonly #pending = new Map<number, Pending>();
  #nextId = 1;

  constructor() {
    let session: Session;
    try {
      session = new Session();
      session.connect();
    } catch {
      return;
    }
    this.#session = session;
    session.on('NodeWorker.attachedToWorker', ({ params }) => {
      this.#threads.set(Number(params.workerInfo.workerId), params.sessionId);
    });
    session.on('NodeWorker.detachedFromWorker', ({ params }) => {
      for (const [threadId, sessionId] of this.#threads) if (sessionId === params.sessionId) this.#threads.delete(threadId);
    });
    session.on('NodeWorker.receivedMessageFromWorker', ({ params }) => {
      let reply: { id?: unknown; result?: { usedSize?: unknown } };
      try {
        reply = JSON.parse(params.message) as typeof reply;
      } catch {
        return;
      }
      const pending = typeof reply.id === 'number' ? this.#pending.get(reply.id) : undefined;
      if (pending === undefined) return;
      this.#pending.delete(reply.id as number);
      clearTimeout(pending.timer);
      const used = reply.result?.usedSize;
      pending.resolve(typeof used === 'number' ? used : undefined);
    });
    // Threads that exist now and every later one attach; none waits for a debugger.
    session.post('NodeWorker.enable', { waitForDebuggerOnStart: false }, () => undefined);
  }

  /** Bytes of V8 heap thread `threadId` uses; undefined when it cannot be read in time. */
  heapUsed(threadId: number): Promise<number | undefined> {
    const sessionId = this.#threads.get(threadId);
    const session = this.#session;
    if (session === undefined || sessionId === undefined) return Promise.resolve(undefined);
    const id = this.#nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        resolve(undefined);
      }, SAMPLE_TIMEOUT_MS);
      timer.unref();
      this.#pending.set(id, { resolve, timer });
      session.post('NodeWorker.sendMessageToWorker', { sessionId, message: JSON.stringify({ id, method: 'Runtime.getHeapUsage' }) }, () => undefined);
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
