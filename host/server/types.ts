/**
 * What the server needs from a host: a structural subset of `Sluice` (host/host.ts),
 * so the server can be tested with a small fake and the host does not depend on it.
 */
import type { Registry } from 'prom-client';
import type { PluginInfo, ReadEvent, SluiceStream, StreamInfo, StreamOptions } from '../types.js';

/** What the server needs to know of a stream: the part of the host's StreamInfo it reads. */
export type ServerStreamInfo = Pick<StreamInfo, 'id' | 'plugin' | 'action' | 'status' | 'durability' | 'chunks'>;

export interface ServerReadOptions {
  /** First seq wanted (inclusive). */
  fromSeq?: number;
  epoch?: string;
  signal?: AbortSignal;
}

export interface ServerHost {
  plugins(): PluginInfo[];
  /** Returns at once; errors surface on iteration / `result`. */
  stream(plugin: string, action: string, params?: unknown, options?: StreamOptions): SluiceStream;
  /** Live (queued or running) streams. */
  getStream(id: string): SluiceStream | undefined;
  /** Durable streams: exact replay plus live tail, with gap / reset / end events. */
  read(id: string, opts: ServerReadOptions): AsyncIterable<ReadEvent>;
  streamInfo(id: string): Promise<ServerStreamInfo | undefined>;
  /** The host's own registry (never the global default: two hosts live in one process in tests). */
  readonly metricsRegistry: Registry;
  /** The store's epoch. */
  readonly epoch: string;
  close(): Promise<void>;
}
