/**
 * Stream operators: pull-based transforms and combinators over any `AsyncIterable`
 * (host streams included). Backpressure is preserved (nothing reads a source faster
 * than its consumer, every buffer is bounded) and cancellation flows both ways.
 */
export type { Operator } from './internal.js';
export { map, filter, scan, reduce, take, skip, window } from './transform.js';
export type { MapOptions, WindowOptions } from './transform.js';
export { batch, throttle } from './timed.js';
export type { BatchOptions, ThrottleOptions } from './timed.js';
export { merge, zip, concat, race } from './combine.js';
export { tee, split } from './tee.js';
export type { Branch, BranchPolicy, FanoutOptions, SplitByKeyOptions } from './tee.js';
export { pipe, withSignal, defer, toArray } from './pipe.js';
export type { PipeOptions, ToArrayOptions } from './pipe.js';
export { buildPipeline } from './pipeline.js';
export type { PipelineDeps, BuildOptions } from './pipeline.js';
