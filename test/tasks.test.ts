/**
 * The task graph: DAG ordering, priorities under contention, cycles, cascading cancel,
 * dependency failure, retries with backoff (and resume), outputs, and the task-file
 * parser's accept/reject tables. Real host with worker sandboxes, except where a test
 * double is the only way to see the behaviour (durable resume: the host has no
 * `resume` yet).
 */
import { execFile, spawn } from 'node:child_process';
import { EventEmitter } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import { Sluice, type SluiceOptions } from '../host/index.js';
import { SluiceError } from '../protocol/errors.js';
import type { Chunk, SluiceStream, StreamOptions, StreamResult, StreamStatus } from '../host/types.js';
import { TaskGraph, type TaskGraphOptions } from '../host/tasks/runner.js';
import type { TaskHost } from '../host/tasks/attempt.js';
import { parseTaskGraph, DEFAULT_RETRY, type RetryPolicy } from '../host/tasks/spec.js';
import { backoffDelay, shouldRetry } from '../host/tasks/retry.js';
import { findCycle } from '../host/tasks/graph.js';
import type { GraphInfo, TaskInfo, TaskStatusEvent } from '../host/tasks/state.js';
import { GraphFiles } from '../host/tasks/files.js';
import { ndjson } from './helpers.js';

const fixture = (path: string): string => fileURLToPath(new URL(`../../test/fixtures/${path}`, import.meta.url));
const CONF = fixture('plugins/conformance.ts');
const FIX = fixture('tasks/plugins/taskfix.mjs');
const W = { sandbox: 'worker' } as const;
/** Every wait in this file ends by this deadline, so a broken runner fails instead of hanging. */
const DEADLINE_MS = 20_000;

async function openHost(t: TestContext, options: SluiceOptions = {}): Promise<Sluice> {
  const host = await Sluice.open({ isolates: false, logger: false, ...options });
  t.after(() => host.close());
  return host;
}

/** Start a graph, recording every status event; fails the test if it does not end in time. */
async function run(host: TaskHost, definition: unknown, options: TaskGraphOptions = {}): Promise<{ graph: TaskGraph; info: GraphInfo; events: TaskStatusEvent[] }> {
  const graph = new TaskGraph(host, definition, options);
  const events: TaskStatusEvent[] = [];
  graph.on('status', (e) => events.push(e));
  const info = await within(graph.start(), DEADLINE_MS, 'graph end');
  return { graph, info, events };
}

async function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([p, new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)))]);
  } finally {
    clearTimeout(timer);
  }
}

/** Resolve on the first status event matching `pred` (bounded by the deadline). */
function waitForStatus(graph: TaskGraph, pred: (e: TaskStatusEvent) => boolean): Promise<TaskStatusEvent> {
  return within(
    new Promise((resolve) => {
      const on = (e: TaskStatusEvent): void => {
        if (!pred(e)) return;
        graph.off('status', on);
        resolve(e);
      };
      graph.on('status', on);
    }),
    DEADLINE_MS,
    'status event',
  );
}

/** The host, recording every stream it hands out. */
function recording(host: Sluice): TaskHost & { streams: SluiceStream[] } {
  const streams: SluiceStream[] = [];
  return {
    streams,
    acceptsInput: host.acceptsInput,
    stream(plugin, action, params, options) {
      const s = host.stream(plugin, action, params, options);
      streams.push(s);
      return s;
    },
  };
}

function indexOf(events: TaskStatusEvent[], task: string, status: string): number {
  return events.findIndex((e) => e.task === task && e.status === status);
}

async function counterFile(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-tasks-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return join(dir, 'attempts');
}

// ---- the task file parser ---------------------------------------------------------------

test('parseTaskGraph accepts well-formed graphs and fills in defaults', () => {
  const minimal = parseTaskGraph({ tasks: [{ id: 'a', kind: 'call', plugin: 'p', action: 'x' }] });
  const a = minimal.tasks[0]!;
  assert.equal(a.kind, 'call');
  assert.equal(a.priority, 'normal');
  assert.deepEqual(a.dependsOn, []);
  assert.deepEqual(a.retry, DEFAULT_RETRY);
  assert.equal(minimal.failFast, false);
  if (a.kind === 'call') assert.deepEqual(a.params, {});

  const full = parseTaskGraph({
    version: 1,
    name: 'nightly',
    concurrency: 4,
    failFast: true,
    defaults: { priority: 'low', sandbox: 'worker', retry: { max: 2, backoffMs: 50 }, collect: { maxChunks: 5 } },
    tasks: [
      { id: 'src', kind: 'stream', plugin: 'p', action: 'x', params: { n: 1 }, durability: 'checkpoint', output: 'discard', limits: { wallMs: 1000 } },
      { id: 'b', kind: 'call', plugin: 'p', action: 'y', dependsOn: ['src'], priority: 'high', retry: { factor: 3, on: ['ERR_PLUGIN_THREW'] } },
      { id: 'c', kind: 'stream', plugin: 'p', action: 'z', input: 'p', description: 'reads p' },
      { id: 'p', kind: 'pipeline', pipeline: { version: 1, source: { plugin: 'p', action: 'x' }, steps: [{ op: 'take', count: 2 }] } },
    ],
  });
  assert.equal(full.name, 'nightly');
  assert.equal(full.concurrency, 4);
  assert.equal(full.failFast, true);
  const [src, b, c, p] = full.tasks;
  assert.equal(src!.priority, 'low');
  assert.equal(src!.sandbox, 'worker');
  assert.deepEqual(src!.limits, { wallMs: 1000 });
  assert.ok(src!.kind === 'stream' && src!.durability === 'checkpoint' && src!.output === 'discard' && src!.collect.maxChunks === 5);
  assert.equal(b!.priority, 'high');
  assert.deepEqual({ ...b!.retry }, { ...DEFAULT_RETRY, max: 2, backoffMs: 50, factor: 3, on: ['ERR_PLUGIN_THREW'] });
  assert.ok(c!.kind === 'stream' && c!.input === 'p');
  assert.ok(p!.kind === 'pipeline' && p!.pipeline.steps.length === 1);
  // A parsed graph parses again to the same thing (the runner re-parses what it is given).
  assert.deepEqual(parseTaskGraph(full), full);
});

const ok = (task: Record<string, unknown>, extra: Record<string, unknown> = {}): unknown => ({ tasks: [{ id: 'a', kind: 'call', plugin: 'p', action: 'x', ...task }], ...extra });

