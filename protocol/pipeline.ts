/**
 * The declarative pipeline description: JSON a client can send to run plugins through
 * operators, and its parser. Functions cannot travel as JSON, so filter and map steps
 * use a small expression language that the host evaluates itself (never `eval` or
 * `new Function`): field paths, comparisons and boolean logic.
 *
 * ```json
 * { "version": 1,
 *   "source": { "merge": [ { "plugin": "logs", "action": "tail", "params": { "app": "a" } },
 *                          { "plugin": "logs", "action": "tail", "params": { "app": "b" } } ] },
 *   "steps": [ { "op": "filter", "where": { "or": [ { "field": "level", "eq": "error" },
 *                                                   { "field": "latency.ms", "gte": 500 } ] } },
 *              { "op": "map", "pick": ["app", "message"] },
 *              { "op": "batch", "count": 100, "ms": 250 } ] }
 * ```
 *
 * Items flowing through a pipeline are the chunks' `data`. A field path is a dotted
 * string (`"user.name"`, `"items.0.id"`) or an array of segments (`["a.b", 0]`); the
 * empty array `[]` is the item itself. Paths see own properties only, and the
 * segments `__proto__`, `prototype` and `constructor` are rejected.
 *
 * Pure TypeScript: no Node or package imports.
 */
import { assertInteger, assertObject, assertOneOf, assertString, fail, isObject, type Obj } from './assert.js';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** A dotted string or an array of segments; `[]` is the item itself. */
export type FieldPath = string | readonly (string | number)[];

export type Comparison =
  | { field: FieldPath; eq: JsonValue }
  | { field: FieldPath; ne: JsonValue }
  | { field: FieldPath; lt: number | string }
  | { field: FieldPath; lte: number | string }
  | { field: FieldPath; gt: number | string }
  | { field: FieldPath; gte: number | string }
  | { field: FieldPath; in: JsonValue[] }
  | { field: FieldPath; exists: boolean };

export type Condition = Comparison | { and: Condition[] } | { or: Condition[] } | { not: Condition };

export const COMPARISON_OPS = ['eq', 'ne', 'lt', 'lte', 'gt', 'gte', 'in', 'exists'] as const;
export type ComparisonOp = (typeof COMPARISON_OPS)[number];

export interface PluginSource {
  plugin: string;
  action: string;
  params?: JsonValue;
}

export type SourceSpec =
  | PluginSource
  | { merge: SourceSpec[] }
  | { concat: SourceSpec[] }
  | { zip: SourceSpec[] }
  /** A source with its own steps (e.g. filter each input before a merge). */
  | { source: SourceSpec; steps: Step[] };

export type Step =
  | { op: 'filter'; where: Condition }
  /** `pick`: a new object with only these fields (nested paths rebuild nesting); `get`: the value at a path. */
  | { op: 'map'; pick: FieldPath[] }
  | { op: 'map'; get: FieldPath }
  | { op: 'batch'; count: number; ms?: number }
  | { op: 'window'; count: number; slide?: number }
  | { op: 'take'; count: number }
  | { op: 'skip'; count: number }
  | { op: 'throttle'; ms: number }
  /** Feed the stream so far as input to a stream-consuming plugin action. */
  | { op: 'plugin'; plugin: string; action: string; params?: JsonValue };

export type StepOp = Step['op'];
export const STEP_OPS = ['filter', 'map', 'batch', 'window', 'take', 'skip', 'throttle', 'plugin'] as const satisfies readonly StepOp[];

export interface Pipeline {
  version: 1;
  source: SourceSpec;
  steps: Step[];
}

/** Bounds on a description, so a hostile one costs little to reject or run. */
export const PIPELINE_LIMITS = Object.freeze({
  maxSteps: 64,
  /** Plugin sources and plugin steps together. */
  maxPlugins: 64,
  maxSourceDepth: 8,
  maxConditionDepth: 16,
  maxConditionNodes: 256,
  maxPathSegments: 32,
  maxSegmentLength: 256,
  maxPick: 256,
  maxInValues: 1024,
  maxJsonDepth: 32,
  maxJsonNodes: 10_000,
  maxName: 128,
  maxCount: 1_000_000,
  maxMs: 86_400_000,
});

