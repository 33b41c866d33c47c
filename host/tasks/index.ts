/**
 * Task graphs: DAGs of plugin calls, streams and pipelines run on a host, with
 * priorities, retries and cascading cancellation. The public surface of `host/tasks`.
 */
export { TaskGraph, type TaskGraphOptions, type TaskSink } from './runner.js';
export type { TaskHost } from './attempt.js';
export { parseTaskGraph, DEFAULT_RETRY, DEFAULT_COLLECT, TASK_LIMITS } from './spec.js';
export type { GraphSpec, TaskSpec, CallTaskSpec, StreamTaskSpec, PipelineTaskSpec, RetryPolicy, CollectBounds, TaskKind, OutputMode } from './spec.js';
export { GraphFiles, type StoredGraph, type CancelRequest } from './files.js';
export { TASK_STATUSES } from './state.js';
export type { TaskStatus, GraphStatus, TaskInfo, GraphInfo, AttemptInfo, ErrorInfo, TaskStatusEvent, TaskGraphEvents } from './state.js';