const REJECT: [string, unknown, string, RegExp][] = [
  ['not an object', [], 'ERR_TASK_INVALID', /task graph/],
  ['no tasks', {}, 'ERR_TASK_INVALID', /`tasks`/],
  ['empty tasks', { tasks: [] }, 'ERR_TASK_INVALID', /`tasks`/],
  ['unknown top-level field', ok({}, { task: [] }), 'ERR_TASK_INVALID', /`graph\.task`/],
  ['bad version', ok({}, { version: 2 }), 'ERR_TASK_INVALID', /`version`/],
  ['zero concurrency', ok({}, { concurrency: 0 }), 'ERR_TASK_INVALID', /`concurrency`/],
  ['failFast not boolean', ok({}, { failFast: 'yes' }), 'ERR_TASK_INVALID', /`failFast`/],
  ['bad default priority', ok({}, { defaults: { priority: 'urgent' } }), 'ERR_TASK_INVALID', /`defaults\.priority`/],
  ['task not an object', { tasks: [1] }, 'ERR_TASK_INVALID', /`tasks\[0\]`/],
  ['missing id', { tasks: [{ kind: 'call', plugin: 'p', action: 'x' }] }, 'ERR_TASK_INVALID', /`tasks\[0\]\.id`/],
  ['id with a slash', ok({ id: 'a/b' }), 'ERR_TASK_INVALID', /`tasks\[0\]\.id`/],
  ['unknown kind', ok({ kind: 'job' }), 'ERR_TASK_INVALID', /`tasks\.a\.kind`/],
  ['typo in a field', ok({ dependOn: ['b'] }), 'ERR_TASK_INVALID', /`tasks\.a\.dependOn`/],
  ['missing plugin', ok({ plugin: undefined }), 'ERR_TASK_INVALID', /`tasks\.a\.plugin`/],
  ['empty action', ok({ action: '' }), 'ERR_TASK_INVALID', /`tasks\.a\.action`/],
  ['bad priority', ok({ priority: 'HIGH' }), 'ERR_TASK_INVALID', /`tasks\.a\.priority`/],
  ['dependsOn not an array', ok({ dependsOn: 'b' }), 'ERR_TASK_INVALID', /`tasks\.a\.dependsOn`/],
  ['dependsOn twice', { tasks: [{ id: 'b', kind: 'call', plugin: 'p', action: 'x' }, { id: 'a', kind: 'call', plugin: 'p', action: 'x', dependsOn: ['b', 'b'] }] }, 'ERR_TASK_INVALID', /`tasks\.a\.dependsOn`/],
  ['negative retries', ok({ retry: { max: -1 } }), 'ERR_TASK_INVALID', /`tasks\.a\.retry\.max`/],
  ['factor below 1', ok({ retry: { factor: 0.5 } }), 'ERR_TASK_INVALID', /`tasks\.a\.retry\.factor`/],
  ['jitter above 1', ok({ retry: { jitter: 2 } }), 'ERR_TASK_INVALID', /`tasks\.a\.retry\.jitter`/],
  ['cap below base', ok({ retry: { backoffMs: 100, maxBackoffMs: 10 } }), 'ERR_TASK_INVALID', /`tasks\.a\.retry\.maxBackoffMs`/],
  ['unknown retry code', ok({ retry: { on: ['ERR_NOPE'] } }), 'ERR_TASK_INVALID', /`tasks\.a\.retry\.on\[0\]`/],
  ['unknown retry field', ok({ retry: { tries: 3 } }), 'ERR_TASK_INVALID', /`tasks\.a\.retry\.tries`/],
  ['output on a call', ok({ output: 'discard' }), 'ERR_TASK_INVALID', /`tasks\.a\.output`/],
  ['bad output', ok({ kind: 'stream', output: 'keep' }), 'ERR_TASK_INVALID', /`tasks\.a\.output`/],
  ['bad durability', ok({ kind: 'stream', durability: 'forever' }), 'ERR_TASK_INVALID', /`tasks\.a\.durability`/],
  ['bad limits', ok({ limits: { wallMs: -5 } }), 'ERR_TASK_INVALID', /tasks\.a\.limits/],
  ['bad collect', ok({ collect: { maxChunks: 0 } }), 'ERR_TASK_INVALID', /`tasks\.a\.collect\.maxChunks`/],
  ['duplicate id', { tasks: [{ id: 'a', kind: 'call', plugin: 'p', action: 'x' }, { id: 'a', kind: 'call', plugin: 'p', action: 'y' }] }, 'ERR_TASK_INVALID', /used twice/],
  ['pipeline missing', ok({ kind: 'pipeline', plugin: undefined, action: undefined }), 'ERR_PIPELINE_INVALID', /`tasks\.a\.pipeline`/],
  ['pipeline bad step', ok({ kind: 'pipeline', plugin: undefined, action: undefined, pipeline: { version: 1, source: { plugin: 'p', action: 'x' }, steps: [{ op: 'nope' }] } }), 'ERR_PIPELINE_INVALID', /`tasks\.a\.pipeline`/],
  ['input from a call task', { tasks: [{ id: 'b', kind: 'call', plugin: 'p', action: 'x' }, { id: 'a', kind: 'stream', plugin: 'p', action: 'x', input: 'b' }] }, 'ERR_TASK_INVALID', /`tasks\.a\.input`/],
  [
    'one input read twice',
    { tasks: [{ id: 's', kind: 'stream', plugin: 'p', action: 'x' }, { id: 'a', kind: 'stream', plugin: 'p', action: 'x', input: 's' }, { id: 'b', kind: 'stream', plugin: 'p', action: 'x', input: 's' }] },
    'ERR_TASK_INVALID',
    /already the input of `a`/,
  ],
  [
    'a durable reader',
    { tasks: [{ id: 's', kind: 'stream', plugin: 'p', action: 'x' }, { id: 'a', kind: 'stream', plugin: 'p', action: 'x', input: 's', durability: 'log' }] },
    'ERR_TASK_INVALID',
    /`tasks\.a\.durability`/,
  ],
  [
    'a durable producer',
    { tasks: [{ id: 's', kind: 'stream', plugin: 'p', action: 'x', durability: 'checkpoint' }, { id: 'a', kind: 'stream', plugin: 'p', action: 'x', input: 's' }] },
    'ERR_TASK_INVALID',
    /`tasks\.s\.durability`/,
  ],
  [
    'waiting for a task of its own input chain',
    {
      tasks: [
        { id: 's', kind: 'stream', plugin: 'p', action: 'x' },
        { id: 'm', kind: 'stream', plugin: 'p', action: 'x', input: 's' },
        { id: 'a', kind: 'call', plugin: 'p', action: 'x', input: 'm', dependsOn: ['s'] },
      ],
    },
    'ERR_TASK_INVALID',
    /`tasks\.a\.dependsOn` names `s`.*s -> m -> a/,
  ],
  [
    'a chain waiting for itself through another task',
    {
      tasks: [
        { id: 's', kind: 'stream', plugin: 'p', action: 'x' },
        { id: 'o', kind: 'call', plugin: 'p', action: 'x', dependsOn: ['s'] },
        { id: 'a', kind: 'stream', plugin: 'p', action: 'x', input: 's', dependsOn: ['o'] },
      ],
    },
    'ERR_TASK_CYCLE',
    /s\+a -> o -> s\+a/,
  ],
  ['unknown dependency', ok({ dependsOn: ['ghost'] }), 'ERR_TASK_NOT_FOUND', /`ghost`/],
  ['unknown input', ok({ kind: 'stream', input: 'ghost' }), 'ERR_TASK_NOT_FOUND', /`ghost`/],
  ['self dependency', ok({ dependsOn: ['a'] }), 'ERR_TASK_CYCLE', /a -> a/],
];

for (const [name, input, code, message] of REJECT) {
  test(`parseTaskGraph rejects: ${name}`, () => {
    assert.throws(
      () => parseTaskGraph(input),
      (err: unknown) => {
        assert.ok(err instanceof SluiceError, `expected a SluiceError, got ${String(err)}`);
        assert.equal(err.code, code, err.message);
        assert.match(err.message, message);
        return true;
      },
    );
  });
}

