/**
 * `startServer(host, options)`: the streaming endpoint over uWebSockets.js. HTTP
 * routes (http.ts), the WebSocket protocol (ws.ts), fan-out (fanout.ts, reader.ts)
 * and auth (auth.ts) meet here. The server does not own the host: `close()` stops
 * the server, and the caller closes the host (which checkpoints its streams).
 */
import type { Registry } from 'prom-client';
import type { us_listen_socket } from 'uWebSockets.js';
import { SluiceError } from '../../protocol/errors.js';
import { Authenticator, resolveSecret } from './auth.js';
import { parseServerConfig, resolveServerConfig, type ResolvedServerConfig, type ServerConfig } from './config.js';
import { registerHttpRoutes } from './http.js';
import { StreamHub } from './hub.js';
import { ServerMetrics } from './metrics.js';
import { loadNativeUws, requireUws } from './native.js';
import type { ServerHost } from './types.js';
import { CLOSE_CODES } from '../../protocol/ws.js';
import { createWsBehavior, sweepConnections, type WsContext } from './ws.js';

export type { ServerHost } from './types.js';

export interface ServerOptions extends ServerConfig {
  /** How to load uWebSockets.js (tests inject one to check the native-binary guard). */
  uwsLoader?: () => unknown;
  /** Environment to read `SLUICE_SECRET` from; default `process.env`. */
  env?: NodeJS.ProcessEnv;
}

export interface SluiceServer extends AsyncDisposable {
  /** The port actually bound (useful with `port: 0`). */
  readonly port: number;
  readonly hostname: string;
  /** `http://host:port` */
  readonly url: string;
  /** `ws://host:port/ws` */
  readonly wsUrl: string;
  readonly config: Readonly<ResolvedServerConfig>;
  /** The server's own metrics (the host's are in `host.metricsRegistry`). */
  readonly metrics: Registry;
  readonly connectionCount: number;
  /**
   * Stop accepting, close every socket with 1001 (going away), stop fan-out loops.
   * Idempotent. Leaves the host running: close it after (it checkpoints streams).
   */
  close(): Promise<void>;
}

/** The WebSocket endpoint path. */
export const WS_PATH = '/ws';
const MAX_SWEEP_MS = 1000;

/**
 * Start serving `host`.
 * @example
 * const server = await startServer(host, { port: 8080, dataDir: './data' });
 * // ... later
 * await server.close();
 * await host.close();
 */
export async function startServer(host: ServerHost, options: ServerOptions = {}): Promise<SluiceServer> {
  const { uwsLoader = requireUws, env, ...rest } = options;
  const parsed = parseServerConfig(rest);
  const config = resolveServerConfig(parsed);
  // Refuse the JavaScript fallback before anything else happens.
  const uws = loadNativeUws(uwsLoader);
  const secret = await resolveSecret({ secret: parsed.secret, dataDir: parsed.dataDir, env: env ?? process.env });
  const metrics = new ServerMetrics();
  const auth = new Authenticator(secret);
  const hub = new StreamHub(host, config, metrics);
  const ctx: WsContext = { uws, hub, auth, config, metrics, connections: new Set(), pendingUpgrades: 0, closing: false };

  const app = uws.App();
  app.ws(WS_PATH, createWsBehavior(ctx));
  registerHttpRoutes(app, {
    host,
    hub,
    auth,
    config,
    metrics,
    connectionCount: () => ctx.connections.size,
    get closing() {
      return ctx.closing;
    },
  });

  const listenSocket = await new Promise<us_listen_socket>((resolve, reject) => {
    app.listen(config.host, config.port, (socket) => {
      if (socket === false) reject(new SluiceError('ERR_CONFIG_INVALID', `Cannot listen on ${config.host}:${config.port} (address in use or not available)`));
      else resolve(socket);
    });
  });
  const port = uws.us_socket_local_port(listenSocket as unknown as Parameters<typeof uws.us_socket_local_port>[0]);

  const sweepMs = config.idleTimeoutMs > 0 ? Math.min(MAX_SWEEP_MS, Math.max(10, config.idleTimeoutMs / 4)) : MAX_SWEEP_MS;
  const sweeper = setInterval(() => sweepConnections(ctx), sweepMs);
  sweeper.unref();

  let closed: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closed ??= (async () => {
      ctx.closing = true;
      clearInterval(sweeper);
      uws.us_listen_socket_close(listenSocket);
      for (const conn of [...ctx.connections]) conn.end(CLOSE_CODES.GOING_AWAY, undefined, 'server shutting down');
      hub.close();
      // Ends idle keep-alive HTTP sockets too, so the process can exit.
      (app as unknown as { close?: () => void }).close?.();
    })();
    return closed;
  };

  const hostname = config.host;
  const urlHost = hostname.includes(':') ? `[${hostname}]` : hostname;
  return Object.freeze({
    port,
    hostname,
    url: `http://${urlHost}:${port}`,
    wsUrl: `ws://${urlHost}:${port}${WS_PATH}`,
    config,
    metrics: metrics.registry,
    get connectionCount() {
      return ctx.connections.size;
    },
    close,
    [Symbol.asyncDispose]: close,
  });
}
