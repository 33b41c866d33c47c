/**
 * The task-graph description (a JSON task file, or the same object from code) and its
 * parser. Parsing is the trust boundary: whatever comes back is well-formed, every id is
 * unique, every dependency exists and the dependencies form no cycle, so the runner
 * never discovers a bad graph half-way through.
 *
 * Errors name the field: `tasks.fetch.retry.max` once a task's id is known, `tasks[3].id`
 * before. Unknown fields are rejected (a typo such as `dependOn` would otherwise be a
 * silently ignored dependency).
 */
import { assertInteger, assertNumber, assertObject, assertOneOf, assertString, fail, isObject, type Obj } from '../../protocol/assert.js';
import { SluiceError, isErrorCode, isSluiceError, type ErrorCode } from '../../protocol/errors.js';
import { parsePipeline, type Pipeline } from '../../protocol/pipeline.js';
import { parsePartialLimits, type Limits } from '../../protocol/limits.js';
import type { SandboxKind } from '../../sandbox/sdk.js';
import type { Durability, Priority } from '../types.js';
import { checkGraph, findCycle } from './graph.js';

export const TASK_KINDS = ['call', 'stream', 'pipeline'] as const;
export type TaskKind = (typeof TASK_KINDS)[number];
/** What happens to a stream task's chunks when no sink is given: kept (bounded) or only counted. */
export const OUTPUT_MODES = ['collect', 'discard'] as const;
export type OutputMode = (typeof OUTPUT_MODES)[number];

const PRIORITY_VALUES: readonly Priority[] = ['high', 'normal', 'low'];
const SANDBOXES: readonly SandboxKind[] = ['worker', 'isolate'];
const DURABILITIES: readonly Durability[] = ['none', 'checkpoint', 'log'];
const CODE: ErrorCode = 'ERR_TASK_INVALID';
/** Ids become CLI arguments and file names; `/` is kept for `graph/task` addressing. */
const ID_PATTERN = /^[A-Za-z0-9_.:-]{1,128}$/;

export const TASK_LIMITS = Object.freeze({
  maxTasks: 10_000,
  maxDependencies: 1_000,
  maxRetries: 100,
  maxBackoffMs: 24 * 60 * 60 * 1000,
  maxConcurrency: 10_000,
});

export interface RetryPolicy {
  /** Retries after the first attempt (0 = none). */
  readonly max: number;
  /** Delay before the first retry, before jitter. */
  readonly backoffMs: number;
  /** Each further retry waits `factor` times longer, up to `maxBackoffMs`. */
  readonly factor: number;
  readonly maxBackoffMs: number;
  /** Fraction of the delay that is random: 0 = exact, 1 = anywhere in [0, delay]. */
  readonly jitter: number;
  /** Codes retried besides the retriable ones (ERR_SANDBOX_CRASHED...), e.g. ERR_PLUGIN_THREW. */
  readonly on: readonly ErrorCode[];
}

export const DEFAULT_RETRY: RetryPolicy = Object.freeze({ max: 0, backoffMs: 100, factor: 2, maxBackoffMs: 30_000, jitter: 0.5, on: Object.freeze([]) });

/** Bounds on what a `collect` task keeps in memory; enforced by the host as stream limits. */
export interface CollectBounds {
  readonly maxChunks: number;
  readonly maxBytes: number;
}

export const DEFAULT_COLLECT: CollectBounds = Object.freeze({ maxChunks: 10_000, maxBytes: 16 * 1024 * 1024 });

interface TaskBase {
  readonly id: string;
  readonly priority: Priority;
  /** Tasks that must be done before this one starts. */
  readonly dependsOn: readonly string[];
  readonly retry: RetryPolicy;
  readonly sandbox?: SandboxKind;
  readonly limits?: Partial<Limits>;
}

/** A unary action (or a streaming one collected into an array): its output is the result. */
export interface CallTaskSpec extends TaskBase {
  readonly kind: 'call';
  readonly plugin: string;
  readonly action: string;
  readonly params: unknown;
  readonly collect: CollectBounds;
  /** Another task (stream or pipeline) whose output the action reads as `params.input`. */
  readonly input?: string;
}