test('findCycle names the cycle in dependency order, and finds none in a DAG', () => {
  assert.deepEqual(findCycle([{ id: 'a', dependsOn: ['b'] }, { id: 'b', dependsOn: ['c'] }, { id: 'c', dependsOn: ['a'] }]), ['a', 'b', 'c', 'a']);
  assert.equal(findCycle([{ id: 'a', dependsOn: ['b', 'c'] }, { id: 'b', dependsOn: ['c'] }, { id: 'c', dependsOn: [] }]), undefined);
  // A long chain is walked without recursion.
  const chain = Array.from({ length: 10_000 }, (_, i) => ({ id: `t${i}`, dependsOn: i === 0 ? [] : [`t${i - 1}`] }));
  assert.equal(findCycle(chain), undefined);
  chain[0] = { id: 't0', dependsOn: ['t9999'] };
  assert.equal(findCycle(chain)?.length, 10_001);
});

// ---- backoff ------------------------------------------------------------------------------

test('backoff grows by factor, is capped, and jitter only shortens it', () => {
  const policy: RetryPolicy = { ...DEFAULT_RETRY, max: 10, backoffMs: 100, factor: 2, maxBackoffMs: 1000, jitter: 0 };
  assert.deepEqual([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(policy, n)), [100, 200, 400, 800, 1000, 1000]);
  const jittered = { ...policy, jitter: 0.5 };
  assert.equal(backoffDelay(jittered, 2, () => 0), 200);
  assert.equal(backoffDelay(jittered, 2, () => 0.999999), 100);
  assert.equal(backoffDelay({ ...policy, jitter: 1 }, 3, () => 0.5), 200);
});

test('shouldRetry: retriable codes, opted-in codes, never cancellation, never past max', () => {
  const policy: RetryPolicy = { ...DEFAULT_RETRY, max: 2, on: ['ERR_PLUGIN_THREW'] };
  assert.equal(shouldRetry(new SluiceError('ERR_SANDBOX_CRASHED'), policy, 0), true);
  assert.equal(shouldRetry(new SluiceError('ERR_SANDBOX_CRASHED'), policy, 2), false);
  assert.equal(shouldRetry(new SluiceError('ERR_PLUGIN_THREW'), policy, 1), true);
  assert.equal(shouldRetry(new SluiceError('ERR_PARAMS_INVALID'), policy, 0), false);
  assert.equal(shouldRetry(new SluiceError('ERR_CANCELLED'), { ...policy, on: ['ERR_CANCELLED'] }, 0), false);
});

// ---- running graphs on a real host -----------------------------------------------------

test('a dependent starts only after its dependencies ended (diamond)', async (t) => {
  const host = await openHost(t);
  const { graph, info, events } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'a', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 4, ms: 15 } },
      { id: 'b', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 2, ms: 5 }, dependsOn: ['a'] },
      { id: 'c', kind: 'call', plugin: CONF, action: 'echo', params: { from: 'c' }, dependsOn: ['a'] },
      { id: 'd', kind: 'call', plugin: FIX, action: 'sum', params: { values: [1, 2, 3] }, dependsOn: ['b', 'c'] },
    ],
  });
  assert.equal(info.status, 'done');
  const task = (id: string) => info.tasks.find((x) => x.id === id)!;
  for (const [dependent, dependency] of [['b', 'a'], ['c', 'a'], ['d', 'b'], ['d', 'c']] as const) {
    const started = task(dependent).attempts[0]!.startedAt!;
    const ended = task(dependency).attempts[0]!.endedAt!;
    assert.ok(started >= ended, `${dependent} started at ${started}, before ${dependency} ended at ${ended}`);
    assert.ok(indexOf(events, dependent, 'running') > indexOf(events, dependency, 'done'), `${dependent} ran before ${dependency} was done`);
  }
  // b and d waited; a did not.
  assert.ok(indexOf(events, 'b', 'waiting') >= 0 && indexOf(events, 'a', 'waiting') < 0);
  assert.deepEqual(graph.output('a'), [0, 1, 2, 3]);
  assert.deepEqual(graph.output('c'), { from: 'c' });
  assert.equal(graph.output('d'), 6);
  assert.equal(task('a').chunks, 4);
  assert.ok(task('a').bytes > 0);
  assert.deepEqual(info.counts.done, 4);
});

test('under contention, queued high-priority tasks run before low ones', async (t) => {
  const host = await openHost(t, { workers: { maxThreads: 1, minThreads: 1 } });
  const tick = { kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 2, ms: 5 } };
  // Listed low first: spec order alone would run them first.
  const { info, events } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'low1', priority: 'low', ...tick },
      { id: 'low2', priority: 'low', ...tick },
      { id: 'normal1', ...tick },
      { id: 'high1', priority: 'high', ...tick },
      { id: 'high2', priority: 'high', ...tick },
    ],
  });
  assert.equal(info.status, 'done');
  const order = events.filter((e) => e.status === 'running').map((e) => e.task);
  assert.deepEqual(order, ['high1', 'high2', 'normal1', 'low1', 'low2']);
  // One thread: never two running at once.
  const spans = info.tasks.map((x) => [x.attempts[0]!.startedAt!, x.attempts[0]!.endedAt!] as const).sort((p, q) => p[0] - q[0]);
  for (let i = 1; i < spans.length; i++) assert.ok(spans[i]![0] >= spans[i - 1]![1] - 1, 'two tasks overlapped on one worker thread');
});

test('graph concurrency: a high-priority task that becomes ready later goes before low ones waiting longer', async (t) => {
  const host = await openHost(t);
  const tick = { kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 2, ms: 5 } };
  const { info, events } = await run(
    host,
    {
      defaults: { sandbox: 'worker', priority: 'low' },
      tasks: [{ id: 'first', ...tick }, { id: 'low1', ...tick }, { id: 'low2', ...tick }, { id: 'urgent', priority: 'high', dependsOn: ['first'], ...tick }],
    },
    { concurrency: 1 },
  );
  assert.equal(info.status, 'done');
  assert.deepEqual(events.filter((e) => e.status === 'running').map((e) => e.task), ['first', 'urgent', 'low1', 'low2']);
});

test('a cycle is ERR_TASK_CYCLE, naming it, before anything runs', async (t) => {
  const host = await openHost(t);
  const rec = recording(host);
  assert.throws(
    () =>
      new TaskGraph(rec, {
        tasks: [
          { id: 'ok', kind: 'call', plugin: CONF, action: 'echo', sandbox: 'worker' },
          { id: 'x', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['z'] },
          { id: 'y', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['x', 'ok'] },
          { id: 'z', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['y'] },
        ],
      }),
    (err: unknown) => {
      assert.ok(err instanceof SluiceError && err.code === 'ERR_TASK_CYCLE');
      assert.deepEqual(err.details?.cycle, ['x', 'z', 'y', 'x']);
      assert.match(err.message, /x -> z -> y -> x/);
      return true;
    },
  );
  assert.equal(rec.streams.length, 0);
  assert.equal(host.streams().length, 0);
});

