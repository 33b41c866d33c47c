/**
 * End-to-end backpressure: a socket that stops reading pauses the plugin and host
 * memory stays flat; fan-out of one stream to clients at different speeds.
 */
import assert from 'node:assert/strict';
import { test, type TestContext } from 'node:test';
import type { ServerOptions, SluiceServer } from '../host/server/server.js';
import { FakeHost, http, rawConnect, sleep, startTestServer, token, type FakeStream, type RawClient } from './server-helpers.js';

const MIB = 1024 * 1024;

test('a client that stops reading its socket pauses a plugin that would produce forever; RSS stays flat', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host, { fanout: { chunks: 1024, bytes: 64 * MIB }, maxCredit: 1024 });
  const c = await rawConnect(t, server, { token: await token() });
  // Plenty of credit: only the socket can stop the flow.
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { size: 32 * 1024 }, credit: 1024 });
  const started = await c.frame((f) => f.type === 'started');
  (c.ws as unknown as { _socket: { pause(): void } })._socket.pause();
  const stream = host.streams.get(String(started.streamId))!;

  // Let the kernel buffers and the high watermark fill, then watch for 2.5 s.
  const settleDeadline = Date.now() + 5000;
  let last = -1;
  while (Date.now() < settleDeadline) {
    await sleep(250);
    if (stream.produced === last) break;
    last = stream.produced;
  }
  const producedAtPause = stream.produced;
  const rss: number[] = [];
  for (let i = 0; i < 10; i++) {
    rss.push(process.memoryUsage().rss);
    await sleep(250);
  }
  assert.ok(producedAtPause < 1024, `the socket, not the credit, stopped the plugin: produced ${producedAtPause} of 1024 credited`);
  assert.ok(stream.produced - producedAtPause <= 16, `plugin paused: produced ${producedAtPause} -> ${stream.produced}`);
  const growth = Math.max(...rss) - rss[0]!;
  assert.ok(growth < 32 * MIB, `RSS flat while paused: grew ${(growth / MIB).toFixed(1)} MiB`);
  const metrics = await http(server, 'GET', '/metrics');
  const pauses = /sluice_server_backpressure_pauses_total (\d+)/.exec(metrics.text);
  assert.ok(pauses !== null && Number(pauses[1]) >= 1, 'a backpressure pause was counted');

  // Resume reading: the stream flows again, contiguously.
  (c.ws as unknown as { _socket: { resume(): void } })._socket.resume();
  await c.waitFor((x) => x.seqs(1).length >= 1024 || undefined, 10_000, 'all credited chunks');
  const seqs = c.seqs(1);
  assert.deepEqual(seqs.slice(0, 1024), Array.from({ length: 1024 }, (_, i) => i));
});

/** Grant credit as chunks arrive, `perTick` every `everyMs` (a client reading at a fixed pace). */
function paceReader(c: RawClient, sub: number, perTick: number, everyMs: number): () => void {
  let granted = 0;
  const timer = setInterval(() => {
    const received = c.seqs(sub).length;
    if (granted - received < perTick) {
      c.send({ type: 'credit', sub, n: perTick });
      granted += perTick;
    }
  }, everyMs);
  return () => clearInterval(timer);
}

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

/**
 * A server over a FakeHost and one `counter:count` stream read by `readers` clients,
 * each on sub 1: the first starts it, the others subscribe from seq 0. Nobody has
 * credit yet, so every reader starts from chunk 0.
 */
async function oneStream(t: TestContext, options: ServerOptions, params: object, readers: number): Promise<{ host: FakeHost; server: SluiceServer; stream: FakeStream; clients: RawClient[] }> {
  const host = new FakeHost();
  const server = await startTestServer(t, host, options);
  const tok = await token({ streams: ['*'] });
  const clients: RawClient[] = [];
  for (let i = 0; i < readers; i++) clients.push(await rawConnect(t, server, { token: tok }));
  clients[0]!.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params, credit: 0 });
  const streamId = String((await clients[0]!.frame((f) => f.type === 'started')).streamId);
  for (const c of clients.slice(1)) {
    c.send({ type: 'subscribe', sub: 1, streamId, fromSeq: 0, credit: 0 });
    await c.frame((f) => f.type === 'started');
  }
  return { host, server, stream: host.streams.get(streamId)!, clients };
}

