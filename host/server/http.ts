/**
 * HTTP routes: health, metrics, the dashboard, and a small JSON API to list plugins
 * and start / inspect / cancel streams. Every error is `{ error: { code, message } }`
 * with a status derived from the code; the API takes the same bearer tokens as the
 * WebSocket (`Authorization: Bearer` or `?token=`).
 */
import type { HttpRequest, HttpResponse, TemplatedApp } from 'uWebSockets.js';
import { isObject } from '../../protocol/assert.js';
import { SluiceError, toWireError, type ErrorCode } from '../../protocol/errors.js';
import { parseClientFrame } from '../../protocol/ws.js';
import { mayCancel, mayRead, mayStart, ownedStreamId, type Authenticator, type Principal } from './auth.js';
import type { ResolvedServerConfig } from './config.js';
import { DASHBOARD_HTML } from './dashboard.js';
import { notFound, type StreamHub } from './hub.js';
import type { ServerMetrics } from './metrics.js';
import type { ServerHost } from './types.js';
import { originAllowed } from './ws.js';

export interface HttpContext {
  readonly host: ServerHost;
  readonly hub: StreamHub;
  readonly auth: Authenticator;
  readonly config: ResolvedServerConfig;
  readonly metrics: ServerMetrics;
  /** Open WebSocket connections, for /healthz. */
  connectionCount(): number;
  readonly closing: boolean;
}

const STATUS_LINES: Record<number, string> = {
  200: '200 OK',
  201: '201 Created',
  204: '204 No Content',
  400: '400 Bad Request',
  401: '401 Unauthorized',
  403: '403 Forbidden',
  404: '404 Not Found',
  409: '409 Conflict',
  413: '413 Payload Too Large',
  500: '500 Internal Server Error',
  503: '503 Service Unavailable',
};

/** The HTTP status an error code maps to. */
export function httpStatusOf(code: ErrorCode): number {
  switch (code) {
    case 'ERR_UNAUTHORIZED':
      return 401;
    case 'ERR_FORBIDDEN':
      return 403;
    case 'ERR_STREAM_NOT_FOUND':
    case 'ERR_PLUGIN_NOT_FOUND':
    case 'ERR_ACTION_NOT_FOUND':
    case 'ERR_ROUTE_NOT_FOUND':
      return 404;
    case 'ERR_FRAME_TOO_LARGE':
      return 413;
    case 'ERR_INVALID_ARGUMENT':
    case 'ERR_FRAME_INVALID':
    case 'ERR_PARAMS_INVALID':
    case 'ERR_LIMIT_MEMORY':
      return 400;
    case 'ERR_STREAM_CONSUMED':
      return 409;
    case 'ERR_QUEUE_FULL':
    case 'ERR_HOST_CLOSED':
    case 'ERR_TOO_MANY_CONNECTIONS':
      return 503;
    default:
      return 500;
  }
}

class Reply {
  aborted = false;
  constructor(
    readonly res: HttpResponse,
    readonly route: string,
    readonly metrics: ServerMetrics,
    readonly corsOrigin: string | undefined,
  ) {
    res.onAborted(() => {
      this.aborted = true;
    });
  }

  send(status: number, body: string, contentType = 'application/json'): void {
    this.metrics.httpRequests.inc({ route: this.route, status: String(status) });
    if (this.aborted) return;
    this.aborted = true;
    this.res.cork(() => {
      this.res.writeStatus(STATUS_LINES[status] ?? `${status} Status`);
      this.res.writeHeader('content-type', contentType);
      this.res.writeHeader('cache-control', 'no-store');
      if (this.corsOrigin !== undefined) this.res.writeHeader('access-control-allow-origin', this.corsOrigin);
      this.res.end(body);
    });
  }

  json(status: number, value: unknown): void {
    this.send(status, JSON.stringify(value));
  }

  error(err: unknown, fallback: ErrorCode = 'ERR_INVALID_ARGUMENT'): void {
    const wire = toWireError(err, false, fallback);
    if (!(err instanceof SluiceError)) wire.message = 'Internal error';
    const body: Record<string, unknown> = { code: wire.code, message: wire.message };
    if (wire.details !== undefined) body.details = wire.details;
    this.json(httpStatusOf(wire.code), { error: body });
  }
}

