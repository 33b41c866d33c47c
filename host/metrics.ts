/**
 * The host's metrics, in a prom-client registry of its own: two hosts in one process
 * (tests do this) must not share counters, so nothing uses the global registry.
 * Counters move per batch, never per chunk.
 */
import { Counter, Gauge, Registry } from 'prom-client';

export class HostMetrics {
  readonly registry = new Registry();
  readonly streamsStarted = new Counter({ name: 'sluice_streams_started_total', help: 'Streams that reached a sandbox', labelNames: ['sandbox'] as const, registers: [this.registry] });
  readonly streamsEnded = new Counter({ name: 'sluice_streams_ended_total', help: 'Streams that ended, by status and error code', labelNames: ['status', 'code'] as const, registers: [this.registry] });
  readonly chunks = new Counter({ name: 'sluice_chunks_total', help: 'Chunks received from sandboxes', registers: [this.registry] });
  readonly bytes = new Counter({ name: 'sluice_chunk_bytes_total', help: 'Estimated bytes of chunks received from sandboxes', registers: [this.registry] });
  readonly running = new Gauge({ name: 'sluice_streams_running', help: 'Streams running now', labelNames: ['sandbox'] as const, registers: [this.registry] });
  readonly queued = new Gauge({ name: 'sluice_streams_queued', help: 'Streams waiting for admission', registers: [this.registry] });
}
