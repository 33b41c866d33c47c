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
 *
 * Input edges (`input: 'X'`: the task's action reads X's output as `params.input`)
 * join tasks into chains (`inputChains`) that run as one unit:
 * - Start: a chain is ready when every task in it has its other dependencies done;
 *   its tasks then start together, taking one graph slot each. The last reader's
 *   stream is started first; each producer's stream only when its reader asks for its
 *   first item, so a producer never holds a sandbox slot while its reader is still
 *   queued for one.
 * - Admission: both ends of an edge need a sandbox slot at the same time. Within a
 *   graph, chains are admitted one at a time (the next chain starts only when every
 *   stream of the previous one runs), so two chains cannot each hold half their slots.
 *   What the runner cannot see (a host with one slot, or slots held by other work)
 *   is caught by `admitTimeoutMs`: a producer whose stream stays queued that long
 *   while its reader runs fails with ERR_QUEUE_FULL, and so does the chain, instead
 *   of waiting forever.
 * - Output: X's chunks go to its reader, not to X's output: `output('X')` is
 *   undefined, X takes no sink, and `task('X').chunks` counts the items its reader
 *   took in the last attempt.
 * - Failure: X failing (or being cancelled) fails its reader's input with X's error,
 *   so the reader fails with X's code (unless its plugin catches it). The reader
 *   failing or ending returns its input, which cancels X; a reader that ends `done`
 *   before reading all of X (it wanted no more) leaves X `done`, otherwise X is
 *   cancelled. Cancelling any task of a chain cancels the whole chain.
 * - Retries: an input cannot be replayed, so a chain is retried whole or not at all.
 *   The failure that counts is the first one from the producer end (a reader failing
 *   because its input failed is a consequence); that task's retry policy decides, and
 *   every task of the chain runs again (the last reader's output is deduplicated by
 *   seq, as for any restart).
 */
import { EventEmitter } from 'node:events';
import { randomBytes } from 'node:crypto';
import { assertInteger, fail } from '../../protocol/assert.js';
import { SluiceError, type ErrorCode } from '../../protocol/errors.js';
import type { Chunk } from '../types.js';
import { runPipelineAttempt, runStreamAttempt, type AttemptOutcome, type AttemptPlan, type TaskHost } from './attempt.js';
import { InputPipe } from './pipe.js';
import { parseTaskGraph, edgesOf, inputChains, inputOf, TASK_LIMITS, type GraphSpec, type TaskSpec } from './spec.js';
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
  /**
   * How long a producer's stream may wait for a sandbox slot while its reader holds
   * one, before the chain fails with ERR_QUEUE_FULL (see "Admission" above). Default 10 s.
   */
  admitTimeoutMs?: number;
}

const DEFAULTS = Object.freeze({ concurrency: 16, admitTimeoutMs: 10_000 });
const PRIORITY_ORDER = ['high', 'normal', 'low'] as const;