test('cancelling a task cancels its running stream and its dependents; others finish', async (t) => {
  const host = await openHost(t);
  const rec = recording(host);
  const graph = new TaskGraph(rec, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'feed', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 0, ms: 10 }, output: 'discard' },
      { id: 'mid', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['feed'] },
      { id: 'leaf', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['mid'] },
      { id: 'other', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 3, ms: 5 } },
    ],
  });
  const events: TaskStatusEvent[] = [];
  graph.on('status', (e) => events.push(e));
  const done = graph.start();
  await waitForStatus(graph, (e) => e.task === 'feed' && e.status === 'running');
  const feedStream = rec.streams.find((s) => s.action === 'ticks' && s.status === 'running' && graph.task('feed').attempts[0]!.streamId === s.id)!;
  assert.ok(feedStream);
  assert.equal(graph.cancel('feed', 'test says stop'), true);
  assert.equal(graph.cancel('feed'), false, 'cancelling twice is a no-op');
  assert.equal(graph.task('feed').status, 'cancelled');
  const info = await within(done, DEADLINE_MS, 'graph end');
  // The stream itself was cancelled, and had exited by the time the graph ended.
  const streamResult = await within(feedStream.result, 1, 'stream result already settled');
  assert.equal(streamResult.status, 'cancelled');
  const task = (id: string) => info.tasks.find((x) => x.id === id)!;
  assert.equal(task('feed').error?.code, 'ERR_CANCELLED');
  for (const id of ['mid', 'leaf']) {
    assert.equal(task(id).status, 'cancelled');
    assert.equal(task(id).error?.code, 'ERR_CANCELLED');
    assert.equal(task(id).attempts.length, 0, `${id} never ran`);
  }
  assert.equal(task('mid').error?.details?.dependency, 'feed');
  assert.equal(task('leaf').error?.details?.dependency, 'mid');
  assert.equal(task('other').status, 'done');
  assert.equal(info.status, 'cancelled');
  assert.equal(host.streams().length, 0);
});

test('cancelling the graph cancels everything, queued and running', async (t) => {
  const host = await openHost(t, { workers: { maxThreads: 1, minThreads: 1 } });
  const forever = { kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 0, ms: 10 }, output: 'discard' };
  const graph = new TaskGraph(host, { defaults: { sandbox: 'worker' }, tasks: [{ id: 'a', ...forever }, { id: 'b', ...forever }, { id: 'c', ...forever, dependsOn: ['a'] }] });
  const done = graph.start();
  await waitForStatus(graph, (e) => e.status === 'running');
  assert.equal(graph.cancel(), true);
  const info = await within(done, DEADLINE_MS, 'graph end');
  assert.equal(info.status, 'cancelled');
  assert.deepEqual(info.tasks.map((x) => x.status), ['cancelled', 'cancelled', 'cancelled']);
  assert.equal(host.streams().length, 0, 'no stream outlives the graph');
});

test('an aborted signal cancels the graph', async (t) => {
  const host = await openHost(t);
  const controller = new AbortController();
  const graph = new TaskGraph(host, { tasks: [{ id: 'a', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 0, ms: 10 }, sandbox: 'worker', output: 'discard' }] }, { signal: controller.signal });
  const done = graph.start();
  await waitForStatus(graph, (e) => e.status === 'running');
  controller.abort();
  const info = await within(done, DEADLINE_MS, 'graph end');
  assert.equal(info.tasks[0]!.status, 'cancelled');
});

test('a failed dependency fails its dependents with ERR_DEPENDENCY_FAILED naming it', async (t) => {
  const host = await openHost(t);
  const { info, graph } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'bad', kind: 'call', plugin: FIX, action: 'fail', params: { message: 'nope' } },
      { id: 'next', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['bad'] },
      { id: 'last', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['next'] },
      { id: 'fine', kind: 'call', plugin: CONF, action: 'echo', params: { ok: true } },
    ],
  });
  const task = (id: string) => info.tasks.find((x) => x.id === id)!;
  assert.equal(info.status, 'failed');
  assert.equal(task('bad').status, 'failed');
  assert.equal(task('bad').error?.code, 'ERR_PLUGIN_THREW');
  assert.match(task('bad').error!.message, /nope/);
  assert.equal(task('next').error?.code, 'ERR_DEPENDENCY_FAILED');
  assert.equal(task('next').error?.details?.dependency, 'bad');
  assert.match(task('next').error!.message, /`bad`/);
  assert.equal(task('last').error?.code, 'ERR_DEPENDENCY_FAILED');
  assert.equal(task('last').error?.details?.dependency, 'next');
  assert.equal(task('last').error?.details?.root, 'bad');
  assert.equal(task('next').attempts.length + task('last').attempts.length, 0, 'dependents never ran');
  assert.equal(task('bad').attempts.length, 1, 'ERR_PLUGIN_THREW is not retried by default');
  assert.deepEqual(graph.output('fine'), { ok: true });
});

test('failFast cancels the rest of the graph when a task fails', async (t) => {
  const host = await openHost(t);
  const { info } = await run(host, {
    failFast: true,
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'bad', kind: 'call', plugin: FIX, action: 'fail' },
      { id: 'long', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 0, ms: 10 }, output: 'discard' },
    ],
  });
  assert.equal(info.status, 'failed');
  assert.equal(info.tasks[1]!.status, 'cancelled');
  assert.equal(info.tasks[1]!.error?.details?.failed, 'bad');
});

test('a retriable failure (sandbox crash) is retried with exponential backoff', async (t) => {
  const host = await openHost(t);
  const file = await counterFile(t);
  const { info, graph, events } = await run(host, {
    tasks: [{ id: 'f', kind: 'stream', plugin: FIX, action: 'flaky', sandbox: 'worker', params: { counterFile: file, failTimes: 2, mode: 'crash' }, retry: { max: 3, backoffMs: 40, factor: 2, jitter: 0 } }],
  });
  const f = info.tasks[0]!;
  assert.equal(f.status, 'done', JSON.stringify(f.error));
  assert.deepEqual(f.attempts.map((a) => a.error?.code ?? a.status), ['ERR_SANDBOX_CRASHED', 'ERR_SANDBOX_CRASHED', 'done']);
  const gap = (i: number) => f.attempts[i]!.queuedAt - f.attempts[i - 1]!.endedAt!;
  assert.ok(gap(1) >= 39, `first backoff ${gap(1)} ms`);
  assert.ok(gap(2) >= 79, `second backoff ${gap(2)} ms (factor 2)`);
  // Each seq once, even if a crashed attempt delivered some.
  assert.deepEqual((graph.output('f') as { i: number }[]).map((d) => d.i), [0, 1, 2]);
  const waits = events.filter((e) => e.status === 'waiting');
  assert.equal(waits.length, 2);
  assert.equal(waits[0]!.error?.code, 'ERR_SANDBOX_CRASHED');
  assert.ok(typeof waits[0]!.retryAt === 'number');
});

test('retries stop at max; non-retriable errors retry only when the task opts in', async (t) => {
  const host = await openHost(t);
  const files = [await counterFile(t), await counterFile(t), await counterFile(t)];
  const { info } = await run(host, {
    defaults: { sandbox: 'worker', retry: { backoffMs: 1, jitter: 0 } },
    tasks: [
      { id: 'exhausted', kind: 'stream', plugin: FIX, action: 'flaky', params: { counterFile: files[0], failTimes: 5, mode: 'crash' }, retry: { max: 1 } },
      { id: 'thrown', kind: 'stream', plugin: FIX, action: 'flaky', params: { counterFile: files[1], failTimes: 1, mode: 'throw' }, retry: { max: 3 } },
      { id: 'optedIn', kind: 'stream', plugin: FIX, action: 'flaky', params: { counterFile: files[2], failTimes: 1, mode: 'throw' }, retry: { max: 3, on: ['ERR_PLUGIN_THREW'] } },
    ],
  });
  const task = (id: string) => info.tasks.find((x) => x.id === id)!;
  assert.equal(task('exhausted').status, 'failed');
  assert.equal(task('exhausted').attempts.length, 2);
  assert.equal(task('exhausted').error?.code, 'ERR_SANDBOX_CRASHED');
  assert.equal(task('thrown').status, 'failed');
  assert.equal(task('thrown').attempts.length, 1);
  assert.equal(task('optedIn').status, 'done');
  assert.equal(task('optedIn').attempts.length, 2);
});

