/**
 * What a task graph reports about itself: per-task status, attempts and summaries, and
 * the events it emits. Plain JSON data, so the CLI can print it, persist it and read it
 * back from another process.
 */
import type { ErrorCode } from '../../protocol/errors.js';
import type { Priority } from '../types.js';
import type { TaskKind } from './spec.js';

/**
 * - `pending`: the graph has not started.
 * - `waiting`: for dependencies to finish, or for a retry's backoff to pass.
 * - `queued`: ready; waiting for a graph slot or for the host to admit its stream.
 * - `running`: its stream runs in a sandbox.
 * - `done`, `failed`, `cancelled`: final.
 */
export const TASK_STATUSES = ['pending', 'waiting', 'queued', 'running', 'done', 'failed', 'cancelled'] as const;
export type TaskStatus = (typeof TASK_STATUSES)[number];
export type FinalStatus = 'done' | 'failed' | 'cancelled';
export type GraphStatus = 'pending' | 'running' | FinalStatus;

export function isFinal(status: TaskStatus): status is FinalStatus {
  return status === 'done' || status === 'failed' || status === 'cancelled';
}

export interface ErrorInfo {
  code: ErrorCode;
  message: string;
  details?: Record<string, unknown>;
}

/** One try at running a task. Times are epoch milliseconds (fractional: sub-ms order is kept). */
export interface AttemptInfo {
  /** 1 for the first try. */
  attempt: number;
  /** The host stream's id, when the attempt got one (none for pipelines). */
  streamId?: string;
  /** When it was handed to the host. */
  queuedAt: number;
  /** When the host started running it (admitted into a sandbox). */
  startedAt?: number;
  endedAt?: number;
  status: 'queued' | 'running' | FinalStatus;
  error?: ErrorInfo;
  /** Chunks and bytes the attempt produced (bytes as the host estimates them). */
  chunks: number;
  bytes: number;
  /** The checkpoint seq this attempt resumed from, when it resumed rather than restarted. */
  resumedFrom?: number;
  /** The last checkpoint seq the plugin stored during this attempt. */
  checkpoint?: number;
  /** Why the host could not resume, when the attempt restarted instead. */
  resumeError?: ErrorInfo;
}

export interface TaskInfo {
  id: string;
  kind: TaskKind;
  plugin?: string;
  action?: string;
  priority: Priority;
  dependsOn: string[];
  /** The task whose output this one reads as `params.input`. */
  input?: string;
  status: TaskStatus;
  attempts: AttemptInfo[];
  /** The error that made the task fail or be cancelled. */
  error?: ErrorInfo;
  /**
   * Chunks delivered to the task's output (collected, sunk or discarded), duplicates
   * from retries excluded; for a task whose output is another task's input, the items
   * that reader took in the last attempt.
   */
  chunks: number;
  bytes: number;
  /** While waiting out a retry's backoff: when the next attempt is due. */
  retryAt?: number;
}

export interface GraphInfo {
  /** The graph's id: its name plus a random suffix, unique per run. */
  id: string;
  name: string;
  status: GraphStatus;
  createdAt: number;
  startedAt?: number;
  endedAt?: number;
  /** The process running it (for `sluice tasks ls` reading persisted graphs). */
  pid: number;
  counts: Record<TaskStatus, number>;
  tasks: TaskInfo[];
}

/** Emitted for every task status change, in the order they happen. */
export interface TaskStatusEvent {
  graph: string;
  task: string;
  status: TaskStatus;
  previous: TaskStatus;
  /** The attempt the change belongs to (0 before the first). */
  attempt: number;
  at: number;
  error?: ErrorInfo;
  retryAt?: number;
}

export interface TaskGraphEvents {
  status: [TaskStatusEvent];
  /** The graph finished: every task is final and every stream it started has exited. */
  end: [GraphInfo];
}

/** Epoch milliseconds with sub-millisecond precision, monotonic within the process. */
export function now(): number {
  return performance.timeOrigin + performance.now();
}
