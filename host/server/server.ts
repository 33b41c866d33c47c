/**
 * `startServer(host, options)`: the streaming endpoint over uWebSockets.js. HTTP
 * routes (http.ts), the WebSocket protocol (ws.ts), fan-out (fanout.ts, reader.ts)
 * and auth (auth.ts) meet here. The server does not own the host: `close()` stops
 * the server, and the caller closes the host (which checkpoints its streams).
 */
import type { Registry } from 'prom-client';
import { connect as connectTcp, createServer as createNetServer } from 'node:net';
import type { TemplatedApp, us_listen_socket } from 'uWebSockets.js';
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
  /** Called once when the port is free but still in TCP TIME_WAIT and listening will be retried. */
  onWaitingForPort?: (where: { host: string; port: number }) => void;
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

/** TCP keeps a closed connection's port in TIME_WAIT for 60 s on Linux; a little more. */
const TIME_WAIT_MS = 65_000;
const LISTEN_RETRY_MS = 500;

function listenOnce(app: TemplatedApp, host: string, port: number): Promise<us_listen_socket | false> {
  return new Promise((resolve) => app.listen(host, port, resolve));
}

/** Whether something accepts connections on host:port right now. */
function someoneListens(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connectTcp({ host, port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** Why uWS could not bind: Node's own bind names the error, and a connect tells TIME_WAIT from a listener. */
async function bindProblem(host: string, port: number): Promise<string> {
  if (port === 0) return 'no free port';
  const code = await new Promise<string | undefined>((resolve) => {
    const probe = createNetServer();
    probe.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? 'error'));
    probe.listen(port, host, () => probe.close(() => resolve(undefined)));
  });
  if (code === 'EADDRINUSE') return (await someoneListens(host, port)) ? 'address in use' : 'time-wait';
  return code === undefined ? 'address not available' : `address not available: ${code}`;
}

/**
 * Listen, waiting out TIME_WAIT. This uWS build does not set SO_REUSEADDR, and a server
 * closes its sockets first (RFC 6455), so for a minute after a shutdown with clients
 * connected the port cannot be bound again although nobody listens on it: a restart
 * (`sluice serve` under a supervisor) would fail. A port somebody really listens on
 * fails at once.
 */
async function listen(app: TemplatedApp, host: string, port: number, onWaiting: ServerOptions['onWaitingForPort']): Promise<us_listen_socket> {
  const deadline = performance.now() + TIME_WAIT_MS;
  let told = false;
  for (;;) {
    const socket = await listenOnce(app, host, port);
    if (socket !== false) return socket;
    const why = await bindProblem(host, port);
    if (why !== 'time-wait' || performance.now() > deadline) {
      throw new SluiceError('ERR_CONFIG_INVALID', `Cannot listen on ${host}:${port} (${why === 'time-wait' ? 'still in TCP TIME_WAIT' : why})`);
    }
    if (!told) {
      told = true;
      onWaiting?.({ host, port });
    }
    await new Promise((r) => setTimeout(r, LISTEN_RETRY_MS));
  }
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
  const { uwsLoader = requireUws, env, onWaitingForPort, ...rest } = options;
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

  const listenSocket = await listen(app, config.host, config.port, onWaitingForPort);
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