test('cancelling a task during its retry backoff ends the wait at once', async (t) => {
  const host = await openHost(t);
  const file = await counterFile(t);
  const graph = new TaskGraph(host, {
    tasks: [{ id: 'f', kind: 'stream', plugin: FIX, action: 'flaky', sandbox: 'worker', params: { counterFile: file, failTimes: 5, mode: 'crash' }, retry: { max: 3, backoffMs: 60_000, maxBackoffMs: 60_000, jitter: 0 } }],
  });
  const done = graph.start();
  await waitForStatus(graph, (e) => e.status === 'waiting');
  assert.ok(graph.task('f').retryAt! > Date.now() + 50_000);
  graph.cancel('f');
  const info = await within(done, 2_000, 'graph end after cancel during backoff');
  assert.equal(info.tasks[0]!.status, 'cancelled');
  assert.equal(info.tasks[0]!.attempts.length, 1);
});

test('a durable stream task on the real host: each retry resumes or says why not, and each seq arrives once', async (t) => {
  const file = await counterFile(t);
  const data = await mkdtemp(join(tmpdir(), 'sluice-tasks-store-'));
  t.after(() => rm(data, { recursive: true, force: true }));
  // Host-level retries off, so the graph's own retry policy is what runs.
  const host = await openHost(t, { dataDir: data, retries: { max: 0 } });
  const { info, graph } = await run(host, {
    tasks: [
      {
        id: 'd',
        kind: 'stream',
        plugin: FIX,
        action: 'flaky',
        sandbox: 'worker',
        durability: 'checkpoint',
        params: { counterFile: file, failTimes: 2, mode: 'crash', checkpoint: true },
        retry: { max: 3, backoffMs: 5 },
      },
    ],
  });
  const d = info.tasks[0]!;
  assert.equal(d.status, 'done', JSON.stringify(d.error));
  assert.equal(d.attempts.length, 3);
  assert.equal(d.attempts[0]!.checkpoint, 1, 'the checkpoint before the crash was seen');
  for (const a of d.attempts.slice(1)) assert.ok(a.resumedFrom !== undefined || a.resumeError !== undefined, `attempt ${a.attempt} neither resumed nor said why`);
  assert.deepEqual((graph.output('d') as { i: number }[]).map((x) => x.i), [0, 1, 2]);
});

test('a sink takes a stream task’s chunks in order (awaited per chunk); a throwing sink fails the task', async (t) => {
  const host = await openHost(t);
  const seen: number[] = [];
  const { info, graph } = await run(
    host,
    {
      defaults: { sandbox: 'worker' },
      tasks: [
        { id: 'sunk', kind: 'stream', plugin: CONF, action: 'count', params: { to: 50 } },
        { id: 'broken', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 0, ms: 2 } },
      ],
    },
    {
      sinks: {
        sunk: async (chunk) => {
          seen.push((chunk.data as { i: number }).i);
          await new Promise((r) => setImmediate(r));
        },
        broken: (chunk) => {
          if (chunk.seq === 3) throw new Error('disk full');
        },
      },
    },
  );
  assert.deepEqual(seen, Array.from({ length: 50 }, (_, i) => i));
  assert.equal(graph.output('sunk'), undefined, 'sunk output is not also collected');
  const broken = info.tasks.find((x) => x.id === 'broken')!;
  assert.equal(broken.status, 'failed');
  assert.equal(broken.error?.code, 'ERR_SINK_FAILED');
  assert.match(broken.error!.message, /disk full/);
  assert.equal(host.streams().length, 0, 'the broken sink’s endless stream was stopped');
});

test('collected output is bounded: past collect.maxChunks the task fails with a limit code', async (t) => {
  const host = await openHost(t);
  const { info } = await run(host, {
    tasks: [{ id: 'big', kind: 'stream', plugin: CONF, action: 'count', params: { to: 1000 }, sandbox: 'worker', collect: { maxChunks: 10 } }],
  });
  assert.equal(info.tasks[0]!.status, 'failed');
  assert.equal(info.tasks[0]!.error?.code, 'ERR_LIMIT_CHUNKS');
});

test('a pipeline task runs through the operators and collects its items', async (t) => {
  const host = await openHost(t);
  const { info, graph } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'first', kind: 'call', plugin: CONF, action: 'echo' },
      {
        id: 'p',
        kind: 'pipeline',
        dependsOn: ['first'],
        pipeline: { version: 1, source: { plugin: CONF, action: 'count', params: { to: 20 } }, steps: [{ op: 'filter', where: { field: 'i', gte: 10 } }, { op: 'map', get: 'i' }, { op: 'take', count: 3 }] },
      },
    ],
  });
  assert.equal(info.status, 'done', JSON.stringify(info.tasks[1]!.error));
  assert.deepEqual(graph.output('p'), [10, 11, 12]);
  assert.equal(host.streams().length, 0);
});

// ---- input edges: one task's output streamed into another's params.input ----------------

test('a host that cannot stream into an action (no acceptsInput) refuses tasks with `input`', () => {
  const host: TaskHost = {
    acceptsInput: false,
    stream() {
      throw new Error('must not start anything');
    },
  };
  assert.throws(
    () => new TaskGraph(host, { tasks: [{ id: 's', kind: 'stream', plugin: CONF, action: 'count' }, { id: 'r', kind: 'stream', plugin: CONF, action: 'double', input: 's' }] }),
    (err: unknown) => err instanceof SluiceError && err.code === 'ERR_TASK_INVALID' && /tasks\.r\.input/.test(err.message),
  );
});

test('count -> double: the reader gets the producer’s chunks as its input, both running at once', async (t) => {
  const host = await openHost(t);
  const { graph, info, events } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'count', kind: 'stream', plugin: CONF, action: 'count', params: { to: 5 } },
      { id: 'double', kind: 'stream', plugin: CONF, action: 'double', input: 'count' },
    ],
  });
  assert.equal(info.status, 'done', JSON.stringify(info.tasks.map((x) => x.error)));
  assert.deepEqual(graph.output('double'), [0, 2, 4, 6, 8]);
  // The producer's chunks went to its reader, not to its own output.
  assert.equal(graph.output('count'), undefined);
  const task = (id: string) => info.tasks.find((x) => x.id === id)!;
  assert.equal(task('count').chunks, 5, 'items its reader took');
  assert.equal(task('double').input, 'count');
  // Concurrent, not ordered: each started before the other ended.
  assert.ok(task('double').attempts[0]!.startedAt! < task('count').attempts[0]!.endedAt!);
  assert.ok(task('count').attempts[0]!.startedAt! < task('double').attempts[0]!.endedAt!);
  assert.ok(indexOf(events, 'double', 'running') < indexOf(events, 'count', 'done'));
  assert.equal(host.streams().length, 0);
});

