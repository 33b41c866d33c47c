/**
 * `sluice`: the host API. Everything not exported here is internal.
 */
export { Sluice } from './host.js';
export type { SluiceOptions, RetryPolicy } from './options.js';
export type { Chunk, Durability, PluginInfo, Priority, Progress, ReadEvent, SluiceStream, StreamEvents, StreamInfo, StreamOptions, StreamResult, StreamStatus } from './types.js';
export { SluiceError, errors, ERROR_CODES, type ErrorCode, type WireError } from '../protocol/errors.js';
export type { Limits } from '../protocol/limits.js';
export type { Window } from '../protocol/credit.js';
export { TaskGraph, parseTaskGraph, type TaskGraphOptions, type TaskHost, type GraphInfo, type TaskInfo, type TaskStatus } from './tasks/index.js';
export * as operators from './operators/index.js';
export { parsePipeline, type Pipeline } from '../protocol/pipeline.js';
export { buildPipeline } from './operators/pipeline.js';
