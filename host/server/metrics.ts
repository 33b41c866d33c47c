/**
 * Server metrics, in a registry of the server's own (never prom-client's global one:
 * two servers live in one process in tests). `/metrics` serves the host's registry
 * followed by this one.
 *
 * Per-frame counts are plain numbers bumped on the hot path and copied into their
 * prom-client counters when scraped (`collect`), so a chunks frame costs an addition,
 * not a labelled-counter lookup.
 */
import { Counter, Gauge, Registry } from 'prom-client';
import type { ErrorCode } from '../../protocol/errors.js';

/** Hot-path tallies, read by `collect`. */
export class ServerTallies {
  chunksOut = 0;
  bytesOut = 0;
  readonly framesOut = new Map<string, number>();
  readonly framesIn = new Map<string, number>();

  frameOut(type: string): void {
    this.framesOut.set(type, (this.framesOut.get(type) ?? 0) + 1);
  }

  frameIn(type: string): void {
    this.framesIn.set(type, (this.framesIn.get(type) ?? 0) + 1);
  }
}

function mirror(counter: Counter<string>, value: number): void {
  counter.reset();
  counter.inc(value);
}

function mirrorByType(counter: Counter<'type'>, values: Map<string, number>): void {
  counter.reset();
  for (const [type, n] of values) counter.inc({ type }, n);
}

export class ServerMetrics {
  readonly registry = new Registry();
  readonly tallies = new ServerTallies();

  readonly connections = new Gauge({ name: 'sluice_server_connections', help: 'Open WebSocket connections', registers: [this.registry] });
  readonly connectionsTotal = new Counter({ name: 'sluice_server_connections_total', help: 'WebSocket connections accepted', registers: [this.registry] });
  readonly upgradesRejected = new Counter({
    name: 'sluice_server_upgrades_rejected_total',
    help: 'WebSocket upgrades refused, by error code',
    labelNames: ['code'],
    registers: [this.registry],
  });
  readonly subscriptions = new Gauge({ name: 'sluice_server_subscriptions', help: 'Open subscriptions', registers: [this.registry] });
  readonly activeStreams = new Gauge({ name: 'sluice_server_active_streams', help: 'Streams the server is fanning out or draining', registers: [this.registry] });
  readonly errors = new Counter({ name: 'sluice_server_errors_total', help: 'Errors reported to clients, by code', labelNames: ['code'], registers: [this.registry] });
  readonly backpressurePauses = new Counter({
    name: 'sluice_server_backpressure_pauses_total',
    help: 'Times a socket crossed the high watermark and its subscriptions paused',
    registers: [this.registry],
  });
  readonly slowConsumers = new Counter({ name: 'sluice_server_slow_consumers_total', help: 'Subscriptions or sockets dropped as slow consumers', registers: [this.registry] });
  readonly httpRequests = new Counter({ name: 'sluice_server_http_requests_total', help: 'HTTP requests, by route and status', labelNames: ['route', 'status'], registers: [this.registry] });

  constructor() {
    const t = this.tallies;
    new Counter({
      name: 'sluice_server_chunks_out_total',
      help: 'Chunks sent to clients',
      registers: [this.registry],
      collect() {
        mirror(this, t.chunksOut);
      },
    });
    new Counter({
      name: 'sluice_server_bytes_out_total',
      help: 'Bytes of frames sent to clients (chunks frames in UTF-8 bytes; control frames in UTF-16 code units, exact for ASCII)',
      registers: [this.registry],
      collect() {
        mirror(this, t.bytesOut);
      },
    });
    new Counter({
      name: 'sluice_server_frames_out_total',
      help: 'Server frames sent, by type',
      labelNames: ['type'],
      registers: [this.registry],
      collect() {
        mirrorByType(this, t.framesOut);
      },
    });
    new Counter({
      name: 'sluice_server_frames_in_total',
      help: 'Client frames received, by type (`invalid` for frames that did not parse)',
      labelNames: ['type'],
      registers: [this.registry],
      collect() {
        mirrorByType(this, t.framesIn);
      },
    });
  }

  error(code: ErrorCode): void {
    this.errors.inc({ code });
  }
}
