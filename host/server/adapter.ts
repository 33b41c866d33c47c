/**
 * Make a host that lacks part of `ServerHost` servable. The server is written against
 * the full interface (durable reads, stream info, the store's epoch); a host without a
 * durable store gets: a per-process epoch, stream info from live streams plus a bounded
 * memory of recently finished ones, and a clear refusal of `durability: 'log'`.
 * Whatever the host does provide is used as is.
 */
import { randomUUID } from 'node:crypto';
import type { Registry } from 'prom-client';
import { SluiceError } from '../../protocol/errors.js';
import type { Durability, PluginInfo, ReadEvent, SluiceStream, StreamOptions } from '../types.js';
import type { ServerHost, ServerReadOptions, ServerStreamInfo } from './types.js';

/** What every host has (host/host.ts `Sluice` satisfies this). */
export interface BasicHost {
  plugins(): PluginInfo[];
  stream(plugin: string, action: string, params?: unknown, options?: StreamOptions): SluiceStream;
  getStream(id: string): SluiceStream | undefined;
  readonly metricsRegistry: Registry;
  close(): Promise<void>;
}

type MaybeFull = BasicHost & Partial<Pick<ServerHost, 'read' | 'streamInfo' | 'epoch'>>;

/** Finished streams remembered for `streamInfo` when the host keeps no records. */
export const FINISHED_MEMORY = 10_000;

export function asServerHost(host: MaybeFull): ServerHost {
  if (typeof host.read === 'function' && typeof host.streamInfo === 'function' && typeof host.epoch === 'string') return host as ServerHost;
  return new BasicHostAdapter(host);
}

class BasicHostAdapter implements ServerHost {
  readonly #host: MaybeFull;
  readonly epoch: string;
  /** Insertion-ordered, so the oldest is evicted first. */
  readonly #known = new Map<string, ServerStreamInfo>();

  constructor(host: MaybeFull) {
    this.#host = host;
    this.epoch = typeof host.epoch === 'string' ? host.epoch : `process-${randomUUID()}`;
  }

  get metricsRegistry(): Registry {
    return this.#host.metricsRegistry;
  }

  plugins(): PluginInfo[] {
    return this.#host.plugins();
  }

  stream(plugin: string, action: string, params?: unknown, options: StreamOptions = {}): SluiceStream {
    if (options.durability === 'log' && typeof this.#host.read !== 'function') {
      throw new SluiceError('ERR_INVALID_ARGUMENT', "This host has no durable store: `durability: 'log'` is not available");
    }
    const stream = this.#host.stream(plugin, action, params, options);
    const durability: Durability = options.durability ?? 'none';
    this.#remember({ id: stream.id, plugin, action, status: stream.status, durability, chunks: 0 });
    void stream.result.then((r) => this.#remember({ id: stream.id, plugin, action, status: r.status, durability, chunks: r.chunks }));
    return stream;
  }

  #remember(info: ServerStreamInfo): void {
    this.#known.delete(info.id);
    this.#known.set(info.id, info);
    if (this.#known.size > FINISHED_MEMORY) this.#known.delete(this.#known.keys().next().value as string);
  }

  getStream(id: string): SluiceStream | undefined {
    return this.#host.getStream(id);
  }

  read(id: string, opts: ServerReadOptions): AsyncIterable<ReadEvent> {
    if (typeof this.#host.read === 'function') return this.#host.read(id, opts);
    throw new SluiceError('ERR_STREAM_NOT_FOUND', `Stream ${JSON.stringify(id)} not found (this host keeps no durable log)`);
  }

  async streamInfo(id: string): Promise<ServerStreamInfo | undefined> {
    if (typeof this.#host.streamInfo === 'function') return this.#host.streamInfo(id);
    const live = this.#host.getStream(id);
    const known = this.#known.get(id);
    if (live !== undefined) return { id, plugin: live.plugin, action: live.action, status: live.status, durability: known?.durability ?? 'none', chunks: known?.chunks ?? 0 };
    return known;
  }

  close(): Promise<void> {
    return this.#host.close();
  }
}