export interface StreamTaskSpec extends TaskBase {
  readonly kind: 'stream';
  readonly plugin: string;
  readonly action: string;
  readonly params: unknown;
  readonly output: OutputMode;
  readonly collect: CollectBounds;
  readonly durability: Durability;
  /**
   * Another task (stream or pipeline) whose output this one reads as `params.input`
   * (StreamOptions.input). Both run at once; see `inputChains` and the runner.
   */
  readonly input?: string;
}

/** A pipeline (protocol/pipeline.ts), built by the runner with the host's streams. */
export interface PipelineTaskSpec extends TaskBase {
  readonly kind: 'pipeline';
  readonly pipeline: Pipeline;
  readonly output: OutputMode;
  readonly collect: CollectBounds;
}

export type TaskSpec = CallTaskSpec | StreamTaskSpec | PipelineTaskSpec;

export interface GraphSpec {
  /** A name for status output and the data folder; the runner makes one up when absent. */
  readonly name?: string;
  /** Tasks of this graph in flight at once (queued in the host or running). */
  readonly concurrency?: number;
  /** Cancel the rest of the graph when a task fails. */
  readonly failFast: boolean;
  readonly tasks: readonly TaskSpec[];
}

const GRAPH_KEYS = new Set(['$schema', 'version', 'name', 'concurrency', 'failFast', 'defaults', 'tasks']);
const DEFAULT_KEYS = new Set(['priority', 'sandbox', 'retry', 'collect']);
const COMMON_KEYS = ['id', 'kind', 'priority', 'dependsOn', 'retry', 'sandbox', 'limits', 'description'];
const TASK_KEYS: Record<TaskKind, Set<string>> = {
  call: new Set([...COMMON_KEYS, 'plugin', 'action', 'params', 'collect', 'input']),
  stream: new Set([...COMMON_KEYS, 'plugin', 'action', 'params', 'output', 'collect', 'durability', 'input']),
  pipeline: new Set([...COMMON_KEYS, 'pipeline', 'output', 'collect']),
};
const RETRY_KEYS = new Set(['max', 'backoffMs', 'factor', 'maxBackoffMs', 'jitter', 'on']);
const COLLECT_KEYS = new Set(['maxChunks', 'maxBytes']);

function assertKnownKeys(value: Obj, allowed: Set<string>, field: string): void {
  for (const key of Object.keys(value)) {
    // An undefined value is an absent field (as in JSON), not a typo.
    if (!allowed.has(key) && value[key] !== undefined) {
      throw new SluiceError(CODE, `Unknown field \`${field}.${key}\` (allowed: ${[...allowed].join(', ')})`, { details: { field: `${field}.${key}` } });
    }
  }
}

function assertId(value: unknown, field: string): asserts value is string {
  if (typeof value !== 'string' || !ID_PATTERN.test(value)) fail(CODE, field, 'an id of 1-128 letters, digits, `_`, `.`, `:` or `-`', value);
}

/** Parse a retry policy over `base` (the graph default, or DEFAULT_RETRY). */
export function parseRetry(value: unknown, field: string, base: RetryPolicy = DEFAULT_RETRY): RetryPolicy {
  if (value === undefined) return base;
  assertObject(value, field, CODE);
  assertKnownKeys(value, RETRY_KEYS, field);
  const out = { ...base };
  if (value.max !== undefined) {
    assertInteger(value.max, `${field}.max`, CODE, 0, TASK_LIMITS.maxRetries);
    out.max = value.max;
  }
  if (value.backoffMs !== undefined) {
    assertInteger(value.backoffMs, `${field}.backoffMs`, CODE, 0, TASK_LIMITS.maxBackoffMs);
    out.backoffMs = value.backoffMs;
  }
  if (value.factor !== undefined) {
    assertNumber(value.factor, `${field}.factor`, CODE, 1, 100);
    out.factor = value.factor;
  }
  if (value.maxBackoffMs !== undefined) {
    assertInteger(value.maxBackoffMs, `${field}.maxBackoffMs`, CODE, 0, TASK_LIMITS.maxBackoffMs);
    out.maxBackoffMs = value.maxBackoffMs;
  }
  if (value.jitter !== undefined) {
    assertNumber(value.jitter, `${field}.jitter`, CODE, 0, 1);
    out.jitter = value.jitter;
  }
  if (value.on !== undefined) {
    if (!Array.isArray(value.on)) fail(CODE, `${field}.on`, 'an array of error codes', value.on);
    value.on.forEach((code, i) => {
      if (!isErrorCode(code)) fail(CODE, `${field}.on[${i}]`, 'an error code from protocol/ERRORS.md', code);
    });
    out.on = Object.freeze([...(value.on as ErrorCode[])]);
  }
  if (out.maxBackoffMs < out.backoffMs) fail(CODE, `${field}.maxBackoffMs`, `at least backoffMs (${out.backoffMs})`, out.maxBackoffMs);
  return Object.freeze(out);
}

