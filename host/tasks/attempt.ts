/**
 * One attempt at a task: start its source (a host stream, a resumed durable stream, or
 * a pipeline), hand every new chunk to the output, and report how it ended. Never
 * rejects: every failure is an outcome with a coded error.
 *
 * Chunks below `nextSeq()` are skipped: they were delivered by an earlier attempt.
 * A resumed stream restarts at its checkpoint, which may be before the last chunk
 * delivered; a restarted one restarts at 0. Either way the output sees each seq once
 * (for a restart this assumes the action is deterministic, as any blind retry does).
 */
import { SluiceError, isSluiceError, toWireError } from '../../protocol/errors.js';
import type { ActionKind } from '../../protocol/messages.js';
import { buildPipeline } from '../operators/pipeline.js';
import type { Chunk, SluiceStream, StreamOptions, StreamStatus } from '../types.js';
import type { PipelineTaskSpec, TaskSpec } from './spec.js';
import type { FinalStatus } from './state.js';

/**
 * The part of `Sluice` a task graph uses; a test double can stand in for it.
 *
 * @example
 * const graph = new TaskGraph(host, spec); // host: a Sluice
 */
export interface TaskHost {
  stream(plugin: string, action: string, params?: unknown, options?: StreamOptions): SluiceStream;
  /**
   * Resume a durable stream (`durability: 'checkpoint'` or `'log'`) from its last
   * checkpoint; the plugin runs again with `ctx.resume`. When present, a retried
   * stream task that saw a checkpoint resumes instead of restarting.
   */
  resume?(streamId: string, options?: StreamOptions): SluiceStream | Promise<SluiceStream>;
  /**
   * True once `StreamOptions.input` (an AsyncIterable the action consumes) is
   * supported; until then a task with `input` is refused at submit.
   */
  readonly acceptsInput?: boolean;
}

export interface AttemptHooks {
  /** The first seq not yet delivered. */
  nextSeq(): number;
  /** Take a new chunk; a throw (or rejection) fails the attempt with ERR_SINK_FAILED. */
  deliver(chunk: Chunk<unknown>): void | Promise<void>;
  /** The host gave the attempt a stream. */
  stream(stream: SluiceStream): void;
  /** The host admitted the stream into a sandbox. */
  running(): void;
  /** The plugin stored a checkpoint. */
  checkpoint(streamId: string, seq: number): void;
  /** The host could not resume; the attempt restarts from scratch instead. */
  resumeFailed(error: SluiceError): void;
}

/** Resume failures after which a fresh start is the right retry. */
const RESTART_INSTEAD: ReadonlySet<string> = new Set(['ERR_RESUME_FAILED', 'ERR_STREAM_NOT_FOUND']);

export interface AttemptPlan {
  /** Resume this durable stream instead of starting afresh. */
  resume?: { streamId: string; seq: number };
  /** Aborting cancels the attempt's stream (or pipeline). */
  signal: AbortSignal;
  /** The task's input (another task's output), handed to the host as `StreamOptions.input`. */
  input?: AsyncIterable<unknown>;
  /**
   * The task's output is another task's input: start only once that reader asks for
   * its first item (false: it stopped before, so the attempt ends cancelled without
   * starting), and keep no output in memory (no collect bounds).
   */
  reader?: { pulled: Promise<boolean>; task: string };
  /**
   * How long each stream this attempt opens may stay queued for a sandbox slot
   * (ERR_QUEUE_FULL after): set for producers, whose reader already holds a slot.
   */
  admitTimeoutMs?: number;
}

export interface AttemptOutcome {
  status: FinalStatus;
  error?: SluiceError;
  chunks: number;
  bytes: number;
  /** The action kind, as the sandbox reported it. */
  kind?: ActionKind;
}

export function asSluiceError(err: unknown, fallback: 'ERR_PLUGIN_THREW' | 'ERR_SINK_FAILED' = 'ERR_PLUGIN_THREW'): SluiceError {
  if (isSluiceError(err)) return err;
  const wire = toWireError(err, false, fallback);
  return new SluiceError(wire.code, wire.message, { cause: err });
}

function reasonOf(signal: AbortSignal): SluiceError {
  return isSluiceError(signal.reason) ? signal.reason : new SluiceError('ERR_CANCELLED', 'Task cancelled');
}

class SinkError {
  constructor(readonly error: SluiceError) {}
}