const CODE = 'ERR_PIPELINE_INVALID';
const FORBIDDEN_SEGMENTS: readonly string[] = ['__proto__', 'prototype', 'constructor'];

interface Budget {
  plugins: number;
  nodes: number;
}

function onlyKeys(obj: Obj, allowed: readonly string[], path: string): void {
  for (const key of Object.keys(obj)) {
    if (!allowed.includes(key)) fail(CODE, path === '' ? key : `${path}.${key}`, `absent (allowed fields: ${allowed.join(', ')})`, obj[key]);
  }
}

function parseSegment(seg: unknown, path: string): string | number {
  if (typeof seg === 'number') {
    assertInteger(seg, path, CODE, 0, 2 ** 32 - 2);
    return seg;
  }
  assertString(seg, path, CODE, PIPELINE_LIMITS.maxSegmentLength);
  if (FORBIDDEN_SEGMENTS.includes(seg)) fail(CODE, path, 'a field name other than __proto__, prototype or constructor', seg);
  return seg;
}

export function parseFieldPath(value: unknown, path: string): FieldPath {
  if (typeof value === 'string') {
    assertString(value, path, CODE, PIPELINE_LIMITS.maxPathSegments * (PIPELINE_LIMITS.maxSegmentLength + 1));
    const segs = value.split('.');
    if (segs.length > PIPELINE_LIMITS.maxPathSegments) fail(CODE, path, `a path of at most ${PIPELINE_LIMITS.maxPathSegments} segments`, value);
    segs.forEach((s) => {
      if (s.length === 0) fail(CODE, path, 'a dotted path without empty segments', value);
      parseSegment(s, path);
    });
    return value;
  }
  if (!Array.isArray(value) || value.length > PIPELINE_LIMITS.maxPathSegments) {
    fail(CODE, path, `a dotted string or an array of at most ${PIPELINE_LIMITS.maxPathSegments} segments`, value);
  }
  return value.map((s, i) => parseSegment(s, `${path}[${i}]`));
}

/** Split a parsed path into segments (numbers stay numbers). */
export function pathSegments(path: FieldPath): readonly (string | number)[] {
  return typeof path === 'string' ? path.split('.') : path;
}

/** Deep copy of a JSON value: plain objects and arrays, finite numbers, bounded. */
export function parseJson(value: unknown, path: string, budget: { nodes: number } = { nodes: 0 }, depth = 0): JsonValue {
  if (++budget.nodes > PIPELINE_LIMITS.maxJsonNodes) fail(CODE, path, `JSON with at most ${PIPELINE_LIMITS.maxJsonNodes} values`, value);
  if (value === null || typeof value === 'boolean' || typeof value === 'string') return value;
  if (typeof value === 'number') {
    if (!Number.isFinite(value)) fail(CODE, path, 'a finite number', value);
    return value;
  }
  if (depth >= PIPELINE_LIMITS.maxJsonDepth) fail(CODE, path, `JSON nested at most ${PIPELINE_LIMITS.maxJsonDepth} deep`, value);
  if (Array.isArray(value)) return value.map((v, i) => parseJson(v, `${path}[${i}]`, budget, depth + 1));
  if (isObject(value)) {
    const proto = Object.getPrototypeOf(value) as unknown;
    if (proto !== Object.prototype && proto !== null) fail(CODE, path, 'a plain object', value);
    const out: { [key: string]: JsonValue } = {};
    for (const key of Object.keys(value)) {
      if (key === '__proto__') fail(CODE, `${path}.${key}`, 'absent (reserved key)', value[key]);
      out[key] = parseJson(value[key], `${path}.${key}`, budget, depth + 1);
    }
    return out;
  }
  return fail(CODE, path, 'JSON data', value);
}