test('count -> sum: a unary reader (a call task) gets the sum; chains compose (count -> double -> sum)', async (t) => {
  const host = await openHost(t);
  const { graph, info } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'n', kind: 'stream', plugin: CONF, action: 'syncCount', params: { to: 10 } },
      { id: 'total', kind: 'call', plugin: CONF, action: 'sum', input: 'n' },
      { id: 'm', kind: 'stream', plugin: CONF, action: 'syncCount', params: { to: 10 } },
      { id: 'twice', kind: 'stream', plugin: CONF, action: 'double', input: 'm' },
      { id: 'total2', kind: 'call', plugin: CONF, action: 'sum', input: 'twice' },
      // A pipeline task's items can be an input too.
      { id: 'p', kind: 'pipeline', pipeline: { version: 1, source: { plugin: CONF, action: 'count', params: { to: 20 } }, steps: [{ op: 'map', get: 'i' }, { op: 'take', count: 4 }] } },
      { id: 'total3', kind: 'call', plugin: CONF, action: 'sum', input: 'p' },
      // Outside dependencies still gate a chain, and a chain gates its dependents.
      { id: 'after', kind: 'call', plugin: CONF, action: 'echo', params: { ok: 1 }, dependsOn: ['total', 'twice'] },
    ],
  });
  assert.equal(info.status, 'done', JSON.stringify(info.tasks.map((x) => x.error)));
  assert.equal(graph.output('total'), 45);
  assert.equal(graph.output('total2'), 90);
  assert.equal(graph.output('total3'), 6);
  assert.equal(graph.output('twice'), undefined);
  assert.deepEqual(graph.output('after'), { ok: 1 });
  assert.equal(host.streams().length, 0);
});

test('a reader that stops reading early ends its producer, which counts as done', async (t) => {
  const host = await openHost(t);
  const { graph, info } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'forever', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 0, ms: 2 } },
      { id: 'head', kind: 'call', plugin: FIX, action: 'head', params: { n: 3 }, input: 'forever' },
      { id: 'next', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['forever'] },
    ],
  });
  assert.equal(info.status, 'done', JSON.stringify(info.tasks.map((x) => x.error)));
  assert.deepEqual(graph.output('head'), [0, 1, 2]);
  const forever = info.tasks.find((x) => x.id === 'forever')!;
  assert.equal(forever.status, 'done');
  assert.equal(forever.attempts[0]!.status, 'cancelled', 'its stream was stopped');
  assert.equal(host.streams().length, 0);
});

test('an upstream failure fails its reader with the upstream’s code, and the reader’s dependents', async (t) => {
  const host = await openHost(t);
  const file = await counterFile(t);
  const { info, graph } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'src', kind: 'stream', plugin: FIX, action: 'flaky', params: { counterFile: file, failTimes: 1, mode: 'throw' } },
      { id: 'double', kind: 'stream', plugin: CONF, action: 'double', input: 'src' },
      { id: 'after', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['double'] },
    ],
  });
  const task = (id: string) => info.tasks.find((x) => x.id === id)!;
  assert.equal(info.status, 'failed');
  assert.equal(task('src').status, 'failed');
  assert.equal(task('src').error?.code, 'ERR_PLUGIN_THREW');
  assert.equal(task('double').status, 'failed');
  assert.equal(task('double').error?.code, task('src').error?.code, 'the reader fails with its input’s code');
  assert.match(task('double').error!.message, /flaky attempt 1/);
  assert.equal(task('after').error?.code, 'ERR_DEPENDENCY_FAILED');
  assert.equal(task('after').error?.details?.dependency, 'double');
  // ERR_PLUGIN_THREW is not retried by default: one attempt each.
  assert.deepEqual([task('src').attempts.length, task('double').attempts.length], [1, 1]);
  assert.equal(graph.output('double'), undefined);
  assert.equal(host.streams().length, 0);
});

test('cancel cascades through an input edge: cancelling the reader cancels its producer, and the other way', async (t) => {
  const host = await openHost(t);
  const endless = {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'feed', kind: 'stream', plugin: FIX, action: 'ticks', params: { n: 0, ms: 5 } },
      { id: 'double', kind: 'stream', plugin: CONF, action: 'double', input: 'feed', output: 'discard' },
      { id: 'after', kind: 'call', plugin: CONF, action: 'echo', dependsOn: ['double'] },
    ],
  };
  for (const target of ['double', 'feed'] as const) {
    const rec = recording(host);
    const graph = new TaskGraph(rec, endless);
    const done = graph.start();
    // The reader starts first; its producer once the reader asks for input. Both run before the cancel.
    await waitForStatus(graph, (e) => e.task === 'feed' && e.status === 'running');
    assert.equal(graph.task('double').status, 'running');
    assert.equal(graph.cancel(target, 'test says stop'), true);
    const info = await within(done, DEADLINE_MS, `graph end after cancelling ${target}`);
    const task = (id: string) => info.tasks.find((x) => x.id === id)!;
    assert.equal(info.status, 'cancelled');
    for (const id of ['feed', 'double', 'after']) assert.equal(task(id).status, 'cancelled', `${id} after cancelling ${target}`);
    if (target === 'double') assert.equal(task('feed').error?.details?.reader, 'double', 'the producer names the reader that was cancelled');
    else assert.equal(task('double').error?.details?.dependency, 'feed');
    assert.equal(task('after').attempts.length, 0);
    for (const s of rec.streams) assert.equal((await within(s.result, 1, 'stream exited')).status, 'cancelled');
    assert.equal(rec.streams.length, 2);
    assert.equal(host.streams().length, 0);
  }
});

test('a retriable failure on an input edge retries the pair: both run again, each value once', async (t) => {
  const host = await openHost(t);
  const file = await counterFile(t);
  const { info, graph, events } = await run(host, {
    defaults: { sandbox: 'worker' },
    tasks: [
      { id: 'src', kind: 'stream', plugin: FIX, action: 'flaky', params: { counterFile: file, failTimes: 1, mode: 'crash' }, retry: { max: 2, backoffMs: 20, jitter: 0 } },
      // The reader's own policy is not what counts: the failure started upstream.
      { id: 'double', kind: 'stream', plugin: CONF, action: 'double', input: 'src' },
    ],
  });
  const task = (id: string) => info.tasks.find((x) => x.id === id)!;
  assert.equal(info.status, 'done', JSON.stringify(info.tasks.map((x) => x.error)));
  assert.deepEqual(task('src').attempts.map((a) => a.error?.code ?? a.status), ['ERR_SANDBOX_CRASHED', 'done']);
  assert.equal(task('double').attempts.length, 2, 'the reader ran again with the new input');
  assert.deepEqual(graph.output('double'), [0, 2, 4]);
  const waits = events.filter((e) => e.status === 'waiting').map((e) => e.task);
  assert.deepEqual(waits.sort(), ['double', 'src']);
  assert.equal(host.streams().length, 0);
});

test('a host with one worker slot: the pair fails with ERR_QUEUE_FULL after admitTimeoutMs instead of hanging', async (t) => {
  const host = await openHost(t, { workers: { maxThreads: 1, minThreads: 1 } });
  const started = Date.now();
  const { info } = await run(
    host,
    {
      defaults: { sandbox: 'worker' },
      tasks: [
        { id: 'count', kind: 'stream', plugin: CONF, action: 'count', params: { to: 5 } },
        { id: 'double', kind: 'stream', plugin: CONF, action: 'double', input: 'count' },
      ],
    },
    { admitTimeoutMs: 300 },
  );
  const task = (id: string) => info.tasks.find((x) => x.id === id)!;
  assert.equal(info.status, 'failed');
  assert.equal(task('count').error?.code, 'ERR_QUEUE_FULL');
  assert.match(task('count').error!.message, /maxThreads/);
  assert.equal(task('count').attempts[0]!.startedAt, undefined, 'the producer never got a slot');
  assert.equal(task('double').error?.code, 'ERR_QUEUE_FULL', 'its reader fails with its input’s error');
  assert.ok(Date.now() - started < 5_000);
  assert.equal(host.streams().length, 0);
});