/** Grant `initial`, then return each frame's credit as it arrives (a reader as fast as its socket); `hold` may keep a frame's credit. */
function readEagerly(c: RawClient, initial: number, hold?: (count: number) => boolean): void {
  c.ws.on('message', (data) => {
    const f = JSON.parse(data.toString()) as { type: string; data?: unknown[] };
    if (f.type === 'chunks' && hold?.(f.data!.length) !== true) c.send({ type: 'credit', sub: 1, n: f.data!.length });
  });
  c.send({ type: 'credit', sub: 1, n: initial });
}

async function slowConsumersCounted(server: SluiceServer): Promise<number> {
  const metrics = await http(server, 'GET', '/metrics');
  return Number(/sluice_server_slow_consumers_total (\d+)/.exec(metrics.text)?.[1]);
}

test('two clients on one stream at different speeds both get a contiguous sequence while the slow one stays within the fan-out ring', async (t) => {
  const { clients } = await oneStream(t, {}, { n: 300 }, 2);
  const [fast, slow] = clients as [RawClient, RawClient];
  const stop = paceReader(slow, 1, 20, 20);
  t.after(stop);
  fast.send({ type: 'credit', sub: 1, n: 1000 });
  await fast.frame((f) => f.type === 'end', 'fast end');
  assert.deepEqual(fast.seqs(1), range(300));
  assert.ok(slow.seqs(1).length < 300, 'the slow reader is behind when the fast one finishes');
  await slow.frame((f) => f.type === 'end', 'slow end', 10_000);
  stop();
  assert.deepEqual(slow.seqs(1), range(300));
});

test('a subscriber that holds the stream back with a full ring gets ERR_SLOW_CONSUMER after slowConsumerMs; meanwhile the fast one and the plugin wait, then go on', async (t) => {
  const { stream, clients } = await oneStream(t, { fanout: { chunks: 64, bytes: 8 * MIB }, slowConsumerMs: 400 }, {}, 2);
  const [fast, slow] = clients as [RawClient, RawClient];
  slow.send({ type: 'credit', sub: 1, n: 10 });
  const stopFast = paceReader(fast, 1, 64, 5);
  t.after(stopFast);
  // The slow one, 10 chunks in and granting no more, lets the head reach 10 + 64 and no further.
  await fast.waitFor((x) => x.seqs(1).length >= 74 || undefined, 10_000, 'fast reaches the ring');
  const heldAt = performance.now();
  await sleep(200);
  assert.equal(fast.seqs(1).length, 74, 'the fast reader waits while the slow one holds the stream');
  // The fake plugin keeps at most 16 chunks buffered ahead of its consumer.
  assert.ok(stream.produced <= 74 + 16 + 1, `the plugin is paused while the stream is held: produced ${stream.produced}`);
  const err = await slow.frame((f) => f.type === 'error' && f.sub === 1, 'slow consumer error', 10_000);
  const heldFor = performance.now() - heldAt;
  assert.equal(err.code, 'ERR_SLOW_CONSUMER');
  assert.equal(err.fatal, true);
  assert.match(String(err.message), /held stream .* back/);
  assert.ok(heldFor >= 300, `dropped after about slowConsumerMs, not at once: ${heldFor.toFixed(0)} ms`);
  assert.deepEqual(slow.seqs(1), range(10));
  await fast.waitFor((x) => x.seqs(1).length >= 74 + 500 || undefined, 10_000, 'fast goes on');
  stopFast();
  const seqs = fast.seqs(1);
  assert.deepEqual(seqs, range(seqs.length));
  assert.ok(stream.produced <= seqs.length + 64 + 16 + 1, `producer bounded by the fastest reader: produced ${stream.produced}, fast got ${seqs.length}`);
});