async function deliver(hooks: AttemptHooks, chunk: Chunk<unknown>): Promise<void> {
  try {
    await hooks.deliver(chunk);
  } catch (err) {
    throw new SinkError(isSluiceError(err) ? err : new SluiceError('ERR_SINK_FAILED', `Output sink threw: ${toWireError(err, false).message}`, { cause: err }));
  }
}

/**
 * Stream options for a task: its priority, sandbox, limits and durability. `piped`: its
 * output goes to another task's input, not to memory, so no collect bounds apply.
 */
export function streamOptions(spec: TaskSpec, extra: Partial<StreamOptions> = {}, piped = false): StreamOptions {
  const options: StreamOptions = { priority: spec.priority, ...extra };
  if (spec.sandbox !== undefined) options.sandbox = spec.sandbox;
  const limits = { ...spec.limits };
  // Collected output lives in memory: the host enforces the bound and stops the producer.
  if (!piped && (spec.kind === 'call' || (spec.kind === 'stream' && spec.output === 'collect'))) {
    limits.maxChunks = limits.maxChunks ? Math.min(limits.maxChunks, spec.collect.maxChunks) : spec.collect.maxChunks;
    limits.maxBytes = limits.maxBytes ? Math.min(limits.maxBytes, spec.collect.maxBytes) : spec.collect.maxBytes;
  }
  if (Object.keys(limits).length > 0) options.limits = limits;
  if (spec.kind === 'stream' && spec.durability !== 'none') options.durability = spec.durability;
  return options;
}

/** Run one attempt of a call or stream task against the host. */
export async function runStreamAttempt(host: TaskHost, spec: Exclude<TaskSpec, PipelineTaskSpec>, plan: AttemptPlan, hooks: AttemptHooks): Promise<AttemptOutcome> {
  const { signal } = plan;
  let stream: SluiceStream;
  try {
    if (!(await readerPulled(plan))) return readerGone(plan);
    signal.throwIfAborted();
    let resumed: SluiceStream | undefined;
    if (plan.resume !== undefined && host.resume !== undefined) {
      try {
        resumed = await host.resume(plan.resume.streamId, streamOptions(spec));
      } catch (err) {
        // The host cannot resume it (it gave up after its own retries and recorded the
        // stream as ended, or the record is gone): restart, deduplicating by seq.
        if (!isSluiceError(err) || !RESTART_INSTEAD.has(err.code)) throw err;
        hooks.resumeFailed(err);
      }
    }
    signal.throwIfAborted();
    const extra: Partial<StreamOptions> = plan.input === undefined ? {} : { input: plan.input };
    stream = resumed ?? host.stream(spec.plugin, spec.action, spec.params, streamOptions(spec, extra, plan.reader !== undefined));
  } catch (err) {
    const error = signal.aborted ? reasonOf(signal) : asSluiceError(err, 'ERR_PLUGIN_THREW');
    return { status: error.code === 'ERR_CANCELLED' ? 'cancelled' : 'failed', error, chunks: 0, bytes: 0 };
  }
  hooks.stream(stream);
  const onStatus = (status: StreamStatus): void => {
    if (status === 'running') hooks.running();
  };
  const onCheckpoint = (cp: { seq: number }): void => hooks.checkpoint(stream.id, cp.seq);
  const onAbort = (): void => void stream.cancel(reasonOf(signal).message);
  stream.on('status', onStatus);
  stream.on('checkpoint', onCheckpoint);
  signal.addEventListener('abort', onAbort, { once: true });
  if (stream.status === 'running') hooks.running();
  if (signal.aborted) onAbort();
  let stalled: SluiceError | undefined;
  const unwatch = watchAdmission(stream, spec.id, plan.admitTimeoutMs, (error) => {
    stalled = error;
    void stream.cancel(error.message);
  });
  let sinkError: SluiceError | undefined;
  try {
    for await (const chunk of stream) {
      if (chunk.seq < hooks.nextSeq()) continue;
      await deliver(hooks, chunk);
    }
  } catch (err) {
    // The stream's own error is in its result; only the sink's is news here.
    if (err instanceof SinkError) sinkError = err.error;
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
  const result = await stream.result;
  unwatch();
  stream.off('status', onStatus);
  stream.off('checkpoint', onCheckpoint);
  const outcome: AttemptOutcome = { status: result.status, chunks: result.chunks, bytes: result.bytes };
  if (result.kind !== undefined) outcome.kind = result.kind;
  if (sinkError !== undefined) {
    outcome.status = 'failed';
    outcome.error = sinkError;
  } else if (stalled !== undefined && result.status !== 'done') {
    outcome.status = 'failed';
    outcome.error = stalled;
  } else if (result.error !== undefined) outcome.error = result.error;
  return outcome;
}

/**
 * Run one attempt of a pipeline task. Items get seqs by position, so a retry (which
 * restarts the pipeline) skips the ones already delivered. Bytes are those its plugin
 * streams produced.
 */
export async function runPipelineAttempt(host: TaskHost, spec: PipelineTaskSpec, plan: AttemptPlan, hooks: AttemptHooks): Promise<AttemptOutcome> {
  let seq = 0;
  // Returning the pipeline cancels its plugin streams without waiting for them to exit;
  // the attempt does wait, so no stream outlives the task.
  const opened: SluiceStream[] = [];
  const unwatch: (() => void)[] = [];
  const stall = new AbortController();
  let stalled: SluiceError | undefined;
  const signal = AbortSignal.any([plan.signal, stall.signal]);
  try {
    if (!(await readerPulled(plan))) return readerGone(plan);
    signal.throwIfAborted();
    const out = buildPipeline(
      spec.pipeline,
      {
        stream: (plugin, action, params, input) => {
          const stream = host.stream(plugin, action, params, streamOptions(spec, input === undefined ? {} : ({ input } as Partial<StreamOptions>), plan.reader !== undefined));
          opened.push(stream);
          unwatch.push(
            watchAdmission(stream, spec.id, plan.admitTimeoutMs, (error) => {
              stalled ??= error;
              stall.abort(error);
            }),
          );
          return stream;
        },
      },
      { signal },
    );
    hooks.running();
    for await (const data of out) {
      if (seq >= hooks.nextSeq()) await deliver(hooks, { seq, data });
      seq++;
    }
    return { status: 'done', chunks: seq, bytes: await exited(opened) };
  } catch (err) {
    for (const stop of unwatch) stop();
    const bytes = await exited(opened);
    if (stalled !== undefined && !plan.signal.aborted) return { status: 'failed', error: stalled, chunks: seq, bytes };
    if (signal.aborted) return { status: 'cancelled', error: reasonOf(plan.signal), chunks: seq, bytes };
    const error = err instanceof SinkError ? err.error : asSluiceError(err);
    return { status: error.code === 'ERR_CANCELLED' ? 'cancelled' : 'failed', error, chunks: seq, bytes };
  }
}

/** For a producer: whether its reader asked for input (false: it stopped first); cut short by the signal. */
async function readerPulled(plan: AttemptPlan): Promise<boolean> {
  if (plan.reader === undefined) return true;
  const { signal } = plan;
  signal.throwIfAborted();
  let onAbort!: () => void;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener('abort', onAbort, { once: true });
  });
  try {
    return await Promise.race([plan.reader.pulled, aborted]);
  } finally {
    signal.removeEventListener('abort', onAbort);
  }
}

