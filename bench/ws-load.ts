/**
 * Client load for bench/ws.ts, run in its own process so the server under test has
 * its own core: `node ws-load.js <json spec>`. Opens `clients` `ws` sockets speaking
 * sluice.v1 (start + credit like the SDK), waits for every `end`, prints one JSON line.
 *
 * To keep the client cheap (so the server is what is measured), frames are not
 * JSON-parsed: the `seq` of a `chunks` frame is read from its fixed prefix, which is
 * enough to return credit, and an `end` frame closes the count.
 *
 * With `streamId`, every client subscribes to that one stream (fan-out) instead of
 * starting its own; each still receives all `chunks` of it.
 *
 * Mode `hold`: open the sockets, subscribe each to `streamId`, report when all are
 * open, and keep them until stdin closes.
 */
import WebSocket from 'ws';

interface Spec {
  mode: 'load' | 'hold';
  url: string;
  token: string;
  clients: number;
  chunks: number;
  window: number;
  /** Hold: the stream to subscribe to. Load: when set, every client subscribes to this one stream (fan-out) instead of starting its own. */
  streamId?: string;
  deadlineMs: number;
}

const spec = JSON.parse(process.argv[2] ?? '{}') as Spec;
const SEQ_PREFIX = /^\{"type":"chunks","sub":\d+,"seq":(\d+)/;

function open(): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(spec.url, ['sluice.v1'], { headers: { authorization: `Bearer ${spec.token}` }, perMessageDeflate: false });
    ws.once('open', () => resolve(ws));
    ws.once('error', reject);
  });
}

async function load(): Promise<void> {
  const sockets = await Promise.all(Array.from({ length: spec.clients }, () => open()));
  const t0 = performance.now();
  let ended = 0;
  let frames = 0;
  let firstError: string | undefined;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`deadline: ${ended}/${spec.clients} ended${firstError === undefined ? '' : `; first error frame: ${firstError}`}`)), spec.deadlineMs);
    for (const ws of sockets) {
      let granted = spec.window;
      ws.on('message', (data: Buffer) => {
        frames++;
        const text = data.toString('latin1', 0, 64);
        const m = SEQ_PREFIX.exec(text);
        if (m !== null) {
          const seq = Number(m[1]);
          const want = seq + spec.window - granted;
          if (want * 2 >= spec.window) {
            granted += want;
            ws.send(`{"type":"credit","sub":1,"n":${want}}`);
          }
          return;
        }
        if (text.startsWith('{"type":"error"') && firstError === undefined) firstError = data.toString().slice(0, 300);
        if (text.startsWith('{"type":"end"')) {
          ended++;
          if (ended === spec.clients) {
            clearTimeout(timer);
            resolve();
          }
        }
      });
      ws.send(
        spec.streamId === undefined
          ? JSON.stringify({ type: 'start', sub: 1, plugin: 'synthetic', action: 'emit', params: { n: spec.chunks }, credit: spec.window })
          : JSON.stringify({ type: 'subscribe', sub: 1, streamId: spec.streamId, fromSeq: 0, credit: spec.window }),
      );
    }
  });
  const ms = performance.now() - t0;
  const cpu = process.cpuUsage();
  process.stdout.write(`${JSON.stringify({ chunks: spec.clients * spec.chunks, frames, ms, cpuMs: (cpu.user + cpu.system) / 1000 })}\n`);
  for (const ws of sockets) ws.terminate();
}

async function hold(): Promise<void> {
  const sockets: WebSocket[] = [];
  let started = 0;
  // Should the parent time out, stderr (inherited) says how far this got.
  const progress = setInterval(() => process.stderr.write(`ws-load hold: ${sockets.length} open, ${started} started of ${spec.clients}\n`), 5000);
  // Open in slices so the accept queue is not flooded.
  for (let i = 0; i < spec.clients; i += 100) {
    sockets.push(...(await Promise.all(Array.from({ length: Math.min(100, spec.clients - i) }, () => open()))));
  }
  await new Promise<void>((resolve) => {
    for (const ws of sockets) {
      let seen = false;
      ws.on('message', (data: Buffer) => {
        if (!seen && data.toString('latin1', 0, 20).startsWith('{"type":"started"')) {
          seen = true;
          if (++started === sockets.length) resolve();
        }
      });
      ws.send(JSON.stringify({ type: 'subscribe', sub: 1, streamId: spec.streamId, credit: 4 }));
    }
  });
  clearInterval(progress);
  process.stdout.write(`${JSON.stringify({ open: sockets.length })}\n`);
  process.stdin.resume();
  process.stdin.on('end', () => {
    for (const ws of sockets) ws.terminate();
    process.exit(0);
  });
}

(spec.mode === 'hold' ? hold() : load()).catch((err: unknown) => {
  process.stdout.write(`${JSON.stringify({ error: String(err) })}\n`);
  process.exit(1);
});
