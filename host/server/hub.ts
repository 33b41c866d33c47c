/**
 * The server's streams: starts them, and attaches a subscriber to the right source.
 * A live non-durable stream gets one `Broadcast` (one consumer loop) shared by every
 * subscriber; a durable one is drained by a driver loop (the host logs its chunks)
 * and each subscriber reads the log with `host.read`.
 */
import { SluiceError } from '../../protocol/errors.js';
import type { ServerFrame, WireStartOptions } from '../../protocol/ws.js';
import type { SluiceStream, StreamOptions } from '../types.js';
import type { ResolvedServerConfig } from './config.js';
import { Broadcast, type FanoutLimits } from './fanout.js';
import type { ServerMetrics } from './metrics.js';
import { ReaderSubscription } from './reader.js';
import { FrameScratch } from './ring.js';
import type { Outlet, Subscription } from './subscription.js';
import type { ServerHost } from './types.js';

export interface Attached {
  /** Undefined when the stream had already finished: `frames` say all there is. */
  subscription: Subscription | undefined;
  /** `started`, then a `gap` when chunks before the subscriber's position are gone. */
  frames: ServerFrame[];
}

export function notFound(streamId: string): SluiceError {
  // The same error whether the stream does not exist or the token may not see it.
  return new SluiceError('ERR_STREAM_NOT_FOUND', `Stream ${JSON.stringify(streamId)} not found`);
}

export class StreamHub {
  readonly #host: ServerHost;
  readonly #config: ResolvedServerConfig;
  readonly #metrics: ServerMetrics;
  readonly #fanout: FanoutLimits;
  readonly #broadcasts = new Map<string, Broadcast>();
  /** Durable streams this server started and drains. */
  readonly #drivers = new Map<string, SluiceStream>();
  #closed = false;

  constructor(host: ServerHost, config: ResolvedServerConfig, metrics: ServerMetrics) {
    this.#host = host;
    this.#config = config;
    this.#metrics = metrics;
    this.#fanout = { ring: config.fanout, batch: config.batch, lingerMs: config.lingerMs, slowConsumerMs: config.slowConsumerMs, scratch: new FrameScratch() };
  }

  get host(): ServerHost {
    return this.#host;
  }

  /** Plugin and action exist? Throws the host's codes (scope is checked by the caller first). */
  checkAction(plugin: string, action: string): void {
    const info = this.#host.plugins().find((p) => p.name === plugin);
    if (info === undefined) throw new SluiceError('ERR_PLUGIN_NOT_FOUND', `Plugin ${JSON.stringify(plugin)} not found`);
    if (!Object.prototype.hasOwnProperty.call(info.actions, action)) {
      throw new SluiceError('ERR_ACTION_NOT_FOUND', `Plugin ${JSON.stringify(plugin)} has no action ${JSON.stringify(action)}`);
    }
  }

  /** Start a stream with id `id` and take charge of consuming it. */
  start(id: string, plugin: string, action: string, params: unknown, options: WireStartOptions = {}): SluiceStream {
    if (this.#closed) throw new SluiceError('ERR_HOST_CLOSED', 'Server is shutting down');
    this.checkAction(plugin, action);
    const streamOptions: StreamOptions = { id };
    if (options.durability !== undefined) streamOptions.durability = options.durability;
    if (options.priority !== undefined) streamOptions.priority = options.priority;
    if (options.limits !== undefined) streamOptions.limits = options.limits;
    if (options.window !== undefined) streamOptions.window = options.window;
    const stream = this.#host.stream(plugin, action, params, streamOptions);
    if (options.durability === 'log') this.#drive(stream);
    else this.#broadcast(stream);
    return stream;
  }

  #broadcast(stream: SluiceStream): Broadcast {
    const b = new Broadcast(stream, this.#fanout, this.#metrics, (gone) => {
      if (this.#broadcasts.get(gone.id) === gone) this.#broadcasts.delete(gone.id);
      this.#updateGauge();
    });
    this.#broadcasts.set(stream.id, b);
    this.#updateGauge();
    return b;
  }