test('two pairs on a two-slot host are admitted one pair at a time, so neither holds half the slots', async (t) => {
  const host = await openHost(t, { workers: { maxThreads: 2, minThreads: 2 } });
  const tasks = [0, 1, 2].flatMap((k) => [
    { id: `n${k}`, kind: 'stream', plugin: CONF, action: 'syncCount', params: { to: 100 } },
    { id: `sum${k}`, kind: 'call', plugin: CONF, action: 'sum', input: `n${k}` },
  ]);
  const { info, graph } = await run(host, { defaults: { sandbox: 'worker' }, tasks }, { admitTimeoutMs: 5_000 });
  assert.equal(info.status, 'done', JSON.stringify(info.tasks.map((x) => x.error)));
  for (const k of [0, 1, 2]) assert.equal(graph.output(`sum${k}`), 4950);
});

test('input edges refused at construction: a chain longer than the concurrency, a sink on a producer', async (t) => {
  const host = await openHost(t);
  const chain = {
    tasks: [
      { id: 'a', kind: 'stream', plugin: CONF, action: 'count', params: { to: 3 } },
      { id: 'b', kind: 'stream', plugin: CONF, action: 'double', input: 'a' },
      { id: 'c', kind: 'call', plugin: CONF, action: 'sum', input: 'b' },
    ],
  };
  assert.throws(
    () => new TaskGraph(host, chain, { concurrency: 2 }),
    (err: unknown) => err instanceof SluiceError && err.code === 'ERR_TASK_INVALID' && /a -> b -> c/.test(err.message) && /concurrency/.test(err.message),
  );
  assert.throws(
    () => new TaskGraph(host, chain, { sinks: { a: () => undefined } }),
    (err: unknown) => err instanceof SluiceError && err.code === 'ERR_INVALID_ARGUMENT' && /options\.sinks\.a/.test(err.message),
  );
});

test('task(), output() and cancel() name unknown tasks with ERR_TASK_NOT_FOUND', async (t) => {
  const host = await openHost(t);
  const graph = new TaskGraph(host, { tasks: [{ id: 'a', kind: 'call', plugin: CONF, action: 'echo', sandbox: 'worker' }] });
  for (const f of [() => graph.task('zz'), () => graph.output('zz'), () => graph.cancel('zz')]) {
    assert.throws(f, (err: unknown) => err instanceof SluiceError && err.code === 'ERR_TASK_NOT_FOUND');
  }
  assert.equal(graph.status().status, 'pending');
  assert.equal(graph.task('a').status, 'pending');
  await within(graph.close(), DEADLINE_MS, 'close');
  assert.equal(graph.task('a').status, 'cancelled');
});

// ---- durable resume, through a test double (the host has no resume yet) --------------------

/** A scripted stream: yields `chunks`, emitting a checkpoint after `checkpointAfter`, then ends with `error` or done. */
class ScriptedStream extends EventEmitter implements SluiceStream {
  #status: StreamStatus = 'queued';
  #resolve!: (r: StreamResult) => void;
  readonly result = new Promise<StreamResult>((r) => (this.#resolve = r));
  #cancelled = false;
  constructor(
    readonly id: string,
    readonly chunks: Chunk[],
    readonly error: SluiceError | undefined,
    readonly checkpointAfter: number | undefined,
  ) {
    super();
  }
  readonly plugin = 'scripted';
  readonly action = 'run';
  readonly progress = undefined;
  get status(): StreamStatus {
    return this.#status;
  }
  #end(status: 'done' | 'failed' | 'cancelled', error?: SluiceError): void {
    this.#status = status;
    this.emit('status', status);
    this.#resolve({ status, chunks: this.chunks.length, bytes: 0, kind: 'stream', ...(error === undefined ? {} : { error }) });
  }
  async *[Symbol.asyncIterator](): AsyncIterator<Chunk> {
    await new Promise((r) => setImmediate(r));
    this.#status = 'running';
    this.emit('status', 'running');
    for (const chunk of this.chunks) {
      if (this.#cancelled) break;
      yield chunk;
      if (chunk.seq === this.checkpointAfter) this.emit('checkpoint', { seq: chunk.seq, state: { next: chunk.seq } });
    }
    if (this.#cancelled) return;
    if (this.error !== undefined) {
      this.#end('failed', this.error);
      throw this.error;
    }
    this.#end('done');
  }
  cancel(): Promise<StreamResult> {
    if (!this.#cancelled) {
      this.#cancelled = true;
      this.#end('cancelled', new SluiceError('ERR_CANCELLED'));
    }
    return this.result;
  }
}

test('a retried durable stream task resumes from its checkpoint, each seq delivered once', async () => {
  const seqs = (from: number, to: number): Chunk[] => Array.from({ length: to - from }, (_, k) => ({ seq: from + k, data: from + k }));
  const calls: string[] = [];
  const host: TaskHost = {
    stream(_plugin, _action, _params, options?: StreamOptions) {
      calls.push(`stream:${options?.durability}`);
      // Checkpoint at seq 3, delivers 0..5, then the sandbox dies.
      return new ScriptedStream('first', seqs(0, 6), new SluiceError('ERR_SANDBOX_CRASHED'), 3);
    },
    resume(streamId) {
      calls.push(`resume:${streamId}`);
      // The plugin restarts at the checkpoint: seqs 3..5 come again, then 6..9.
      return new ScriptedStream('second', seqs(3, 10), undefined, undefined);
    },
  };
  const { info, graph } = await run(host, {
    tasks: [{ id: 'd', kind: 'stream', plugin: 'x', action: 'y', durability: 'checkpoint', retry: { max: 2, backoffMs: 1, jitter: 0 } }],
  });
  assert.equal(info.tasks[0]!.status, 'done');
  assert.deepEqual(calls, ['stream:checkpoint', 'resume:first']);
  assert.deepEqual(graph.output('d'), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(info.tasks[0]!.attempts[1]!.resumedFrom, 3);
  assert.equal(info.tasks[0]!.chunks, 10);
});

test('without durability a retry restarts instead of resuming', async () => {
  const calls: string[] = [];
  let n = 0;
  const host: TaskHost = {
    stream() {
      calls.push('stream');
      n++;
      return new ScriptedStream(`s${n}`, [{ seq: 0, data: n }], n === 1 ? new SluiceError('ERR_SANDBOX_UNRESPONSIVE') : undefined, 0);
    },
    resume(streamId) {
      calls.push(`resume:${streamId}`);
      throw new Error('must not resume');
    },
  };
  const { info } = await run(host, { tasks: [{ id: 's', kind: 'stream', plugin: 'x', action: 'y', retry: { max: 1, backoffMs: 0 } }] });
  assert.equal(info.tasks[0]!.status, 'done');
  assert.deepEqual(calls, ['stream', 'stream']);
});

// ---- the CLI (`sluice tasks ...`), in child processes ---------------------------------------

const CLI = fixture('tasks/cli.mjs');

interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

function cli(args: string[], timeoutMs = DEADLINE_MS): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, ['--no-node-snapshot', CLI, 'tasks', ...args], { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err !== null && typeof err.code !== 'number') reject(err);
      else resolve({ code: err === null ? 0 : (err.code as number), stdout, stderr });
    });
  });
}


async function dataDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-tasks-cli-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