interface TaskRecord {
  readonly spec: TaskSpec;
  readonly deps: TaskRecord[];
  readonly dependents: TaskRecord[];
  /** The tasks joined to this one by input edges, producer end first (shared by all of them; alone: `[this]`). */
  chain: TaskRecord[];
  /** The task whose output this one reads, and the one reading this one's output. */
  source: TaskRecord | undefined;
  reader: TaskRecord | undefined;
  /** Dependencies outside its chain not done yet. */
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

const RANK = { high: 0, normal: 1, low: 2 } as const;

/** A chain goes to the host at the priority of its most urgent task. */
function chainPriority(chain: readonly TaskRecord[]): (typeof PRIORITY_ORDER)[number] {
  return chain.reduce<(typeof PRIORITY_ORDER)[number]>((p, m) => (RANK[m.spec.priority] < RANK[p] ? m.spec.priority : p), 'low');
}

function info(err: SluiceError): ErrorInfo {
  const out: ErrorInfo = { code: err.code, message: err.message };
  if (err.details !== undefined) out.details = err.details;
  return out;
}

/** How a task of a chain is joined to its neighbours for one attempt. */
interface Wiring {
  /** The pipe this task reads as `params.input`. */
  input?: InputPipe;
  /** The pipe this task's output goes into (its reader's input). */
  output?: InputPipe;
  /** Called once, when the task's stream runs or the attempt ended without running. */
  admitted?: () => void;
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
  readonly #admitTimeoutMs: number;
  /** The chain whose streams are being admitted; no other chain starts until they all run. */
  #admitting: TaskRecord[] | undefined;
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
    const admitTimeoutMs = options.admitTimeoutMs ?? DEFAULTS.admitTimeoutMs;
    assertInteger(admitTimeoutMs, 'options.admitTimeoutMs', 'ERR_INVALID_ARGUMENT', 1);
    this.#admitTimeoutMs = admitTimeoutMs;
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
      const reader = spec.tasks.find((t) => inputOf(t) === id);
      if (reader !== undefined) fail('ERR_INVALID_ARGUMENT', `options.sinks.${id}`, `absent: task \`${id}\`'s output is the input of \`${reader.id}\``, sink);
      if (typeof sink !== 'function') fail('ERR_INVALID_ARGUMENT', `options.sinks.${id}`, 'a function', sink);
    }
    const readers = new Set(spec.tasks.map(inputOf).filter((id) => id !== undefined));
    for (const task of spec.tasks) {
      if (inputOf(task) !== undefined && host.acceptsInput !== true) {
        throw new SluiceError('ERR_TASK_INVALID', `\`tasks.${task.id}.input\`: this host cannot stream one task's output into another yet (StreamOptions.input)`, {
          details: { field: `tasks.${task.id}.input` },
        });
      }
      const sink = Object.prototype.hasOwnProperty.call(sinks, task.id) ? sinks[task.id] : undefined;
      const collects = sink === undefined && !readers.has(task.id) && (task.kind === 'call' || task.output === 'collect');
      const rec: TaskRecord = {
        spec: task,
        deps: [],
        dependents: [],
        chain: [],
        source: undefined,
        reader: undefined,
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
      };
      rec.chain = [rec];
      this.#tasks.set(task.id, rec);
    }
    for (const ids of inputChains(spec.tasks)) {
      const chain = ids.map((id) => this.#tasks.get(id)!);
      if (chain.length > concurrency) {
        throw new SluiceError('ERR_TASK_INVALID', `Input chain ${ids.join(' -> ')} runs ${chain.length} tasks at once, more than the graph's concurrency (${concurrency})`, {
          details: { field: options.concurrency === undefined ? 'concurrency' : 'options.concurrency', chain: ids },
        });
      }
      chain.forEach((m, i) => {
        m.chain = chain;
        m.source = chain[i - 1];
        m.reader = chain[i + 1];
      });
    }
    for (const rec of this.#tasks.values()) {
      for (const dep of edgesOf(rec.spec)) {
        const d = this.#tasks.get(dep)!;
        rec.deps.push(d);
        d.dependents.push(rec);
        if (d.chain !== rec.chain) rec.remaining++;
      }
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
    for (const rec of this.#tasks.values()) if (rec.chain[0] === rec) this.#tryReady(rec);
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
   * Undefined for tasks with a sink or `output: 'discard'`, for a task whose output is
   * another task's input (its reader got it), and before the task is done.
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
    const input = inputOf(spec);
    if (input !== undefined) out.input = input;
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

  /** Queue `rec`'s chain once every task of it has its outside dependencies done; until then its tasks wait. */
  #tryReady(rec: TaskRecord): void {
    const chain = rec.chain;
    if (chain.every((m) => m.remaining === 0 && (m.status === 'pending' || m.status === 'waiting'))) {
      this.#makeReady(chain);
      return;
    }
    for (const m of chain) if (m.status === 'pending') this.#set(m, 'waiting');
  }

  #makeReady(chain: TaskRecord[]): void {
    this.#ready[chainPriority(chain)].push(chain[0]!);
    for (const m of chain) this.#set(m, 'queued');
  }

  #peekReady(): TaskRecord | undefined {
    for (const p of PRIORITY_ORDER) {
      const rec = this.#ready[p][0];
      if (rec !== undefined) return rec;
    }
    return undefined;
  }

  #pump(): void {
    for (;;) {
      const lead = this.#peekReady();
      if (lead === undefined) break;
      const chain = lead.chain;
      // A chain takes a slot per task, all at once; an empty graph runs it whatever its size.
      if (this.#inFlight > 0 && this.#inFlight + chain.length > this.#concurrency) break;
      if (chain.length > 1 && this.#admitting !== undefined) break;
      this.#ready[chainPriority(chain)].shift();
      this.#inFlight += chain.length;
      if (chain.length === 1) void this.#run(lead);
      else void this.#runChain(chain);
    }
    this.#maybeEnd(false);
  }

  /** A task alone: one attempt, then done, retry or fail. */
  async #run(rec: TaskRecord): Promise<void> {
    const outcome = await this.#attempt(rec, {});
    if (!isFinal(rec.status)) {
      if (outcome.status === 'done') this.#succeed(rec, outcome);
      else if (outcome.status === 'cancelled') this.#cancel(rec, outcome.error ?? cancelled('Stream was cancelled'));
      else {
        const error = outcome.error ?? new SluiceError('ERR_SANDBOX_CRASHED', 'Attempt failed without an error');
        if (shouldRetry(error, rec.spec.retry, rec.attempts.length - 1)) this.#retry(rec.chain, rec, error);
        else this.#fail(rec, error);
      }
    }
    this.#pump();
  }

