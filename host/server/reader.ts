/**
 * A subscription to a durable (`durability: 'log'`) stream: its own `host.read` from
 * the client's position, so every reader goes at its own pace and a slow one slows
 * nobody (the log, bounded by the store's retention, decouples them from the plugin).
 *
 * The loop asks the store for the next event only while the client has credit and
 * the socket is under its high watermark, so a stalled client holds one pending
 * batch at most.
 */
import type { ChunkData } from '../../protocol/chunk.js';
import type { ReadEvent } from '../types.js';
import type { ServerHost } from './types.js';
import { chunksFrameText, encodeChunkJson, endFrame, errorFrame, type Outlet, type Subscription } from './subscription.js';
import { isErrorCode, toWireError } from '../../protocol/errors.js';

export interface ReaderSpec {
  streamId: string;
  fromSeq: number;
  epoch?: string | undefined;
  credit: number;
  batch: { chunks: number; bytes: number };
}

export class ReaderSubscription implements Subscription {
  readonly streamId: string;
  credit: number;
  closed = false;
  readonly #host: ServerHost;
  readonly #outlet: Outlet;
  readonly #spec: ReaderSpec;
  readonly #abort = new AbortController();
  #wake: (() => void) | undefined;
  #jsons: string[] = [];
  #firstSeq = 0;
  #bytes = 0;
  #flushScheduled = false;

  constructor(host: ServerHost, outlet: Outlet, readonly sub: number, spec: ReaderSpec) {
    this.#host = host;
    this.#outlet = outlet;
    this.#spec = spec;
    this.streamId = spec.streamId;
    this.credit = Math.min(spec.credit, outlet.maxCredit);
  }

  start(): void {
    void this.#run();
  }

  grant(n: number): void {
    this.credit = Math.min(this.credit + n, this.#outlet.maxCredit);
    this.pump();
  }

  pump(): void {
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.#abort.abort();
    this.pump();
    this.#outlet.released(this);
  }

  #ready(): boolean {
    return this.credit > 0 && this.#outlet.writable;
  }

  #waitForDemand(): Promise<void> {
    return new Promise((resolve) => {
      this.#wake = resolve;
    });
  }

  #flush(): void {
    if (this.#jsons.length === 0 || this.closed) return;
    const jsons = this.#jsons;
    this.#jsons = [];
    this.#bytes = 0;
    this.#outlet.sendChunks(chunksFrameText(this.sub, this.#firstSeq, jsons), jsons.length);
  }

  #scheduleFlush(): void {
    if (this.#flushScheduled) return;
    this.#flushScheduled = true;
    // Gather what the store hands over without waiting, then send it as one frame.
    setImmediate(() => {
      this.#flushScheduled = false;
      this.#flush();
    });
  }

  #add(seq: number, data: ChunkData): void {
    const json = encodeChunkJson(data);
    if (this.#jsons.length > 0 && (seq !== this.#firstSeq + this.#jsons.length || this.#bytes + json.length > this.#spec.batch.bytes)) this.#flush();
    if (this.#jsons.length === 0) this.#firstSeq = seq;
    this.#jsons.push(json);
    this.#bytes += json.length;
    this.credit--;
    if (this.#jsons.length >= this.#spec.batch.chunks || this.credit === 0) this.#flush();
    else this.#scheduleFlush();
  }

  async #run(): Promise<void> {
    let it: AsyncIterator<ReadEvent> | undefined;
    try {
      const opts: { fromSeq: number; epoch?: string; signal: AbortSignal } = { fromSeq: this.#spec.fromSeq, signal: this.#abort.signal };
      if (this.#spec.epoch !== undefined) opts.epoch = this.#spec.epoch;
      it = this.#host.read(this.streamId, opts)[Symbol.asyncIterator]();
      while (!this.closed) {
        if (!this.#ready()) {
          this.#flush();
          await this.#waitForDemand();
          continue;
        }
        const r = await it.next();
        if (this.closed) return;
        if (r.done === true) {
          this.#flush();
          this.close();
          return;
        }
        const ev = r.value;
        switch (ev.type) {
          case 'chunk':
            this.#add(ev.seq, ev.data);
            break;
          case 'gap':
            this.#flush();
            this.#outlet.sendFrame({ type: 'gap', sub: this.sub, fromSeq: ev.fromSeq, toSeq: ev.toSeq });
            break;
          case 'reset':
            this.#flush();
            this.#outlet.sendFrame({ type: 'reset', sub: this.sub, epoch: ev.epoch });
            break;
          case 'end': {
            this.#flush();
            const e = ev.error;
            this.#outlet.sendFrame(
              endFrame(this.sub, e === undefined ? { status: ev.status } : { status: ev.status, error: { code: isErrorCode(e.code) ? e.code : 'ERR_PLUGIN_THREW', message: e.message } }),
            );
            this.close();
            return;
          }
        }
      }
    } catch (err) {
      if (this.closed) return;
      this.#flush();
      const wire = toWireError(err, false, 'ERR_STREAM_NOT_FOUND');
      this.#outlet.sendFrame(errorFrame(wire.code, wire.message, this.sub, true));
      this.close();
    } finally {
      void it?.return?.();
    }
  }
}