  #drive(stream: SluiceStream): void {
    this.#drivers.set(stream.id, stream);
    this.#updateGauge();
    void (async () => {
      try {
        // The host logs every chunk; readers get them (and the end, error included) from the log.
        for await (const _chunk of stream) {
          // Draining is the point: the chunk itself reaches clients through host.read.
        }
      } catch {
        // The failure is recorded with the stream and reaches readers as their `end` event.
      } finally {
        this.#drivers.delete(stream.id);
        this.#updateGauge();
      }
    })();
  }

  #updateGauge(): void {
    this.#metrics.activeStreams.set(this.#broadcasts.size + this.#drivers.size);
  }

  /** Attach `outlet`'s subscription `sub` to stream `streamId` from `fromSeq` on. */
  async attach(outlet: Outlet, sub: number, streamId: string, fromSeq: number, epoch: string | undefined, credit: number): Promise<Attached> {
    const live = this.#broadcasts.get(streamId);
    if (live !== undefined) return this.#attachBroadcast(live, outlet, sub, fromSeq, credit);
    if (this.#drivers.has(streamId)) return this.#attachReader(outlet, sub, streamId, fromSeq, epoch, credit);
    const info = await this.#host.streamInfo(streamId);
    if (info === undefined) throw notFound(streamId);
    if (info.durability === 'log') return this.#attachReader(outlet, sub, streamId, fromSeq, epoch, credit);
    const again = this.#broadcasts.get(streamId);
    if (again !== undefined) return this.#attachBroadcast(again, outlet, sub, fromSeq, credit);
    const stream = this.#host.getStream(streamId);
    if (stream !== undefined) return this.#attachBroadcast(this.#broadcast(stream), outlet, sub, fromSeq, credit);
    // A finished non-durable stream: its chunks are gone; say so, then how it ended.
    const frames: ServerFrame[] = [{ type: 'started', sub, streamId, epoch: this.#host.epoch, durability: info.durability, seq: fromSeq }];
    if (fromSeq < info.chunks) frames.push({ type: 'gap', sub, fromSeq, toSeq: info.chunks });
    const status = info.status === 'queued' || info.status === 'running' ? 'cancelled' : info.status;
    frames.push({ type: 'end', sub, status });
    return { subscription: undefined, frames };
  }

  #attachBroadcast(b: Broadcast, outlet: Outlet, sub: number, fromSeq: number, credit: number): Attached {
    const { subscription, gap } = b.subscribe(outlet, sub, fromSeq, credit);
    const frames: ServerFrame[] = [{ type: 'started', sub, streamId: b.id, epoch: this.#host.epoch, durability: 'none', seq: subscription.cursor }];
    if (gap !== undefined) frames.splice(1, 0, { type: 'gap', sub, ...gap });
    return { subscription, frames };
  }

  #attachReader(outlet: Outlet, sub: number, streamId: string, fromSeq: number, epoch: string | undefined, credit: number): Attached {
    const subscription = new ReaderSubscription(this.#host, outlet, sub, { streamId, fromSeq, epoch, credit, batch: this.#config.batch });
    const frames: ServerFrame[] = [{ type: 'started', sub, streamId, epoch: this.#host.epoch, durability: 'log', seq: fromSeq }];
    return { subscription, frames };
  }

  /** Cancel a stream by id (live only). Returns whether it was live. */
  async cancel(streamId: string, reason: string): Promise<boolean> {
    const stream = this.#broadcasts.get(streamId)?.stream ?? this.#drivers.get(streamId) ?? this.#host.getStream(streamId);
    if (stream === undefined) return false;
    await stream.cancel(reason);
    return true;
  }

  /** Progress of a live stream, for the HTTP API. */
  liveStream(streamId: string): SluiceStream | undefined {
    return this.#broadcasts.get(streamId)?.stream ?? this.#drivers.get(streamId) ?? this.#host.getStream(streamId);
  }

  get activeCount(): number {
    return this.#broadcasts.size + this.#drivers.size;
  }

  /**
   * Stop fanning out. Streams are left to `host.close()` (which checkpoints them):
   * the server does not own the host.
   */
  close(): void {
    this.#closed = true;
    for (const b of this.#broadcasts.values()) b.close(false);
    this.#broadcasts.clear();
    this.#updateGauge();
  }
}