function parseCondition(value: unknown, path: string, budget: Budget, depth: number): Condition {
  if (++budget.nodes > PIPELINE_LIMITS.maxConditionNodes) fail(CODE, path, `a condition of at most ${PIPELINE_LIMITS.maxConditionNodes} nodes`, value);
  if (depth >= PIPELINE_LIMITS.maxConditionDepth) fail(CODE, path, `a condition nested at most ${PIPELINE_LIMITS.maxConditionDepth} deep`, value);
  assertObject(value, path, CODE);
  const keys = Object.keys(value);
  for (const logic of ['and', 'or'] as const) {
    if (!(logic in value)) continue;
    onlyKeys(value, [logic], path);
    const list = value[logic];
    if (!Array.isArray(list) || list.length === 0) fail(CODE, `${path}.${logic}`, 'a non-empty array of conditions', list);
    const parsed = list.map((c, i) => parseCondition(c, `${path}.${logic}[${i}]`, budget, depth + 1));
    return logic === 'and' ? { and: parsed } : { or: parsed };
  }
  if ('not' in value) {
    onlyKeys(value, ['not'], path);
    return { not: parseCondition(value.not, `${path}.not`, budget, depth + 1) };
  }
  if (!('field' in value)) fail(CODE, path, 'a condition: { field, <op> }, { and }, { or } or { not }', value);
  const field = parseFieldPath(value.field, `${path}.field`);
  const ops = keys.filter((k) => k !== 'field');
  if (ops.length !== 1) fail(CODE, path, `a comparison with exactly one of ${COMPARISON_OPS.join(', ')}`, value);
  const op = ops[0]!;
  assertOneOf(op, COMPARISON_OPS, `${path}.${op}`, CODE);
  const operand = value[op];
  const at = `${path}.${op}`;
  switch (op) {
    case 'eq':
    case 'ne':
      return { field, [op]: parseJson(operand, at) } as Comparison;
    case 'lt':
    case 'lte':
    case 'gt':
    case 'gte':
      if (typeof operand === 'string') return { field, [op]: operand } as Comparison;
      if (typeof operand !== 'number' || !Number.isFinite(operand)) fail(CODE, at, 'a finite number or a string', operand);
      return { field, [op]: operand } as Comparison;
    case 'in':
      if (!Array.isArray(operand) || operand.length > PIPELINE_LIMITS.maxInValues) {
        fail(CODE, at, `an array of at most ${PIPELINE_LIMITS.maxInValues} values`, operand);
      }
      return { field, in: operand.map((v, i) => parseJson(v, `${at}[${i}]`)) };
    case 'exists':
      if (typeof operand !== 'boolean') fail(CODE, at, 'a boolean', operand);
      return { field, exists: operand };
  }
}

function parseName(value: unknown, path: string): string {
  assertString(value, path, CODE, PIPELINE_LIMITS.maxName);
  return value;
}

function parseCount(value: unknown, path: string, min: number): number {
  assertInteger(value, path, CODE, min, PIPELINE_LIMITS.maxCount);
  return value;
}

function parseMs(value: unknown, path: string): number {
  assertInteger(value, path, CODE, 1, PIPELINE_LIMITS.maxMs);
  return value;
}

function countPlugin(budget: Budget, path: string, value: unknown): void {
  if (++budget.plugins > PIPELINE_LIMITS.maxPlugins) fail(CODE, path, `part of a pipeline with at most ${PIPELINE_LIMITS.maxPlugins} plugins`, value);
}

