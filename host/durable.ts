/**
 * What the host keeps for one live durable stream: its record in the store, its
 * checkpoints (written in order, behind the chunks before them), its log in `log`
 * mode, and retries of a dead sandbox that resume from the last checkpoint.
 */
import type { Logger } from 'pino';
import type { ChunkData } from '../protocol/chunk.js';
import { SluiceError, isSluiceError } from '../protocol/errors.js';
import type { Resume } from '../protocol/messages.js';
import type { RetryPolicy } from './options.js';
import type { Store, RetentionPolicy } from './store/store.js';
import type { DurableLog, HostStream } from './stream.js';
import type { Durability, StreamResult } from './types.js';

/** The shortest time between two checkpoint writes of one stream. */
const CHECKPOINT_INTERVAL_MS = 50;

export interface StartPoint {
  /** What the action gets as `ctx.resume`. */
  resume: Resume | undefined;
  /** First seq the plugin will produce. */
  startSeq: number;
  /** First seq consumers have not had: repeats below it are dropped. */
  tail: number;
}

export class DurableStream {
  readonly log: DurableLog | undefined;
  /** Resolves once the record is in the store (readers of a just-started stream wait for it). */
  readonly recorded: Promise<void>;
  #markRecorded!: () => void;
  /** Checkpoint writes in flight, so the stream's end is stored after them. */
  #checkpoints: Promise<unknown> = Promise.resolve();
  /** The newest checkpoint not yet written; older ones it replaced never will be (only the last one matters). */
  #pending: { seq: number; state: ChunkData } | undefined;
  #writing = false;
  #lastWrite = -Infinity;
  /** Ends the wait between two writes early (the stream ended, a retry needs the latest). */
  #hurry: (() => void) | undefined;
  #urgent = false;
  #attempts = 0;
  #retryTimer: NodeJS.Timeout | undefined;

  constructor(
    readonly store: Store,
    readonly stream: HostStream,
    readonly durability: Exclude<Durability, 'none'>,
    private readonly logger: Logger,
    resuming: boolean,
  ) {
    const id = stream.id;
    this.recorded = new Promise<void>((resolve) => (this.#markRecorded = resolve));
    if (resuming) this.#markRecorded();
    void stream.result.then(() => this.#markRecorded());
    if (durability === 'log') {
      this.log = { append: (first, chunks) => store.appendChunks(id, first, chunks as ChunkData[]), read: (fromSeq, signal) => store.read(id, { fromSeq, signal }) };
      stream.useLog(this.log);
    }
    stream.on('checkpoint', ({ seq, state }) => {
      this.#pending = { seq, state: state as ChunkData };
      if (!this.#writing) this.#checkpoints = this.#writeCheckpoints();
    });
  }

  /**
   * One checkpoint write at a time, always the newest: a plugin checkpointing every few
   * chunks costs one flushed write per flush interval, not one per checkpoint. Each write
   * is issued after the chunks before it were appended, so a stored checkpoint is never
   * ahead of the log.
   */
  async #writeCheckpoints(): Promise<void> {
    this.#writing = true;
    try {
      while (this.#pending !== undefined) {
        // Every commit costs the host thread time; a plugin checkpointing every few chunks
        // would otherwise keep one in flight at all times. A crash loses at most this much progress.
        const wait = CHECKPOINT_INTERVAL_MS - (performance.now() - this.#lastWrite);
        if (wait > 0 && !this.#urgent) {
          await new Promise<void>((resolve) => {
            const timer = setTimeout(resolve, wait);
            this.#hurry = () => {
              clearTimeout(timer);
              resolve();
            };
          });
          this.#hurry = undefined;
        }
        const { seq, state } = this.#pending!;
        this.#pending = undefined;
        this.#lastWrite = performance.now();
        await this.store.putCheckpoint({ streamId: this.stream.id, seq, state }).catch((err: unknown) => this.logger.error({ err, stream: this.stream.id }, 'checkpoint write failed'));
      }
    } finally {
      this.#writing = false;
    }
  }

  /** Write the newest checkpoint now (no waiting out the interval); resolves once stored. */
  drain(): Promise<unknown> {
    this.#urgent = true;
    this.#hurry?.();
    return this.#checkpoints.finally(() => {
      this.#urgent = false;
    });
  }

  /** Record a new stream with what a later host needs to start it again. */
  async create(params: ChunkData, options: { [key: string]: ChunkData }, retention: RetentionPolicy | undefined): Promise<void> {
    const s = this.stream;
    await this.store.createStream({ id: s.id, plugin: s.plugin, action: s.action, params, options, durability: this.durability, ...(retention !== undefined ? { retention } : {}), status: 'queued' });
    this.#markRecorded();
  }

  /** Where a run starts: the last checkpoint, and (in log mode) the log's tail. */
  async startPoint(): Promise<StartPoint> {
    await this.drain();
    const cp = this.store.getCheckpoint(this.stream.id);
    const startSeq = cp?.seq ?? 0;
    return {
      resume: cp === undefined ? undefined : { seq: cp.seq, state: cp.state },
      startSeq,
      // In log mode the log says what readers had; otherwise nobody had anything past the checkpoint.
      tail: this.log !== undefined ? this.store.logTail(this.stream.id) : Math.max(startSeq, this.stream.tail),
    };
  }

  running(): void {
    this.store.setStatus(this.stream.id, 'running').catch((err: unknown) => this.logger.error({ err, stream: this.stream.id }, 'store status update failed'));
  }

  /** Store the end, after pending checkpoints; an end that is really a host shutdown is not stored. */
  finished(result: StreamResult, hostClosing: boolean): Promise<unknown> {
    if (hostClosing || result.error?.code === 'ERR_HOST_CLOSED') {
      // The stream stays unfinished in the store, to be resumed by the next host from its newest checkpoint.
      this.stream.endReaders();
      return this.drain();
    }
    return this.drain()
      .then(() => this.store.setStatus(this.stream.id, result.status, result.error))
      .catch((err: unknown) => this.logger.error({ err, stream: this.stream.id }, 'store status update failed'));
  }

  /**
   * The sandbox died with a retriable error: run `restart` after a jittered, growing
   * delay. False when the policy's retries are spent.
   */
  retry(error: SluiceError, policy: RetryPolicy, restart: (from: StartPoint) => Promise<void>): boolean {
    if (this.#attempts >= policy.max) return false;
    this.#attempts++;
    const base = Math.min(policy.maxBackoffMs, policy.backoffMs * policy.factor ** (this.#attempts - 1));
    const delay = Math.round(base * (0.5 + Math.random() / 2));
    this.logger.warn({ stream: this.stream.id, code: error.code, attempt: this.#attempts, delayMs: delay }, 'retrying durable stream from its checkpoint');
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      void this.startPoint()
        .then(restart)
        .catch((err: unknown) =>
          this.stream.exit(isSluiceError(err) ? err : new SluiceError('ERR_SANDBOX_CRASHED', `Restarting the stream failed: ${(err as Error)?.message ?? String(err)}`, { cause: err })),
        );
    }, delay);
    return true;
  }

  /** Called when the stream is cancelled: a pending retry is dropped. True if there was one. */
  cancelRetry(): boolean {
    if (this.#retryTimer === undefined) return false;
    clearTimeout(this.#retryTimer);
    this.#retryTimer = undefined;
    return true;
  }
}