/** Read a request body up to `limit` bytes. */
function readBody(res: HttpResponse, reply: Reply, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    let done = false;
    res.onData((chunk, isLast) => {
      if (done) return;
      size += chunk.byteLength;
      if (size > limit) {
        done = true;
        reject(new SluiceError('ERR_FRAME_TOO_LARGE', `Request body is larger than ${limit} bytes`));
        return;
      }
      // The ArrayBuffer is only valid during this callback: copy it.
      parts.push(Buffer.from(new Uint8Array(chunk)));
      if (isLast) {
        done = true;
        resolve(Buffer.concat(parts));
      }
    });
    if (reply.aborted) reject(new SluiceError('ERR_INVALID_ARGUMENT', 'Request aborted'));
  });
}

interface RequestInfo {
  authorization: string;
  queryToken: string | undefined;
  origin: string;
  param: string;
}

function requestInfo(req: HttpRequest, withParam: boolean): RequestInfo {
  return {
    authorization: req.getHeader('authorization'),
    queryToken: req.getQuery('token'),
    origin: req.getHeader('origin'),
    param: withParam ? decodeURIComponent(req.getParameter(0)) : '',
  };
}

function bearer(info: RequestInfo): string | undefined {
  const m = /^Bearer\s+(\S+)\s*$/i.exec(info.authorization);
  if (m !== null) return m[1];
  return info.queryToken === undefined || info.queryToken === '' ? undefined : info.queryToken;
}

