/**
 * `TaskGraph`: runs a DAG of tasks (unary calls, streams, pipelines) on a host.
 *
 * Ordering is the graph's, admission is the host's. A task becomes ready when every
 * dependency is done; ready tasks go to the host highest priority first (then in the
 * order they became ready), at most `concurrency` of this graph's tasks in flight. The
 * host's scheduler then decides when each stream actually runs (per-sandbox slots,
 * memory budget, priority, demanded first), so nothing here duplicates it: a task is
 * `queued` until its stream reports `running`.
 *
 * Failure flows down the DAG: a task that fails for good fails its dependents with
 * ERR_DEPENDENCY_FAILED naming the dependency; a cancelled task cancels its dependents.
 * The graph ends when every task is final *and* every stream it started has exited,
 * so no plugin of a finished graph is still running.
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { assertInteger, fail } from '../../protocol/assert.js';
import { SluiceError, type ErrorCode } from '../../protocol/errors.js';
import type { Chunk } from '../types.js';
import { runPipelineAttempt, runStreamAttempt, type AttemptOutcome, type TaskHost } from './attempt.js';
import { parseTaskGraph, edgesOf, TASK_LIMITS, type GraphSpec, type TaskSpec } from './spec.js';
import { backoffDelay, shouldRetry, sleep } from './retry.js';
import {
  TASK_STATUSES,
  isFinal,
  now,
  type AttemptInfo,
  type ErrorInfo,
  type GraphInfo,
  type GraphStatus,
  type TaskGraphEvents,
  type TaskInfo,
  type TaskStatus,
} from './state.js';

/**
 * Takes a stream or pipeline task's chunks instead of collecting them; awaited per
 * chunk, so a slow sink slows the plugin down (credit backpressure), never a buffer.
 */
export type TaskSink = (chunk: Chunk<unknown>, task: string) => unknown;

export interface TaskGraphOptions {
  /** Tasks of this graph in flight (queued in the host or running) at once. Default: the spec's, else 16. */
  concurrency?: number;
  /** Sinks by task id, for stream and pipeline tasks. */
  sinks?: Readonly<Record<string, TaskSink>>;
  /** Cancel the rest of the graph as soon as a task fails. Default: the spec's, else false. */
  failFast?: boolean;
  /** Aborting cancels the graph. */
  signal?: AbortSignal;
  /** Random source for backoff jitter, [0, 1). */
  random?: () => number;
}

const DEFAULTS = Object.freeze({ concurrency: 16 });
const PRIORITY_ORDER = ['high', 'normal', 'low'] as const;

interface TaskRecord {
  readonly spec: TaskSpec;
  readonly deps: TaskRecord[];
  readonly dependents: TaskRecord[];
  /** Dependencies not done yet. */
  remaining: number;
  status: TaskStatus;
  readonly attempts: AttemptInfo[];
  error: SluiceError | undefined;
  /** Output delivered so far: chunks (deduplicated by seq) and the first seq still wanted. */
  chunks: number;
  nextSeq: number;
  collected: unknown[] | undefined;
  result: unknown;
  readonly sink: TaskSink | undefined;
  /** The last checkpoint seen, for resuming a durable stream. */
  checkpoint: { streamId: string; seq: number } | undefined;
  /** Aborts the running attempt or the backoff wait. */
  abort: AbortController | undefined;
  retryAt: number | undefined;
}

function info(err: SluiceError): ErrorInfo {
  const out: ErrorInfo = { code: err.code, message: err.message };
  if (err.details !== undefined) out.details = err.details;
  return out;
}

function cancelled(message: string, details?: Record<string, unknown>): SluiceError {
  return new SluiceError('ERR_CANCELLED', message, details === undefined ? {} : { details });
}

/**
 * A graph of tasks run on a host. Construction validates everything (shape, ids, unknown
 * dependencies, cycles) and throws a coded error before anything runs; `start()` runs it.
 *
 * @example
 * const graph = new TaskGraph(host, {
 *   tasks: [
 *     { id: 'fetch', kind: 'stream', plugin: 'records', action: 'fetch', retry: { max: 3 } },
 *     { id: 'report', kind: 'call', plugin: 'records', action: 'report', dependsOn: ['fetch'], priority: 'high' },
 *   ],
 * });
 * graph.on('status', (e) => console.log(e.task, e.status));
 * const info = await graph.start();
 * console.log(info.status, graph.output('report'));
 */
