/**
 * Run a parsed pipeline description (`protocol/pipeline.ts`) with the operators.
 * Plugin sources and plugin steps come from `deps.stream`, so the host decides how a
 * plugin runs; everything else is local operators. Nothing starts before the result
 * is iterated, and returning it returns every plugin stream it opened.
 */
import { assertNever } from '../../protocol/assert.js';
import { SluiceError } from '../../protocol/errors.js';
import type { JsonValue, Pipeline, SourceSpec, Step } from '../../protocol/pipeline.js';
import { compileCondition, compileProjection } from './expr.js';
import { concat, merge, zip } from './combine.js';
import type { Operator } from './internal.js';
import { defer, pipe, withSignal } from './pipe.js';
import { batch, throttle } from './timed.js';
import { filter, map, skip, take, window } from './transform.js';

export interface PipelineDeps {
  /**
   * Start a plugin stream. `input`, when given, is the stream so far, to be consumed
   * by the action (a plugin step). Called only when the pipeline is iterated.
   */
  stream(plugin: string, action: string, params: JsonValue | undefined, input?: AsyncIterable<unknown>): AsyncIterable<{ seq: number; data: unknown }>;
}

export interface BuildOptions {
  /** Aborting cancels every plugin stream of the pipeline; the consumer's read rejects with `signal.reason`. */
  signal?: AbortSignal;
}

const chunkData = map((c: { seq: number; data: unknown }) => c.data);

function pluginStream(deps: PipelineDeps, plugin: string, action: string, params: JsonValue | undefined, input?: AsyncIterable<unknown>): AsyncIterable<unknown> {
  return chunkData(defer(() => deps.stream(plugin, action, params, input)));
}

function buildSource(spec: SourceSpec, deps: PipelineDeps): AsyncIterable<unknown> {
  if ('plugin' in spec) return pluginStream(deps, spec.plugin, spec.action, spec.params);
  if ('merge' in spec) return merge(...spec.merge.map((s) => buildSource(s, deps)));
  if ('concat' in spec) return concat(...spec.concat.map((s) => buildSource(s, deps)));
  if ('zip' in spec) return zip(...spec.zip.map((s) => buildSource(s, deps)));
  return applySteps(buildSource(spec.source, deps), spec.steps, deps);
}

function stepOperator(step: Step, deps: PipelineDeps): Operator<unknown, unknown> {
  switch (step.op) {
    case 'filter':
      return filter(compileCondition(step.where));
    case 'map':
      return map(compileProjection(step));
    case 'batch':
      return batch(step.ms === undefined ? { count: step.count } : { count: step.count, ms: step.ms });
    case 'window':
      return window(step.slide === undefined ? { count: step.count } : { count: step.count, slide: step.slide });
    case 'take':
      return take(step.count);
    case 'skip':
      return skip(step.count);
    case 'throttle':
      return throttle({ ms: step.ms });
    case 'plugin': {
      const { plugin, action, params } = step;
      return (upstream) => pluginStream(deps, plugin, action, params, upstream);
    }
    default:
      return assertNever(step, 'pipeline step');
  }
}

function applySteps(source: AsyncIterable<unknown>, steps: readonly Step[], deps: PipelineDeps): AsyncIterable<unknown> {
  let out = source;
  for (const step of steps) out = stepOperator(step, deps)(out);
  return out;
}

/**
 * Turn a parsed pipeline into an async iterable of the final items (chunk `data`
 * values after every step; zip yields arrays, batch and window yield arrays).
 *
 * @example
 * const out = buildPipeline(parsePipeline(body), { stream: (p, a, params, input) => host.stream(p, a, params, { input }) }, { signal });
 * for await (const item of out) send(item);
 */
export function buildPipeline(p: Pipeline, deps: PipelineDeps, options: BuildOptions = {}): AsyncIterable<unknown> {
  if (deps === null || typeof deps !== 'object' || typeof deps.stream !== 'function') {
    throw new SluiceError('ERR_INVALID_ARGUMENT', 'Expected `deps.stream` to be a function', { details: { field: 'deps.stream' } });
  }
  const out = applySteps(buildSource(p.source, deps), p.steps, deps);
  return options.signal === undefined ? out : pipe(out, withSignal(options.signal));
}
