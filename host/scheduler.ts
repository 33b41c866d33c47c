/**
 * Admission: at most `concurrency[kind]` streams run per sandbox kind; the rest wait
 * in a priority queue (high, then normal, then low; first come first served within
 * a priority). The queue is bounded: a full queue is ERR_QUEUE_FULL at submit, not
 * a growing backlog.
 */
import { SluiceError } from '../protocol/errors.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import type { Priority } from './types.js';

export const PRIORITIES: readonly Priority[] = ['high', 'normal', 'low'];

export interface Ticket {
  readonly kind: SandboxKind;
  readonly priority: Priority;
  /** Called once when admitted; the ticket then holds a slot until `release`. */
  start(): void;
}

export class Scheduler {
  readonly #running: Record<SandboxKind, number> = { worker: 0, isolate: 0 };
  readonly #queues: Record<SandboxKind, Record<Priority, Ticket[]>> = {
    worker: { high: [], normal: [], low: [] },
    isolate: { high: [], normal: [], low: [] },
  };
  #queued = 0;

  constructor(
    private readonly concurrency: Readonly<Record<SandboxKind, number>>,
    private readonly maxQueued: number,
  ) {}

  get queued(): number {
    return this.#queued;
  }

  running(kind: SandboxKind): number {
    return this.#running[kind];
  }

  submit(ticket: Ticket): void {
    if (this.#running[ticket.kind] < this.concurrency[ticket.kind]) {
      this.#running[ticket.kind]++;
      ticket.start();
      return;
    }
    if (this.#queued >= this.maxQueued) {
      throw new SluiceError('ERR_QUEUE_FULL', `Admission queue is full (${this.maxQueued} streams waiting)`, { details: { maxQueued: this.maxQueued } });
    }
    this.#queues[ticket.kind][ticket.priority].push(ticket);
    this.#queued++;
  }

  /** Take a waiting ticket out of the queue; false when it was not waiting (already admitted). */
  remove(ticket: Ticket): boolean {
    const queue = this.#queues[ticket.kind][ticket.priority];
    const i = queue.indexOf(ticket);
    if (i < 0) return false;
    queue.splice(i, 1);
    this.#queued--;
    return true;
  }

  /** A running ticket finished: admit the next one of the same kind. */
  release(kind: SandboxKind): void {
    this.#running[kind]--;
    for (const priority of PRIORITIES) {
      const next = this.#queues[kind][priority].shift();
      if (next !== undefined) {
        this.#queued--;
        this.#running[kind]++;
        next.start();
        return;
      }
    }
  }

  /** Empty the queue (host closing); returns what was waiting. */
  drain(): Ticket[] {
    const out: Ticket[] = [];
    for (const kind of ['worker', 'isolate'] as const) {
      for (const priority of PRIORITIES) out.push(...this.#queues[kind][priority].splice(0));
    }
    this.#queued = 0;
    return out;
  }
}