function readerGone(plan: AttemptPlan): AttemptOutcome {
  const error = new SluiceError('ERR_CANCELLED', `Not started: its reader \`${plan.reader?.task}\` ended before reading its input`);
  return { status: 'cancelled', error, chunks: 0, bytes: 0 };
}

/**
 * Fail a stream that stays queued for `ms`: a producer's reader already holds its
 * sandbox slot, so on a host with no slot to spare (or all of them held by other
 * readers) it would wait forever. Returns a function that stops watching.
 */
function watchAdmission(stream: SluiceStream, task: string, ms: number | undefined, onStall: (error: SluiceError) => void): () => void {
  if (ms === undefined || stream.status !== 'queued') return () => undefined;
  const stop = (): void => {
    clearTimeout(timer);
    stream.off('status', onStatus);
  };
  const onStatus = (status: StreamStatus): void => {
    if (status !== 'queued') stop();
  };
  const timer = setTimeout(() => {
    stop();
    onStall(
      new SluiceError(
        'ERR_QUEUE_FULL',
        `Task \`${task}\` waited ${ms} ms for a sandbox slot while its reader held one: both ends of an input edge run at once, so the host needs a free slot for each (raise workers.maxThreads or isolates.maxStreams, or run fewer streams beside the graph)`,
        { details: { task, admitTimeoutMs: ms } },
      ),
    );
  }, ms);
  stream.on('status', onStatus);
  void stream.result.then(stop);
  return stop;
}

/** Wait for the streams to exit (each is bounded by the host's cancel grace); their bytes. */
async function exited(streams: readonly SluiceStream[]): Promise<number> {
  const results = await Promise.all(streams.map((s) => s.result));
  return results.reduce((sum, r) => sum + r.bytes, 0);
}