function parseCollect(value: unknown, field: string, base: CollectBounds): CollectBounds {
  if (value === undefined) return base;
  assertObject(value, field, CODE);
  assertKnownKeys(value, COLLECT_KEYS, field);
  const out = { ...base };
  if (value.maxChunks !== undefined) {
    assertInteger(value.maxChunks, `${field}.maxChunks`, CODE, 1);
    out.maxChunks = value.maxChunks;
  }
  if (value.maxBytes !== undefined) {
    assertInteger(value.maxBytes, `${field}.maxBytes`, CODE, 1);
    out.maxBytes = value.maxBytes;
  }
  return Object.freeze(out);
}

interface Defaults {
  priority: Priority;
  sandbox: SandboxKind | undefined;
  retry: RetryPolicy;
  collect: CollectBounds;
}

function parseDefaults(value: unknown): Defaults {
  const out: Defaults = { priority: 'normal', sandbox: undefined, retry: DEFAULT_RETRY, collect: DEFAULT_COLLECT };
  if (value === undefined) return out;
  assertObject(value, 'defaults', CODE);
  assertKnownKeys(value, DEFAULT_KEYS, 'defaults');
  if (value.priority !== undefined) {
    assertOneOf(value.priority, PRIORITY_VALUES, 'defaults.priority', CODE);
    out.priority = value.priority;
  }
  if (value.sandbox !== undefined) {
    assertOneOf(value.sandbox, SANDBOXES, 'defaults.sandbox', CODE);
    out.sandbox = value.sandbox;
  }
  out.retry = parseRetry(value.retry, 'defaults.retry');
  out.collect = parseCollect(value.collect, 'defaults.collect', DEFAULT_COLLECT);
  return out;
}

/** ERR_PIPELINE_INVALID from the pipeline parser, its field prefixed with the task's. */
function parseTaskPipeline(value: unknown, field: string): Pipeline {
  try {
    return parsePipeline(value);
  } catch (err) {
    if (!isSluiceError(err)) throw err;
    const inner = typeof err.details?.field === 'string' && err.details.field !== '' ? `${field}.${err.details.field}` : field;
    throw new SluiceError(err.code, `\`${field}\`: ${err.message}`, { cause: err, details: { ...err.details, field: inner } });
  }
}

function parseDependsOn(value: unknown, field: string): string[] {
  if (value === undefined) return [];
  if (!Array.isArray(value)) fail(CODE, field, 'an array of task ids', value);
  if (value.length > TASK_LIMITS.maxDependencies) fail(CODE, field, `at most ${TASK_LIMITS.maxDependencies} ids`, value);
  const seen = new Set<string>();
  value.forEach((dep, i) => {
    assertId(dep, `${field}[${i}]`);
    if (seen.has(dep)) throw new SluiceError(CODE, `\`${field}\` lists \`${dep}\` twice`, { details: { field: `${field}[${i}]` } });
    seen.add(dep);
  });
  return [...seen];
}