function parseStep(value: unknown, path: string, budget: Budget): Step {
  assertObject(value, path, CODE);
  const op = value.op;
  assertOneOf(op, STEP_OPS, `${path}.op`, CODE);
  switch (op) {
    case 'filter':
      onlyKeys(value, ['op', 'where'], path);
      return { op, where: parseCondition(value.where, `${path}.where`, { plugins: 0, nodes: 0 }, 0) };
    case 'map': {
      onlyKeys(value, ['op', 'pick', 'get'], path);
      if (('pick' in value) === ('get' in value)) fail(CODE, path, 'a map step with exactly one of `pick` or `get`', value);
      if ('get' in value) return { op, get: parseFieldPath(value.get, `${path}.get`) };
      const pick = value.pick;
      if (!Array.isArray(pick) || pick.length === 0 || pick.length > PIPELINE_LIMITS.maxPick) {
        fail(CODE, `${path}.pick`, `a non-empty array of at most ${PIPELINE_LIMITS.maxPick} field paths`, pick);
      }
      return {
        op,
        pick: pick.map((p, i) => {
          const parsed = parseFieldPath(p, `${path}.pick[${i}]`);
          if (pathSegments(parsed).length === 0) fail(CODE, `${path}.pick[${i}]`, 'a path with at least one segment', p);
          return parsed;
        }),
      };
    }
    case 'batch': {
      onlyKeys(value, ['op', 'count', 'ms'], path);
      const step: Step = { op, count: parseCount(value.count, `${path}.count`, 1) };
      if (value.ms !== undefined) step.ms = parseMs(value.ms, `${path}.ms`);
      return step;
    }
    case 'window': {
      onlyKeys(value, ['op', 'count', 'slide'], path);
      const step: Step = { op, count: parseCount(value.count, `${path}.count`, 1) };
      if (value.slide !== undefined) step.slide = parseCount(value.slide, `${path}.slide`, 1);
      return step;
    }
    case 'take':
    case 'skip':
      onlyKeys(value, ['op', 'count'], path);
      return { op, count: parseCount(value.count, `${path}.count`, 0) };
    case 'throttle':
      onlyKeys(value, ['op', 'ms'], path);
      return { op, ms: parseMs(value.ms, `${path}.ms`) };
    case 'plugin': {
      onlyKeys(value, ['op', 'plugin', 'action', 'params'], path);
      countPlugin(budget, path, value);
      const step: Step = { op, plugin: parseName(value.plugin, `${path}.plugin`), action: parseName(value.action, `${path}.action`) };
      if (value.params !== undefined) step.params = parseJson(value.params, `${path}.params`);
      return step;
    }
  }
}

function parseSteps(value: unknown, path: string, budget: Budget): Step[] {
  if (value === undefined) return [];
  if (!Array.isArray(value) || value.length > PIPELINE_LIMITS.maxSteps) fail(CODE, path, `an array of at most ${PIPELINE_LIMITS.maxSteps} steps`, value);
  return value.map((s, i) => parseStep(s, `${path}[${i}]`, budget));
}

function parseSource(value: unknown, path: string, budget: Budget, depth: number): SourceSpec {
  if (depth >= PIPELINE_LIMITS.maxSourceDepth) fail(CODE, path, `a source nested at most ${PIPELINE_LIMITS.maxSourceDepth} deep`, value);
  assertObject(value, path, CODE);
  if ('plugin' in value) {
    onlyKeys(value, ['plugin', 'action', 'params'], path);
    countPlugin(budget, path, value);
    const src: PluginSource = { plugin: parseName(value.plugin, `${path}.plugin`), action: parseName(value.action, `${path}.action`) };
    if (value.params !== undefined) src.params = parseJson(value.params, `${path}.params`);
    return src;
  }
  for (const kind of ['merge', 'concat', 'zip'] as const) {
    if (!(kind in value)) continue;
    onlyKeys(value, [kind], path);
    const list = value[kind];
    if (!Array.isArray(list) || list.length === 0) fail(CODE, `${path}.${kind}`, 'a non-empty array of sources', list);
    const parsed = list.map((s, i) => parseSource(s, `${path}.${kind}[${i}]`, budget, depth + 1));
    return { [kind]: parsed } as SourceSpec;
  }
  if ('source' in value) {
    onlyKeys(value, ['source', 'steps'], path);
    return { source: parseSource(value.source, `${path}.source`, budget, depth + 1), steps: parseSteps(value.steps, `${path}.steps`, budget) };
  }
  return fail(CODE, path, 'a source: { plugin, action, params? }, { merge }, { concat }, { zip } or { source, steps }', value);
}

/**
 * Validate a pipeline description from an untrusted client. Returns a fresh copy
 * holding only the known fields; anything else is ERR_PIPELINE_INVALID naming the path
 * of the bad field in its message and in `details.field` (e.g. `steps[2].where.and[0].field`).
 *
 * @example
 * const p = parsePipeline(JSON.parse(body));
 */
export function parsePipeline(data: unknown): Pipeline {
  assertObject(data, 'pipeline', CODE);
  onlyKeys(data, ['version', 'source', 'steps'], '');
  if (data.version !== 1) fail(CODE, 'version', '1', data.version);
  const budget: Budget = { plugins: 0, nodes: 0 };
  const source = parseSource(data.source, 'source', budget, 0);
  const steps = parseSteps(data.steps, 'steps', budget);
  return { version: 1, source, steps };
}