export function registerHttpRoutes(app: TemplatedApp, ctx: HttpContext): void {
  const { host, hub, auth, config, metrics } = ctx;

  /** Wrap an API handler: origin check, auth, errors as coded JSON. */
  const api = (route: string, withParam: boolean, handler: (reply: Reply, principal: Principal, info: RequestInfo, res: HttpResponse) => Promise<void>) => {
    return (res: HttpResponse, req: HttpRequest): void => {
      const info = requestInfo(req, withParam);
      const allowed = originAllowed(info.origin, config.allowedOrigins);
      const reply = new Reply(res, route, metrics, allowed && info.origin !== '' ? info.origin : undefined);
      if (!allowed) return reply.error(new SluiceError('ERR_FORBIDDEN', `Origin ${JSON.stringify(info.origin)} is not allowed`));
      // A body must be consumed (or the request aborted) before answering; handlers that read one do so first.
      auth
        .verify(bearer(info))
        .then((principal) => handler(reply, principal, info, res))
        .catch((err: unknown) => reply.error(err, 'ERR_INVALID_ARGUMENT'));
    };
  };

  app.get('/healthz', (res) => {
    const reply = new Reply(res, '/healthz', metrics, undefined);
    reply.json(ctx.closing ? 503 : 200, { status: ctx.closing ? 'closing' : 'ok', connections: ctx.connectionCount(), streams: hub.activeCount, epoch: host.epoch });
  });

  app.get('/metrics', (res) => {
    const reply = new Reply(res, '/metrics', metrics, undefined);
    Promise.all([host.metricsRegistry.metrics(), metrics.registry.metrics()]).then(
      ([hostText, serverText]) => reply.send(200, `${hostText.trimEnd()}\n\n${serverText}`, metrics.registry.contentType),
      (err: unknown) => reply.error(err, 'ERR_INVALID_ARGUMENT'),
    );
  });

  app.get('/', (res) => {
    new Reply(res, '/', metrics, undefined).send(200, DASHBOARD_HTML, 'text/html; charset=utf-8');
  });

  app.get(
    '/api/plugins',
    api('/api/plugins', false, async (reply, principal) => {
      // Only what this token may start: the list is not a way to discover other plugins.
      const plugins = host
        .plugins()
        .map((p) => ({
          name: p.name,
          version: p.version,
          description: p.description,
          sandbox: p.sandbox,
          actions: Object.fromEntries(Object.entries(p.actions).filter(([action]) => mayStart(principal, p.name, action))),
        }))
        .filter((p) => Object.keys(p.actions).length > 0);
      reply.json(200, { plugins });
    }),
  );

  app.post('/api/streams', (res, req) => {
    // Register onData synchronously (uWS requires it before returning); auth runs alongside.
    const info = requestInfo(req, false);
    const allowed = originAllowed(info.origin, config.allowedOrigins);
    const reply = new Reply(res, '/api/streams', metrics, allowed && info.origin !== '' ? info.origin : undefined);
    const body = readBody(res, reply, config.maxPayload);
    body.catch(() => undefined);
    void (async () => {
      try {
        if (!allowed) throw new SluiceError('ERR_FORBIDDEN', `Origin ${JSON.stringify(info.origin)} is not allowed`);
        const principal = await auth.verify(bearer(info));
        let data: unknown;
        try {
          data = JSON.parse((await body).toString('utf8'));
        } catch (err) {
          if (err instanceof SluiceError) throw err;
          throw new SluiceError('ERR_INVALID_ARGUMENT', 'Request body is not JSON');
        }
        if (!isObject(data)) throw new SluiceError('ERR_INVALID_ARGUMENT', 'Expected the request body to be an object {plugin, action, params?, options?}');
        const frame = parseClientFrame({ ...data, type: 'start', sub: 1 });
        if (frame.type !== 'start') throw new SluiceError('ERR_INVALID_ARGUMENT', 'Expected a start request');
        if (!mayStart(principal, frame.plugin, frame.action)) throw new SluiceError('ERR_FORBIDDEN', `Token does not allow starting ${frame.plugin}:${frame.action}`);
        const id = ownedStreamId(principal, frame.options?.id);
        hub.start(id, frame.plugin, frame.action, frame.params, frame.options);
        reply.json(201, { id, epoch: host.epoch, durability: frame.options?.durability ?? 'none' });
      } catch (err) {
        // The parser's code is ERR_FRAME_INVALID; over HTTP it is a bad argument.
        if (err instanceof SluiceError && err.code === 'ERR_FRAME_INVALID') reply.error(new SluiceError('ERR_INVALID_ARGUMENT', err.message, { details: err.details ?? {} }));
        else reply.error(err);
      }
    })();
  });

  app.get(
    '/api/streams/:id',
    api('/api/streams/:id', true, async (reply, principal, info) => {
      const id = info.param;
      if (!mayRead(principal, id)) throw notFound(id);
      const stream = await host.streamInfo(id);
      if (stream === undefined) throw notFound(id);
      const live = hub.liveStream(id);
      reply.json(200, { ...stream, epoch: host.epoch, progress: live?.progress ?? null });
    }),
  );

  app.del(
    '/api/streams/:id',
    api('/api/streams/:id', true, async (reply, principal, info) => {
      const id = info.param;
      if (!mayRead(principal, id)) throw notFound(id);
      if (!mayCancel(principal, id)) throw new SluiceError('ERR_FORBIDDEN', `Token does not allow cancelling stream ${id}`);
      const wasLive = await hub.cancel(id, 'cancelled over HTTP');
      const stream = await host.streamInfo(id);
      if (!wasLive && stream === undefined) throw notFound(id);
      reply.json(200, { id, status: stream?.status ?? 'cancelled', wasLive });
    }),
  );

  app.options('/api/*', (res, req) => {
    const origin = req.getHeader('origin');
    const reply = new Reply(res, 'OPTIONS', metrics, undefined);
    if (!originAllowed(origin, config.allowedOrigins) || origin === '') return reply.send(403, '');
    reply.aborted = true;
    res.cork(() => {
      res
        .writeStatus('204 No Content')
        .writeHeader('access-control-allow-origin', origin)
        .writeHeader('access-control-allow-methods', 'GET, POST, DELETE')
        .writeHeader('access-control-allow-headers', 'authorization, content-type')
        .end();
    });
  });

  app.any('/*', (res, req) => {
    const reply = new Reply(res, 'unknown', metrics, undefined);
    reply.error(new SluiceError('ERR_ROUTE_NOT_FOUND', `No route ${req.getCaseSensitiveMethod()} ${req.getUrl()}`));
  });
}