function parseTask(value: unknown, index: number, defaults: Defaults): TaskSpec {
  assertObject(value, `tasks[${index}]`, CODE);
  assertId(value.id, `tasks[${index}].id`);
  const field = `tasks.${value.id}`;
  assertOneOf(value.kind, TASK_KINDS, `${field}.kind`, CODE);
  const kind = value.kind;
  assertKnownKeys(value, TASK_KEYS[kind], field);
  if (value.description !== undefined) assertString(value.description, `${field}.description`, CODE, 4096);
  let priority = defaults.priority;
  if (value.priority !== undefined) {
    assertOneOf(value.priority, PRIORITY_VALUES, `${field}.priority`, CODE);
    priority = value.priority;
  }
  let sandbox = defaults.sandbox;
  if (value.sandbox !== undefined) {
    assertOneOf(value.sandbox, SANDBOXES, `${field}.sandbox`, CODE);
    sandbox = value.sandbox;
  }
  const base: TaskBase = {
    id: value.id,
    priority,
    dependsOn: Object.freeze(parseDependsOn(value.dependsOn, `${field}.dependsOn`)),
    retry: parseRetry(value.retry, `${field}.retry`, defaults.retry),
    ...(sandbox === undefined ? {} : { sandbox }),
    ...(value.limits === undefined ? {} : { limits: parsePartialLimits(value.limits, `${field}.limits`, CODE) }),
  };
  const collect = parseCollect(value.collect, `${field}.collect`, defaults.collect);
  let output: OutputMode = 'collect';
  if (value.output !== undefined) {
    assertOneOf(value.output, OUTPUT_MODES, `${field}.output`, CODE);
    output = value.output;
  }
  if (kind === 'pipeline') {
    return Object.freeze({ ...base, kind, pipeline: parseTaskPipeline(value.pipeline, `${field}.pipeline`), output, collect });
  }
  assertString(value.plugin, `${field}.plugin`, CODE);
  assertString(value.action, `${field}.action`, CODE, 256);
  const params = value.params ?? {};
  let input: { input: string } | object = {};
  if (value.input !== undefined) {
    assertId(value.input, `${field}.input`);
    input = { input: value.input };
  }
  if (kind === 'call') return Object.freeze({ ...base, kind, plugin: value.plugin, action: value.action, params, collect, ...input });
  let durability: Durability = 'none';
  if (value.durability !== undefined) {
    assertOneOf(value.durability, DURABILITIES, `${field}.durability`, CODE);
    durability = value.durability;
  }
  return Object.freeze({ ...base, kind, plugin: value.plugin, action: value.action, params, output, collect, durability, ...input });
}

/**
 * Parse and check a task graph: shape, unique ids, known dependencies (ERR_TASK_NOT_FOUND),
 * no cycle (ERR_TASK_CYCLE, naming it). Shape errors are ERR_TASK_INVALID naming the field.
 *
 * @example
 * const spec = parseTaskGraph(JSON.parse(await readFile('tasks.json', 'utf8')));
 */
export function parseTaskGraph(data: unknown): GraphSpec {
  if (!isObject(data)) fail(CODE, 'task graph', 'an object with a `tasks` array', data);
  assertKnownKeys(data, GRAPH_KEYS, 'graph');
  if (data.version !== undefined && data.version !== 1) fail(CODE, 'version', '1', data.version);
  if (data.name !== undefined) assertId(data.name, 'name');
  if (data.concurrency !== undefined) assertInteger(data.concurrency, 'concurrency', CODE, 1, TASK_LIMITS.maxConcurrency);
  if (data.failFast !== undefined && typeof data.failFast !== 'boolean') fail(CODE, 'failFast', 'a boolean', data.failFast);
  const defaults = parseDefaults(data.defaults);
  if (!Array.isArray(data.tasks) || data.tasks.length === 0) fail(CODE, 'tasks', 'a non-empty array of tasks', data.tasks);
  if (data.tasks.length > TASK_LIMITS.maxTasks) fail(CODE, 'tasks', `at most ${TASK_LIMITS.maxTasks} tasks`, data.tasks);
  const tasks: TaskSpec[] = [];
  const seen = new Set<string>();
  data.tasks.forEach((value: unknown, i: number) => {
    const task = parseTask(value, i, defaults);
    if (seen.has(task.id)) throw new SluiceError(CODE, `Task id \`${task.id}\` is used twice (tasks[${i}])`, { details: { field: `tasks[${i}].id`, task: task.id } });
    seen.add(task.id);
    tasks.push(task);
  });
  checkInputs(tasks);
  checkGraph(tasks.map((t) => ({ id: t.id, dependsOn: edgesOf(t) })));
  checkChains(tasks);
  return Object.freeze({
    ...(data.name === undefined ? {} : { name: data.name as string }),
    ...(data.concurrency === undefined ? {} : { concurrency: data.concurrency as number }),
    failFast: data.failFast === true,
    tasks: Object.freeze(tasks),
  });
}

/** The task whose output `task` reads as its input, if any. */
export function inputOf(task: TaskSpec): string | undefined {
  return task.kind === 'pipeline' ? undefined : task.input;
}

/** A task's incoming edges: its dependencies, and the task it reads its input from. */
export function edgesOf(task: TaskSpec): readonly string[] {
  const input = inputOf(task);
  return input !== undefined && !task.dependsOn.includes(input) ? [...task.dependsOn, input] : task.dependsOn;
}

