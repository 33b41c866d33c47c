/**
 * Admission: at most `concurrency[kind]` streams run per sandbox kind, and their
 * memory limits add up to at most `memoryBudgetMb[kind]` (0 = no budget). The rest
 * wait in a bounded queue (ERR_QUEUE_FULL past `maxQueued`, never a growing backlog).
 *
 * Who goes next when a slot frees: higher priority first; within a priority, a
 * stream somebody is already reading from goes before one nobody consumes yet; then
 * first come, first served. A ticket whose memory does not fit the budget waits
 * without blocking smaller ones behind it.
 */
import { SluiceError } from '../protocol/errors.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import type { Priority } from './types.js';

export const PRIORITIES: readonly Priority[] = ['high', 'normal', 'low'];

export interface Ticket {
  readonly kind: SandboxKind;
  readonly priority: Priority;
  /** The memory limit the stream will run under, counted against the budget. */
  readonly memoryMb: number;
  /** Whether a consumer is waiting for this stream's chunks. */
  demanded(): boolean;
  /** Called once when admitted; the ticket then holds a slot until `release`. */
  start(): void;
}

export interface SchedulerOptions {
  concurrency: Readonly<Record<SandboxKind, number>>;
  memoryBudgetMb: Readonly<Record<SandboxKind, number>>;
  maxQueued: number;
}

export class Scheduler {
  readonly #running: Record<SandboxKind, number> = { worker: 0, isolate: 0 };
  readonly #memory: Record<SandboxKind, number> = { worker: 0, isolate: 0 };
  readonly #queues: Record<SandboxKind, Record<Priority, Ticket[]>> = {
    worker: { high: [], normal: [], low: [] },
    isolate: { high: [], normal: [], low: [] },
  };
  #queued = 0;

  constructor(private readonly options: SchedulerOptions) {}

  get queued(): number {
    return this.#queued;
  }

  running(kind: SandboxKind): number {
    return this.#running[kind];
  }

  memoryInUse(kind: SandboxKind): number {
    return this.#memory[kind];
  }

  #fits(ticket: Ticket): boolean {
    const budget = this.options.memoryBudgetMb[ticket.kind];
    // A single stream larger than the whole budget still runs alone rather than never.
    const memoryOk = budget <= 0 || this.#memory[ticket.kind] + ticket.memoryMb <= budget || this.#running[ticket.kind] === 0;
    return memoryOk && this.#running[ticket.kind] < this.options.concurrency[ticket.kind];
  }

  #admit(ticket: Ticket): void {
    this.#running[ticket.kind]++;
    this.#memory[ticket.kind] += ticket.memoryMb;
    ticket.start();
  }

  submit(ticket: Ticket): void {
    if (this.#fits(ticket)) {
      this.#admit(ticket);
      return;
    }
    if (this.#queued >= this.options.maxQueued) {
      throw new SluiceError('ERR_QUEUE_FULL', `Admission queue is full (${this.options.maxQueued} streams waiting)`, { details: { maxQueued: this.options.maxQueued } });
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

  /** A running ticket finished: admit whatever now fits. */
  release(ticket: Pick<Ticket, 'kind' | 'memoryMb'>): void {
    this.#running[ticket.kind]--;
    this.#memory[ticket.kind] -= ticket.memoryMb;
    this.#pump(ticket.kind);
  }

  /** A waiting stream got a consumer: it may now go first. */
  demandChanged(kind: SandboxKind): void {
    this.#pump(kind);
  }

  #pump(kind: SandboxKind): void {
    for (;;) {
      const next = this.#pick(kind);
      if (next === undefined) return;
      this.#admit(next);
    }
  }

  #pick(kind: SandboxKind): Ticket | undefined {
    for (const priority of PRIORITIES) {
      const queue = this.#queues[kind][priority];
      let fallback = -1;
      for (let i = 0; i < queue.length; i++) {
        const t = queue[i]!;
        if (!this.#fits(t)) continue;
        if (t.demanded()) return this.#take(queue, i);
        if (fallback < 0) fallback = i;
      }
      if (fallback >= 0) return this.#take(queue, fallback);
    }
    return undefined;
  }

  #take(queue: Ticket[], i: number): Ticket {
    this.#queued--;
    return queue.splice(i, 1)[0]!;
  }
}