test('cli: submit runs a graph, prints NDJSON status changes, keeps a state file; ls and show read it', async (t) => {
  const data = await dataDir(t);
  const run1 = await cli(['submit', fixture('tasks/diamond.json'), '--json', '--no-isolates', '--data', data]);
  assert.equal(run1.code, 0, run1.stderr);
  const lines = ndjson(run1.stdout);
  assert.equal(lines[0]!.type, 'graph');
  const id = lines[0]!.id as string;
  const end = lines[lines.length - 1]!;
  assert.equal(end.type, 'end');
  assert.equal((end.graph as GraphInfo).status, 'done');
  const statuses = lines.filter((l) => l.type === 'status');
  assert.ok(statuses.findIndex((l) => l.task === 'd' && l.status === 'running') > statuses.findIndex((l) => l.task === 'b' && l.status === 'done'));

  const ls = await cli(['ls', '--json', '--data', data]);
  assert.equal(ls.code, 0, ls.stderr);
  const listed = ndjson(ls.stdout);
  assert.deepEqual(listed.map((g) => [g.id, g.status, g.alive]), [[id, 'done', true]]);
  const show = await cli(['show', id, 'c', '--json', '--data', data]);
  assert.equal(show.code, 0, show.stderr);
  const c = JSON.parse(show.stdout) as TaskInfo;
  assert.equal(c.status, 'done');
  assert.equal(c.chunks, 5);
  assert.equal(c.attempts.length, 1);
  const human = await cli(['show', id, '--data', data]);
  assert.match(human.stdout, new RegExp(`graph ${id} done: 4 done`));
});

test('cli: a failing task makes submit exit 1; bad files are coded errors and run nothing', async (t) => {
  const data = await dataDir(t);
  const failed = await cli(['submit', fixture('tasks/failing.json'), '--json', '--no-isolates', '--data', data]);
  assert.equal(failed.code, 1);
  const end = ndjson(failed.stdout).pop()!;
  const tasks = (end.graph as GraphInfo).tasks;
  assert.deepEqual(tasks.map((x) => [x.id, x.status, x.error?.code]), [['bad', 'failed', 'ERR_PLUGIN_THREW'], ['after', 'failed', 'ERR_DEPENDENCY_FAILED']]);

  const empty = await dataDir(t);
  const bad = await cli(['submit', fixture('tasks/bad-field.json'), '--no-isolates', '--data', empty]);
  assert.equal(bad.code, 1);
  assert.match(bad.stderr, /ERR_TASK_INVALID: .*`tasks\.b\.retry\.max`/);
  const cycle = await cli(['submit', fixture('tasks/cycle.json'), '--json', '--no-isolates', '--data', empty]);
  assert.equal(cycle.code, 1);
  assert.deepEqual(ndjson(cycle.stdout), [{ error: { code: 'ERR_TASK_CYCLE', message: 'Task dependencies form a cycle: a -> c -> b -> a' } }]);
  const missing = await cli(['submit', join(empty, 'nope.json'), '--data', empty]);
  assert.equal(missing.code, 2, 'an unreadable file is a usage error');
  const ls = await cli(['ls', '--json', '--data', empty]);
  assert.equal(ls.stdout, '', 'nothing ran, nothing was recorded');
});

test('cli: cancel from another process cancels a running task and its dependents', async (t) => {
  const data = await dataDir(t);
  const child = spawn(process.execPath, ['--no-node-snapshot', CLI, 'tasks', 'submit', fixture('tasks/endless.json'), '--json', '--no-isolates', '--data', data], { stdio: ['ignore', 'pipe', 'pipe'] });
  const killer = setTimeout(() => child.kill('SIGKILL'), DEADLINE_MS);
  t.after(() => {
    clearTimeout(killer);
    child.kill('SIGKILL');
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const lines: Record<string, unknown>[] = [];
  const feedRunning = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).on('line', (line) => {
      const msg = JSON.parse(line) as Record<string, unknown>;
      lines.push(msg);
      if (msg.type === 'status' && msg.task === 'feed' && msg.status === 'running') resolve(msg.graph as string);
    });
    void exited.then((code) => reject(new Error(`submit exited (${code}) before feed ran`)));
  });
  const id = await within(feedRunning, DEADLINE_MS, 'feed running');
  // Running graphs show up in ls while they run.
  const ls = ndjson((await cli(['ls', '--json', '--data', data])).stdout);
  assert.deepEqual(ls.map((g) => [g.id, g.status]), [[id, 'running']]);

  const cancel = await cli(['cancel', id, 'feed', '--reason', 'enough', '--data', data]);
  assert.equal(cancel.code, 0, cancel.stderr);
  assert.equal(cancel.stdout.trim(), 'feed: cancelled');
  assert.equal(await within(exited, DEADLINE_MS, 'submit exit'), 1, 'a cancelled graph is not a success');
  const end = lines.pop()!;
  const byId = Object.fromEntries((end.graph as GraphInfo).tasks.map((x) => [x.id, x]));
  assert.equal(byId.feed!.status, 'cancelled');
  assert.match(byId.feed!.error!.message, /enough/);
  assert.equal(byId.after!.status, 'cancelled');
  assert.equal(byId.quick!.status, 'done');
  const shown = JSON.parse((await cli(['show', id, '--json', '--data', data])).stdout) as GraphInfo;
  assert.equal(shown.status, 'cancelled');
  const again = await cli(['cancel', id, '--data', data]);
  assert.equal(again.code, 0);
  assert.match(again.stdout, /already cancelled/);
});

test('cli: a graph whose process died is shown as such and cannot be cancelled', async (t) => {
  const data = await dataDir(t);
  const dead = spawn(process.execPath, ['-e', '0']);
  const pid = dead.pid!;
  await new Promise((r) => dead.once('exit', r));
  const files = new GraphFiles(join(data, 'tasks'));
  const graph = new TaskGraph({ stream: () => assert.fail('nothing runs') }, { name: 'orphan', tasks: [{ id: 'a', kind: 'call', plugin: 'p', action: 'x' }] });
  await files.write({ ...graph.status(), status: 'running', pid });
  const ls = ndjson((await cli(['ls', '--json', '--data', data])).stdout);
  assert.deepEqual(ls.map((g) => [g.id, g.status, g.alive]), [[graph.id, 'running', false]]);
  const human = await cli(['ls', '--data', data]);
  assert.match(human.stdout, new RegExp(`process ${pid} gone`));
  const cancel = await cli(['cancel', graph.id, '--data', data]);
  assert.equal(cancel.code, 1);
  assert.match(cancel.stderr, /ERR_TASK_NOT_FOUND: .*not running/);
});

test('when the host cannot resume (ERR_RESUME_FAILED), the retry restarts and still delivers each seq once', async () => {
  const seqs = (from: number, to: number): Chunk[] => Array.from({ length: to - from }, (_, k) => ({ seq: from + k, data: from + k }));
  const calls: string[] = [];
  const host: TaskHost = {
    stream() {
      calls.push('stream');
      return calls.length === 1 ? new ScriptedStream('first', seqs(0, 4), new SluiceError('ERR_SANDBOX_CRASHED'), 2) : new ScriptedStream('second', seqs(0, 6), undefined, undefined);
    },
    resume(streamId) {
      calls.push(`resume:${streamId}`);
      throw new SluiceError('ERR_RESUME_FAILED', 'already ended');
    },
  };
  const { info, graph } = await run(host, { tasks: [{ id: 'd', kind: 'stream', plugin: 'x', action: 'y', durability: 'checkpoint', retry: { max: 1, backoffMs: 0 } }] });
  assert.equal(info.tasks[0]!.status, 'done');
  assert.deepEqual(calls, ['stream', 'resume:first', 'stream']);
  assert.deepEqual(graph.output('d'), [0, 1, 2, 3, 4, 5]);
  const second = info.tasks[0]!.attempts[1]!;
  assert.equal(second.resumedFrom, undefined);
  assert.equal(second.resumeError?.code, 'ERR_RESUME_FAILED');
});