/**
 * A stream is iterable once, so a task's output feeds at most one `input`; an input
 * cannot be replayed, so neither end of an input edge may be durable (a resumed
 * producer would hand its new reader a stream with its start missing).
 */
function checkInputs(tasks: readonly TaskSpec[]): void {
  const byId = new Map(tasks.map((t) => [t.id, t]));
  const readers = new Map<string, string>();
  for (const task of tasks) {
    const input = inputOf(task);
    if (input === undefined) continue;
    const field = `tasks.${task.id}.input`;
    const source = byId.get(input);
    if (source === undefined) continue; // checkGraph reports the unknown id
    if (source.kind === 'call') {
      throw new SluiceError(CODE, `\`${field}\` names \`${source.id}\`, a call task; only a stream or pipeline task can be an input`, { details: { field } });
    }
    const other = readers.get(source.id);
    if (other !== undefined) {
      throw new SluiceError(CODE, `Task \`${source.id}\` is already the input of \`${other}\`; a stream can be read once (\`${field}\`)`, { details: { field } });
    }
    if (task.kind === 'stream' && task.durability !== 'none') {
      throw new SluiceError(CODE, `\`tasks.${task.id}.durability\` must be 'none' for a task with an input (an input cannot be replayed on resume)`, { details: { field: `tasks.${task.id}.durability` } });
    }
    if (source.kind === 'stream' && source.durability !== 'none') {
      throw new SluiceError(CODE, `\`tasks.${source.id}.durability\` must be 'none': its output is \`${task.id}\`'s input, which cannot be replayed on resume`, {
        details: { field: `tasks.${source.id}.durability` },
      });
    }
    readers.set(source.id, task.id);
  }
}

/**
 * Tasks joined by input edges, each chain from its first producer to its last reader
 * (`[count, double, sum]` for `double.input = count`, `sum.input = double`); a task on
 * no input edge is a chain of one. Input edges form paths (one input per task, one
 * reader per output, no cycles), so every task is in exactly one chain. The runner
 * starts a chain's tasks together.
 */
export function inputChains(tasks: readonly TaskSpec[]): string[][] {
  const hasSource = new Set<string>();
  const readerOf = new Map<string, string>();
  for (const task of tasks) {
    const input = inputOf(task);
    if (input === undefined) continue;
    hasSource.add(task.id);
    readerOf.set(input, task.id);
  }
  const chains: string[][] = [];
  for (const task of tasks) {
    if (hasSource.has(task.id)) continue;
    const chain = [task.id];
    for (let r = readerOf.get(task.id); r !== undefined; r = readerOf.get(r)) chain.push(r);
    chains.push(chain);
  }
  return chains;
}

/**
 * A chain runs as one unit, so a task may not wait (`dependsOn`) for another task of
 * its own chain, directly or through tasks outside it: the chain could never start.
 * The second case is a cycle once each chain is seen as one node.
 */
function checkChains(tasks: readonly TaskSpec[]): void {
  const chains = inputChains(tasks);
  if (chains.length === tasks.length) return; // no input edges
  const chainOf = new Map<string, number>();
  chains.forEach((chain, i) => chain.forEach((id) => chainOf.set(id, i)));
  const name = (i: number): string => chains[i]!.join('+');
  const deps = chains.map(() => new Set<string>());
  for (const task of tasks) {
    const own = chainOf.get(task.id)!;
    for (const dep of task.dependsOn) {
      const other = chainOf.get(dep)!;
      if (other !== own) deps[own]!.add(name(other));
      else if (dep !== inputOf(task)) {
        throw new SluiceError(
          CODE,
          `\`tasks.${task.id}.dependsOn\` names \`${dep}\`, which streams together with it (input chain ${chains[own]!.join(' -> ')}); a task cannot wait for a task that runs alongside it`,
          { details: { field: `tasks.${task.id}.dependsOn`, chain: chains[own] } },
        );
      }
    }
  }
  const cycle = findCycle(chains.map((_, i) => ({ id: name(i), dependsOn: [...deps[i]!] })));
  if (cycle !== undefined) {
    throw new SluiceError('ERR_TASK_CYCLE', `Tasks joined by input edges run together (shown as a+b), so these dependencies form a cycle: ${cycle.join(' -> ')}`, { details: { cycle } });
  }
}