export class TaskGraph extends EventEmitter implements AsyncDisposable {
  readonly id: string;
  readonly name: string;
  readonly #host: TaskHost;
  readonly #spec: GraphSpec;
  readonly #tasks = new Map<string, TaskRecord>();
  readonly #ready: Record<(typeof PRIORITY_ORDER)[number], TaskRecord[]> = { high: [], normal: [], low: [] };
  readonly #concurrency: number;
  readonly #failFast: boolean;
  readonly #random: () => number;
  readonly #signal: AbortSignal | undefined;
  readonly #createdAt = now();
  #startedAt: number | undefined;
  #endedAt: number | undefined;
  /** Attempts whose stream has not exited yet. */
  #inFlight = 0;
  #status: GraphStatus = 'pending';
  #done: Promise<GraphInfo> | undefined;
  #resolve!: (info: GraphInfo) => void;

  constructor(host: TaskHost, definition: unknown, options: TaskGraphOptions = {}) {
    super();
    if (host === null || typeof host !== 'object' || typeof host.stream !== 'function') fail('ERR_INVALID_ARGUMENT', 'host', 'a Sluice host (an object with `stream`)', host);
    if (options === null || typeof options !== 'object') fail('ERR_INVALID_ARGUMENT', 'options', 'an object', options);
    const spec = parseTaskGraph(definition);
    const concurrency = options.concurrency ?? spec.concurrency ?? DEFAULTS.concurrency;
    assertInteger(concurrency, 'options.concurrency', 'ERR_INVALID_ARGUMENT', 1, TASK_LIMITS.maxConcurrency);
    if (options.random !== undefined && typeof options.random !== 'function') fail('ERR_INVALID_ARGUMENT', 'options.random', 'a function', options.random);
    this.#host = host;
    this.#spec = spec;
    this.#concurrency = concurrency;
    this.#failFast = options.failFast ?? spec.failFast;
    this.#random = options.random ?? Math.random;
    this.#signal = options.signal;
    this.name = spec.name ?? 'graph';
    this.id = `${this.name}-${randomBytes(4).toString('hex')}`;

    const sinks = options.sinks ?? {};
    for (const [id, sink] of Object.entries(sinks)) {
      const task = spec.tasks.find((t) => t.id === id);
      if (task === undefined) throw new SluiceError('ERR_TASK_NOT_FOUND', `options.sinks names task \`${id}\`, which is not in the graph`, { details: { field: `options.sinks.${id}` } });
      if (task.kind === 'call') fail('ERR_INVALID_ARGUMENT', `options.sinks.${id}`, 'absent: a call task has a result, not a stream', sink);
      if (typeof sink !== 'function') fail('ERR_INVALID_ARGUMENT', `options.sinks.${id}`, 'a function', sink);
    }
    for (const task of spec.tasks) {
      if (task.kind === 'stream' && task.input !== undefined && host.acceptsInput !== true) {
        throw new SluiceError('ERR_TASK_INVALID', `\`tasks.${task.id}.input\`: this host cannot stream one task's output into another yet (StreamOptions.input)`, {
          details: { field: `tasks.${task.id}.input` },
        });
      }
      const sink = Object.prototype.hasOwnProperty.call(sinks, task.id) ? sinks[task.id] : undefined;
      const collects = sink === undefined && (task.kind === 'call' || task.output === 'collect');
      this.#tasks.set(task.id, {
        spec: task,
        deps: [],
        dependents: [],
        remaining: 0,
        status: 'pending',
        attempts: [],
        error: undefined,
        chunks: 0,
        nextSeq: 0,
        collected: collects ? [] : undefined,
        result: undefined,
        sink,
        checkpoint: undefined,
        abort: undefined,
        retryAt: undefined,
      });
    }
    for (const rec of this.#tasks.values()) {
      for (const dep of edgesOf(rec.spec)) {
        const d = this.#tasks.get(dep)!;
        rec.deps.push(d);
        d.dependents.push(rec);
      }
      rec.remaining = rec.deps.length;
    }
  }

  /** Run the graph (idempotent); resolves when it has ended, never rejects. */
  start(): Promise<GraphInfo> {
    if (this.#done !== undefined) return this.#done;
    this.#done = new Promise((resolve) => (this.#resolve = resolve));
    this.#startedAt = now();
    this.#status = 'running';
    const signal = this.#signal;
    if (signal !== undefined) {
      const onAbort = (): void => void this.cancel(undefined, 'graph aborted');
      if (signal.aborted) queueMicrotask(onAbort);
      else {
        signal.addEventListener('abort', onAbort, { once: true });
        void this.#done.then(() => signal.removeEventListener('abort', onAbort));
      }
    }
    for (const rec of this.#tasks.values()) {
      if (rec.remaining === 0) this.#makeReady(rec);
      else this.#set(rec, 'waiting');
    }
    this.#pump();
    return this.#done;
  }

  /** Settles when the graph has ended (after `start()`). */
  get done(): Promise<GraphInfo> | undefined {
    return this.#done;
  }

  /** A snapshot of the graph: its status, counts and every task. */
  status(): GraphInfo {
    const counts = Object.fromEntries(TASK_STATUSES.map((s) => [s, 0])) as Record<TaskStatus, number>;
    const tasks: TaskInfo[] = [];
    for (const rec of this.#tasks.values()) {
      counts[rec.status]++;
      tasks.push(this.#info(rec));
    }
    const out: GraphInfo = { id: this.id, name: this.name, status: this.#status, createdAt: this.#createdAt, pid: process.pid, counts, tasks };
    if (this.#startedAt !== undefined) out.startedAt = this.#startedAt;
    if (this.#endedAt !== undefined) out.endedAt = this.#endedAt;
    return out;
  }

  /** One task's status and history; ERR_TASK_NOT_FOUND for an unknown id. */
  task(id: string): TaskInfo {
    return this.#info(this.#get(id));
  }

  /**
   * A task's output once done: a call's result (a unary action's value, a streaming
   * action's chunk data as an array), or a collecting stream/pipeline task's chunk data.
   * Undefined for tasks with a sink or `output: 'discard'`, and before the task is done.
   */
  output(id: string): unknown {
    const rec = this.#get(id);
    if (rec.status !== 'done') return undefined;
    return rec.spec.kind === 'call' ? rec.result : rec.collected;
  }

  /**
   * Cancel a task (its running stream is cancelled, its dependents are marked
   * cancelled), or with no id every task of the graph. Returns whether anything that
   * was not final got cancelled.
   */
  cancel(id?: string, reason = 'cancelled'): boolean {
    if (id !== undefined) return this.#cancel(this.#get(id), cancelled(`Task \`${id}\` cancelled: ${reason}`, { task: id }));
    let any = false;
    for (const rec of this.#tasks.values()) {
      if (!isFinal(rec.status)) any = this.#cancel(rec, cancelled(`Graph cancelled: ${reason}`)) || any;
    }
    if (this.#done === undefined) {
      // Never started: it ends now, with nothing to wait for.
      this.#done = new Promise((resolve) => (this.#resolve = resolve));
      this.#maybeEnd(true);
    }
    return any;
  }

  /** Cancel whatever is not final and wait for every stream to exit. Idempotent. */
  async close(): Promise<GraphInfo> {
    this.cancel(undefined, 'graph closed');
    return this.#done!;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close().then(() => undefined);
  }

  override on<E extends keyof TaskGraphEvents>(event: E, listener: (...args: TaskGraphEvents[E]) => void): this {
    return super.on(event, listener as (...args: unknown[]) => void);
  }

  override off<E extends keyof TaskGraphEvents>(event: E, listener: (...args: TaskGraphEvents[E]) => void): this {
    return super.off(event, listener as (...args: unknown[]) => void);
  }

  // ---- engine ----------------------------------------------------------------------------

  #get(id: string): TaskRecord {
    const rec = typeof id === 'string' ? this.#tasks.get(id) : undefined;
    if (rec === undefined) throw new SluiceError('ERR_TASK_NOT_FOUND', `Graph \`${this.id}\` has no task \`${String(id)}\``, { details: { graph: this.id, task: id } });
    return rec;
  }

  #info(rec: TaskRecord): TaskInfo {
    const spec = rec.spec;
    const out: TaskInfo = {
      id: spec.id,
      kind: spec.kind,
      priority: spec.priority,
      dependsOn: [...spec.dependsOn],
      status: rec.status,
      attempts: rec.attempts.map((a) => ({ ...a })),
      chunks: rec.chunks,
      bytes: rec.attempts.reduce((sum, a) => sum + a.bytes, 0),
    };
    if (spec.kind !== 'pipeline') {
      out.plugin = spec.plugin;
      out.action = spec.action;
    }
    if (spec.kind === 'stream' && spec.input !== undefined) out.input = spec.input;
    if (rec.error !== undefined) out.error = info(rec.error);
    if (rec.retryAt !== undefined) out.retryAt = rec.retryAt;
    return out;
  }

  #set(rec: TaskRecord, status: TaskStatus, error?: SluiceError): void {
    const previous = rec.status;
    if (previous === status) return;
    rec.status = status;
    if (error !== undefined) rec.error = error;
    const event: TaskGraphEvents['status'][0] = { graph: this.id, task: rec.spec.id, status, previous, attempt: rec.attempts.length, at: now() };
    if (error !== undefined) event.error = info(error);
    if (status === 'waiting' && rec.retryAt !== undefined) event.retryAt = rec.retryAt;
    this.emit('status', event);
  }

  #makeReady(rec: TaskRecord): void {
    this.#ready[rec.spec.priority].push(rec);
    this.#set(rec, 'queued');
  }

  #takeReady(): TaskRecord | undefined {
    for (const p of PRIORITY_ORDER) {
      const rec = this.#ready[p].shift();
      if (rec !== undefined) return rec;
    }
    return undefined;
  }

  #pump(): void {
    while (this.#inFlight < this.#concurrency) {
      const rec = this.#takeReady();
      if (rec === undefined) break;
      this.#inFlight++;
      void this.#run(rec);
    }
    this.#maybeEnd(false);
  }

  async #run(rec: TaskRecord): Promise<void> {
    const spec = rec.spec;
    const n = rec.attempts.length + 1;
    const attempt: AttemptInfo = { attempt: n, queuedAt: now(), status: 'queued', chunks: 0, bytes: 0 };
    const controller = new AbortController();
    rec.abort = controller;
    let resume: { streamId: string; seq: number } | undefined;
    if (spec.kind === 'stream' && spec.durability !== 'none' && this.#host.resume !== undefined && rec.checkpoint !== undefined) {
      resume = rec.checkpoint;
      attempt.resumedFrom = resume.seq;
    }
    rec.attempts.push(attempt);
    const hooks = {
      nextSeq: () => rec.nextSeq,
      deliver: (chunk: Chunk<unknown>) => this.#deliver(rec, chunk),
      stream: (stream: { id: string }) => {
        attempt.streamId = stream.id;
      },
      running: () => {
        if (attempt.status !== 'queued') return;
        attempt.status = 'running';
        attempt.startedAt = now();
        if (!isFinal(rec.status)) this.#set(rec, 'running');
      },
      checkpoint: (streamId: string, seq: number) => {
        rec.checkpoint = { streamId, seq };
        attempt.checkpoint = seq;
      },
      resumeFailed: (error: SluiceError) => {
        delete attempt.resumedFrom;
        attempt.resumeError = info(error);
        rec.checkpoint = undefined;
      },
    };
    const plan = resume === undefined ? { signal: controller.signal } : { signal: controller.signal, resume };
    let outcome: AttemptOutcome;
    try {
      outcome = spec.kind === 'pipeline' ? await runPipelineAttempt(this.#host, spec, plan, hooks) : await runStreamAttempt(this.#host, spec, plan, hooks);
    } catch (err) {
      // The attempt runners never reject; this is a bug, reported as the task's failure.
      outcome = { status: 'failed', error: new SluiceError('ERR_PLUGIN_THREW', `Task runner failed: ${(err as Error)?.message}`, { cause: err }), chunks: 0, bytes: 0 };
    }
    this.#inFlight--;
    if (rec.abort === controller) rec.abort = undefined;
    attempt.endedAt = now();
    attempt.status = outcome.status;
    attempt.chunks = outcome.chunks;
    attempt.bytes = outcome.bytes;
    if (outcome.error !== undefined) attempt.error = info(outcome.error);

    if (!isFinal(rec.status)) {
      if (outcome.status === 'done') this.#succeed(rec, outcome);
      else if (outcome.status === 'cancelled') this.#cancel(rec, outcome.error ?? cancelled('Stream was cancelled'));
      else {
        const error = outcome.error ?? new SluiceError('ERR_SANDBOX_CRASHED', 'Attempt failed without an error');
        if (shouldRetry(error, spec.retry, n - 1)) this.#retry(rec, n, error);
        else this.#fail(rec, error);
      }
    }
    this.#pump();
  }

  async #deliver(rec: TaskRecord, chunk: Chunk<unknown>): Promise<void> {
    if (rec.collected !== undefined) {
      // The host bounds stream tasks already; this also bounds pipelines (no host limit applies).
      const max = rec.spec.collect.maxChunks;
      if (rec.collected.length >= max) {
        throw new SluiceError('ERR_LIMIT_CHUNKS', `Task \`${rec.spec.id}\` collected more than collect.maxChunks (${max}) chunks`, { details: { limit: 'maxChunks', max } });
      }
      rec.collected.push(chunk.data);
    } else if (rec.sink !== undefined) {
      await rec.sink(chunk, rec.spec.id);
    }
    rec.nextSeq = chunk.seq + 1;
    rec.chunks++;
  }

  #succeed(rec: TaskRecord, outcome: AttemptOutcome): void {
    if (rec.spec.kind === 'call') rec.result = outcome.kind === 'unary' ? rec.collected?.[0] : rec.collected;
    this.#set(rec, 'done');
    for (const d of rec.dependents) {
      d.remaining--;
      if (d.remaining === 0 && d.status === 'waiting') this.#makeReady(d);
    }
  }

  #retry(rec: TaskRecord, attemptNo: number, error: SluiceError): void {
    const delay = backoffDelay(rec.spec.retry, attemptNo, this.#random);
    const controller = new AbortController();
    rec.abort = controller;
    rec.retryAt = now() + delay;
    this.#set(rec, 'waiting', error);
    sleep(delay, controller.signal).then(
      () => {
        rec.retryAt = undefined;
        if (rec.abort === controller) rec.abort = undefined;
        if (isFinal(rec.status)) return;
        this.#makeReady(rec);
        this.#pump();
      },
      () => {
        // Aborted: the task was cancelled, and #cancel did the bookkeeping.
        rec.retryAt = undefined;
      },
    );
  }

  /** Fail `rec` for good, and its dependents (transitively) with ERR_DEPENDENCY_FAILED. */
  #fail(rec: TaskRecord, error: SluiceError): void {
    const root = rec.spec.id;
    const rootCode: ErrorCode = error.code;
    this.#finish(rec, 'failed', error);
    const queue: TaskRecord[] = [rec];
    for (let i = 0; i < queue.length; i++) {
      const parent = queue[i]!;
      for (const d of parent.dependents) {
        if (isFinal(d.status)) continue;
        const depError = new SluiceError('ERR_DEPENDENCY_FAILED', `Dependency \`${parent.spec.id}\` of task \`${d.spec.id}\` failed${parent === rec ? '' : ` (because \`${root}\` failed)`}: ${rootCode}`, {
          details: { task: d.spec.id, dependency: parent.spec.id, root, code: rootCode },
        });
        this.#finish(d, 'failed', depError);
        queue.push(d);
      }
    }
    if (this.#failFast) {
      for (const other of this.#tasks.values()) {
        if (!isFinal(other.status)) this.#cancel(other, cancelled(`Cancelled because task \`${root}\` failed (failFast)`, { task: other.spec.id, failed: root }));
      }
    }
  }

  /** Cancel `rec` and its dependents (transitively). */
  #cancel(rec: TaskRecord, error: SluiceError): boolean {
    if (isFinal(rec.status)) return false;
    this.#finish(rec, 'cancelled', error);
    const queue: TaskRecord[] = [rec];
    for (let i = 0; i < queue.length; i++) {
      const parent = queue[i]!;
      for (const d of parent.dependents) {
        if (isFinal(d.status)) continue;
        this.#finish(d, 'cancelled', cancelled(`Cancelled because dependency \`${parent.spec.id}\` was cancelled`, { task: d.spec.id, dependency: parent.spec.id }));
        queue.push(d);
      }
    }
    this.#maybeEnd(false);
    return true;
  }

  /** Mark a task final: take it out of the ready queue, stop its attempt or backoff. */
  #finish(rec: TaskRecord, status: 'failed' | 'cancelled', error: SluiceError): void {
    const queue = this.#ready[rec.spec.priority];
    const i = queue.indexOf(rec);
    if (i >= 0) queue.splice(i, 1);
    this.#set(rec, status, error);
    rec.abort?.abort(error);
  }

  #maybeEnd(force: boolean): void {
    if (this.#endedAt !== undefined || (this.#status !== 'running' && !force) || this.#inFlight > 0) return;
    let failed = false;
    let wasCancelled = false;
    for (const rec of this.#tasks.values()) {
      if (!isFinal(rec.status)) return;
      failed ||= rec.status === 'failed';
      wasCancelled ||= rec.status === 'cancelled';
    }
    this.#endedAt = now();
    this.#status = failed ? 'failed' : wasCancelled ? 'cancelled' : 'done';
    const snapshot = this.status();
    this.emit('end', snapshot);
    this.#resolve(snapshot);
  }
}