  /** Tasks joined by input edges: one attempt each, wired by pipes, settled together. */
  async #runChain(chain: TaskRecord[]): Promise<void> {
    const pipes = new Map<TaskRecord, InputPipe>(chain.filter((m) => m.source !== undefined).map((m) => [m, new InputPipe()]));
    let unadmitted = chain.length;
    this.#admitting = chain;
    const admitted = (): void => {
      if (--unadmitted > 0 || this.#admitting !== chain) return;
      this.#admitting = undefined;
      this.#pump();
    };
    const outcomes = await Promise.all(
      chain.map((m) => {
        const wiring: Wiring = { admitted };
        const input = pipes.get(m);
        const output = m.reader === undefined ? undefined : pipes.get(m.reader);
        if (input !== undefined) wiring.input = input;
        if (output !== undefined) wiring.output = output;
        return this.#attempt(m, wiring);
      }),
    );
    this.#settleChain(chain, new Map(chain.map((m, i) => [m, outcomes[i]!])));
    this.#pump();
  }

  /**
   * One attempt of a task, its history kept in `rec.attempts`. With wiring, the task
   * reads `input` and/or writes its output to `output` (another task's input).
   */
  async #attempt(rec: TaskRecord, wiring: Wiring): Promise<AttemptOutcome> {
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
    let admitted = false;
    const markAdmitted = (): void => {
      if (admitted) return;
      admitted = true;
      wiring.admitted?.();
    };
    const { input, output } = wiring;
    if (output !== undefined) {
      // Its reader gets a fresh stream each attempt: no dedup, and the count starts over.
      rec.chunks = 0;
      output.onClose(() => controller.abort(cancelled(`Task \`${spec.id}\` stopped: its reader \`${rec.reader?.spec.id}\` stopped reading`, { task: spec.id, reader: rec.reader?.spec.id })));
    }
    const hooks = {
      nextSeq: output === undefined ? () => rec.nextSeq : () => 0,
      deliver:
        output === undefined
          ? (chunk: Chunk<unknown>) => this.#deliver(rec, chunk)
          : async (chunk: Chunk<unknown>) => {
              await output.push(chunk.data);
              if (!output.closed) rec.chunks++;
            },
      stream: (stream: { id: string }) => {
        attempt.streamId = stream.id;
      },
      running: () => {
        markAdmitted();
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
    const plan: AttemptPlan = { signal: controller.signal };
    if (resume !== undefined) plan.resume = resume;
    if (input !== undefined) plan.input = input;
    if (output !== undefined) {
      plan.reader = { pulled: output.pulled, task: rec.reader!.spec.id };
      plan.admitTimeoutMs = this.#admitTimeoutMs;
    }
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
    // The reader sees how its input ended; the producer learns its reader is gone.
    if (output !== undefined) {
      if (outcome.status === 'done') output.end();
      else output.fail(outcome.error ?? cancelled(`Input \`${spec.id}\` ended (${outcome.status})`));
    }
    input?.close();
    markAdmitted();
    return outcome;
  }

  /**
   * Decide a chain after all its attempts ended (tasks already final, cancelled by the
   * user or a cascade, stay so). See "Failure" and "Retries" at the top of the file.
   */
  #settleChain(chain: TaskRecord[], outcomes: ReadonlyMap<TaskRecord, AttemptOutcome>): void {
    if (chain.every((m) => isFinal(m.status))) return;
    const root = chain.find((m) => !isFinal(m.status) && outcomes.get(m)!.status === 'failed');
    const errorOf = (m: TaskRecord): SluiceError => outcomes.get(m)!.error ?? new SluiceError('ERR_SANDBOX_CRASHED', 'Attempt failed without an error');
    if (root !== undefined && shouldRetry(errorOf(root), root.spec.retry, root.attempts.length - 1)) {
      this.#retry(chain, root, errorOf(root));
      return;
    }
    // From the last reader back: a producer cut off by its reader takes its reader's fate.
    const decided = new Map<TaskRecord, { status: 'done' | 'failed' | 'cancelled'; error?: SluiceError }>();
    for (let i = chain.length - 1; i >= 0; i--) {
      const m = chain[i]!;
      if (isFinal(m.status)) {
        decided.set(m, { status: m.status as 'done' | 'failed' | 'cancelled' });
        continue;
      }
      const outcome = outcomes.get(m)!;
      if (outcome.status !== 'cancelled') decided.set(m, outcome.status === 'done' ? { status: 'done' } : { status: 'failed', error: errorOf(m) });
      else if (m.reader === undefined) decided.set(m, { status: 'cancelled', error: outcome.error ?? cancelled('Stream was cancelled') });
      else {
        const fate = decided.get(m.reader)!.status;
        decided.set(
          m,
          fate === 'done'
            ? { status: 'done' }
            : { status: 'cancelled', error: cancelled(`Cancelled because its reader \`${m.reader.spec.id}\` ${fate === 'failed' ? 'failed' : 'was cancelled'}`, { task: m.spec.id, reader: m.reader.spec.id }) },
        );
      }
    }
    // Mark them all first, then cascade, so no cascade overwrites a chain task's own fate.
    const failed: [TaskRecord, SluiceError][] = [];
    const stopped: TaskRecord[] = [];
    for (const m of chain) {
      if (isFinal(m.status)) continue;
      const d = decided.get(m)!;
      if (d.status === 'done') this.#succeed(m, outcomes.get(m)!);
      else {
        this.#finish(m, d.status, d.error!);
        if (d.status === 'failed') failed.push([m, d.error!]);
        else stopped.push(m);
      }
    }
    for (const [m, error] of failed) this.#failDependents(m, error);
    for (const m of stopped) this.#cancelAround(m);
    if (failed.length > 0) this.#failFastAfter(failed[0]![0]);
    this.#maybeEnd(false);
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
      if (d.chain === rec.chain) continue; // started together; not counted
      d.remaining--;
      if (d.remaining === 0 && d.status === 'waiting') this.#tryReady(d);
    }
  }

  /** Wait out the backoff of `root`'s policy, then queue the whole chain (alone: just the task) again. */
  #retry(chain: TaskRecord[], root: TaskRecord, error: SluiceError): void {
    const delay = backoffDelay(root.spec.retry, root.attempts.length, this.#random);
    const controller = new AbortController();
    const retryAt = now() + delay;
    for (const m of chain) {
      m.abort = controller;
      m.retryAt = retryAt;
    }
    for (const m of chain) this.#set(m, 'waiting', m === root ? error : undefined);
    sleep(delay, controller.signal).then(
      () => {
        for (const m of chain) {
          m.retryAt = undefined;
          if (m.abort === controller) m.abort = undefined;
        }
        if (chain.some((m) => isFinal(m.status))) return;
        this.#makeReady(chain);
        this.#pump();
      },
      () => {
        // Aborted: a task was cancelled, and #cancel did the bookkeeping for the chain.
        for (const m of chain) m.retryAt = undefined;
      },
    );
  }

  /** Fail `rec` for good, and its dependents (transitively) with ERR_DEPENDENCY_FAILED. */
  #fail(rec: TaskRecord, error: SluiceError): void {
    this.#finish(rec, 'failed', error);
    this.#failDependents(rec, error);
    this.#failFastAfter(rec);
  }

  #failDependents(rec: TaskRecord, error: SluiceError): void {
    const root = rec.spec.id;
    const rootCode: ErrorCode = error.code;
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
  }

  #failFastAfter(rec: TaskRecord): void {
    if (!this.#failFast) return;
    const root = rec.spec.id;
    for (const other of this.#tasks.values()) {
      if (!isFinal(other.status)) this.#cancel(other, cancelled(`Cancelled because task \`${root}\` failed (failFast)`, { task: other.spec.id, failed: root }));
    }
  }

  /** Cancel `rec`, its dependents (transitively) and, through input edges, the tasks it reads from. */
  #cancel(rec: TaskRecord, error: SluiceError): boolean {
    if (isFinal(rec.status)) return false;
    this.#finish(rec, 'cancelled', error);
    this.#cancelAround(rec);
    this.#maybeEnd(false);
    return true;
  }

  #cancelAround(rec: TaskRecord): void {
    const queue: TaskRecord[] = [rec];
    for (let i = 0; i < queue.length; i++) {
      const parent = queue[i]!;
      for (const d of parent.dependents) {
        if (isFinal(d.status)) continue;
        this.#finish(d, 'cancelled', cancelled(`Cancelled because dependency \`${parent.spec.id}\` was cancelled`, { task: d.spec.id, dependency: parent.spec.id }));
        queue.push(d);
      }
      // Its input has nobody to read it any more (the host returns it; this says so at once).
      const source = parent.source;
      if (source !== undefined && !isFinal(source.status)) {
        this.#finish(source, 'cancelled', cancelled(`Cancelled because its reader \`${parent.spec.id}\` was cancelled`, { task: source.spec.id, reader: parent.spec.id }));
        queue.push(source);
      }
    }
  }

  /** Mark a task final: take its chain out of the ready queue, stop its attempt or backoff. */
  #finish(rec: TaskRecord, status: 'failed' | 'cancelled', error: SluiceError): void {
    const queue = this.#ready[chainPriority(rec.chain)];
    const i = queue.indexOf(rec.chain[0]!);
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