test('ten subscribers of one fast stream, one of them stalling for 300 ms midway, all get every chunk (ring of 64): the others wait for it', async (t) => {
  const n = 3000;
  const { server, clients } = await oneStream(t, { fanout: { chunks: 64, bytes: 8 * MIB }, slowConsumerMs: 2000 }, { n }, 10);
  // Client 5 returns no credit for 300 ms once it has 500 chunks (a GC pause, a network
  // blip), then all it owes: far longer than the others need to run a ring ahead of it.
  const stall = clients[5]!;
  let received = 0;
  let owed = 0;
  let stalling = false;
  let stalled = false;
  let othersAtStallEnd = 0;
  const hold = (count: number): boolean => {
    received += count;
    if (!stalling && (stalled || received < 500)) return false;
    owed += count;
    if (!stalling) {
      stalling = stalled = true;
      setTimeout(() => {
        othersAtStallEnd = Math.max(...clients.filter((x) => x !== stall).map((x) => x.seqs(1).length));
        stalling = false;
        stall.send({ type: 'credit', sub: 1, n: owed });
      }, 300);
    }
    return true;
  };
  for (const c of clients) readEagerly(c, 64, c === stall ? hold : undefined);
  for (const [i, c] of clients.entries()) {
    const end = await c.frame((f) => f.type === 'end' || f.type === 'error', `client ${i} end`, 20_000);
    assert.equal(end.type, 'end', `client ${i}: ${JSON.stringify(end)}`);
    assert.deepEqual(c.seqs(1), range(n), `client ${i} got every chunk once, in order`);
  }
  assert.ok(stalled, 'client 5 stalled');
  assert.ok(othersAtStallEnd <= 500 + 64 + 64, `the others waited for the stalled one: they had ${othersAtStallEnd} chunks when it went on after 500`);
  assert.equal(await slowConsumersCounted(server), 0);
});

test('a subscriber slower than the others but never stalled is not dropped: the stream goes at its pace', async (t) => {
  const { server, clients } = await oneStream(t, { fanout: { chunks: 64, bytes: 8 * MIB }, slowConsumerMs: 300 }, { n: 600 }, 2);
  const [fast, slow] = clients as [RawClient, RawClient];
  // ~1,000 chunks/s: 600 chunks take ~0.6 s, twice slowConsumerMs, but it never stops for long.
  const stop = paceReader(slow, 1, 20, 20);
  t.after(stop);
  fast.send({ type: 'credit', sub: 1, n: 1000 });
  await fast.frame((f) => f.type === 'end', 'fast end', 10_000);
  assert.ok(slow.seqs(1).length >= 600 - 64 - 20, `the fast reader was held within a ring of the slow one: slow had ${slow.seqs(1).length} at the end`);
  await slow.frame((f) => f.type === 'end' || f.type === 'error', 'slow end', 10_000);
  stop();
  assert.deepEqual(slow.seqs(1), range(600));
  assert.deepEqual(fast.seqs(1), range(600));
  assert.equal(await slowConsumersCounted(server), 0);
});

test("chunks large against the ring's bytes: pull rounds stay within them, so two readers get everything and nobody is dropped", async (t) => {
  // 256 KiB of ring; before rounds were bounded by it, a round of 2 KiB chunks (up to 4 x 64 KiB plus a slice of 64 chunks) evicted chunk 0 under both readers.
  const { clients } = await oneStream(t, { fanout: { chunks: 1024, bytes: 256 * 1024 } }, { n: 1000, size: 2048 }, 2);
  for (const c of clients) readEagerly(c, 1024);
  for (const c of clients) {
    const end = await c.frame((f) => f.type === 'end' || f.type === 'error', 'end', 20_000);
    assert.equal(end.type, 'end', JSON.stringify(end).slice(0, 300));
    assert.deepEqual(c.seqs(1), range(1000));
  }
});

test('a stream with no subscriber left is paused, then cancelled after lingerMs', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host, { lingerMs: 300 });
  const c = await rawConnect(t, server, { token: await token() });
  c.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: {}, credit: 5 });
  const streamId = String((await c.frame((f) => f.type === 'started')).streamId);
  c.ws.close();
  await c.closed();
  const stream = host.streams.get(streamId)!;
  const produced = stream.produced;
  await sleep(100);
  assert.equal(stream.produced, produced);
  assert.equal(stream.status, 'running');
  await sleep(500);
  assert.equal(stream.status, 'cancelled');
});
