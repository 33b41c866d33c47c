/**
 * End-to-end backpressure: a socket that stops reading pauses the plugin and host
 * memory stays flat; fan-out of one stream to clients at different speeds.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FakeHost, http, rawConnect, sleep, startTestServer, token, type RawClient } from './server-helpers.js';

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

test('two clients on one stream at different speeds both get a contiguous sequence while the slow one stays within the fan-out ring', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host);
  const tok = await token({ streams: ['*'] });
  const fast = await rawConnect(t, server, { token: tok });
  fast.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 300 }, credit: 1000 });
  const streamId = String((await fast.frame((f) => f.type === 'started')).streamId);
  const slow = await rawConnect(t, server, { token: tok });
  slow.send({ type: 'subscribe', sub: 9, streamId, fromSeq: 0, credit: 0 });
  await slow.frame((f) => f.type === 'started');
  const stop = paceReader(slow, 9, 20, 20);
  t.after(stop);
  await fast.frame((f) => f.type === 'end', 'fast end');
  assert.deepEqual(fast.seqs(1), Array.from({ length: 300 }, (_, i) => i));
  assert.ok(slow.seqs(9).length < 300, 'the slow reader is behind when the fast one finishes');
  await slow.frame((f) => f.type === 'end', 'slow end', 10_000);
  stop();
  assert.deepEqual(slow.seqs(9), Array.from({ length: 300 }, (_, i) => i));
});

test('a subscriber that holds the stream back with a full ring gets ERR_SLOW_CONSUMER after slowConsumerMs; meanwhile the fast one waits, then goes on', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host, { fanout: { chunks: 64, bytes: 8 * MIB }, slowConsumerMs: 400 });
  const tok = await token({ streams: ['*'] });
  const fast = await rawConnect(t, server, { token: tok });
  fast.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: {}, credit: 0 });
  const streamId = String((await fast.frame((f) => f.type === 'started')).streamId);
  const slow = await rawConnect(t, server, { token: tok });
  slow.send({ type: 'subscribe', sub: 2, streamId, credit: 10 });
  await slow.frame((f) => f.type === 'started');
  const stopFast = paceReader(fast, 1, 64, 5);
  t.after(stopFast);
  // The slow one, 10 chunks in and granting no more, lets the head reach 10 + 64 and no further.
  await fast.waitFor((x) => x.seqs(1).length >= 74 || undefined, 10_000, 'fast reaches the ring');
  const heldAt = performance.now();
  await sleep(200);
  assert.equal(fast.seqs(1).length, 74, 'the fast reader waits while the slow one holds the stream');
  const err = await slow.frame((f) => f.type === 'error' && f.sub === 2, 'slow consumer error', 10_000);
  const heldFor = performance.now() - heldAt;
  assert.equal(err.code, 'ERR_SLOW_CONSUMER');
  assert.equal(err.fatal, true);
  assert.match(String(err.message), /held stream .* back/);
  assert.ok(heldFor >= 300, `dropped after about slowConsumerMs, not at once: ${heldFor.toFixed(0)} ms`);
  assert.deepEqual(slow.seqs(2), Array.from({ length: 10 }, (_, i) => i));
  await fast.waitFor((x) => x.seqs(1).length >= 74 + 500 || undefined, 10_000, 'fast goes on');
  stopFast();
  const seqs = fast.seqs(1);
  assert.deepEqual(seqs, Array.from({ length: seqs.length }, (_, i) => i));
  const stream = host.streams.get(streamId)!;
  assert.ok(stream.produced <= seqs.length + 64 + 16 + 1, `producer bounded by the fastest reader: produced ${stream.produced}, fast got ${seqs.length}`);
});

test('ten subscribers of one fast stream, one of them stalling for 300 ms midway, all get every chunk (ring of 64): the others wait for it', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host, { fanout: { chunks: 64, bytes: 8 * MIB }, slowConsumerMs: 2000 });
  const tok = await token({ streams: ['*'] });
  const n = 3000;
  const clients: RawClient[] = [];
  for (let i = 0; i < 10; i++) clients.push(await rawConnect(t, server, { token: tok }));
  clients[0]!.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n }, credit: 0 });
  const streamId = String((await clients[0]!.frame((f) => f.type === 'started')).streamId);
  for (const c of clients.slice(1)) {
    c.send({ type: 'subscribe', sub: 1, streamId, fromSeq: 0, credit: 0 });
    await c.frame((f) => f.type === 'started');
  }
  // Each returns the credit for a frame as soon as it arrives, except that client 5
  // returns none for 300 ms once it has 500 chunks (a GC pause, a network blip), then
  // all it owes: far longer than the others need to run a ring ahead of it.
  const stall = clients[5]!;
  let stalling = false;
  let stalled = false;
  let owed = 0;
  let othersAtStallEnd = 0;
  for (const c of clients) {
    let received = 0;
    c.ws.on('message', (data) => {
      const f = JSON.parse(data.toString()) as { type: string; data?: unknown[] };
      if (f.type !== 'chunks') return;
      received += f.data!.length;
      if (c === stall && (stalling || (received >= 500 && !stalled))) {
        owed += f.data!.length;
        if (!stalling) {
          stalling = stalled = true;
          setTimeout(() => {
            othersAtStallEnd = Math.max(...clients.filter((x) => x !== stall).map((x) => x.seqs(1).length));
            stalling = false;
            c.send({ type: 'credit', sub: 1, n: owed });
          }, 300);
        }
        return;
      }
      c.send({ type: 'credit', sub: 1, n: f.data!.length });
    });
    c.send({ type: 'credit', sub: 1, n: 64 });
  }
  const expected = Array.from({ length: n }, (_, i) => i);
  for (const [i, c] of clients.entries()) {
    const end = await c.frame((f) => f.type === 'end' || f.type === 'error', `client ${i} end`, 20_000);
    assert.equal(end.type, 'end', `client ${i}: ${JSON.stringify(end)}`);
    assert.deepEqual(c.seqs(1), expected, `client ${i} got every chunk once, in order`);
  }
  assert.ok(stalled, 'client 5 stalled');
  assert.ok(othersAtStallEnd <= 500 + 64 + 64, `the others waited for the stalled one: they had ${othersAtStallEnd} chunks when it went on after 500`);
  const metrics = await http(server, 'GET', '/metrics');
  assert.match(metrics.text, /sluice_server_slow_consumers_total 0\b/);
});

test('a subscriber slower than the others but never stalled is not dropped: the stream goes at its pace', async (t) => {
  const host = new FakeHost();
  const server = await startTestServer(t, host, { fanout: { chunks: 64, bytes: 8 * MIB }, slowConsumerMs: 300 });
  const tok = await token({ streams: ['*'] });
  const fast = await rawConnect(t, server, { token: tok });
  fast.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 600 }, credit: 0 });
  const streamId = String((await fast.frame((f) => f.type === 'started')).streamId);
  const slow = await rawConnect(t, server, { token: tok });
  slow.send({ type: 'subscribe', sub: 9, streamId, fromSeq: 0, credit: 0 });
  await slow.frame((f) => f.type === 'started');
  // ~1,000 chunks/s: 600 chunks take ~0.6 s, twice slowConsumerMs, but it never stops for long.
  const stop = paceReader(slow, 9, 20, 20);
  t.after(stop);
  fast.send({ type: 'credit', sub: 1, n: 1000 });
  await fast.frame((f) => f.type === 'end', 'fast end', 10_000);
  assert.ok(slow.seqs(9).length >= 600 - 64 - 20, `the fast reader was held within a ring of the slow one: slow had ${slow.seqs(9).length} at the end`);
  await slow.frame((f) => f.type === 'end' || f.type === 'error', 'slow end', 10_000);
  stop();
  assert.deepEqual(slow.seqs(9), Array.from({ length: 600 }, (_, i) => i));
  assert.deepEqual(fast.seqs(1), Array.from({ length: 600 }, (_, i) => i));
  const metrics = await http(server, 'GET', '/metrics');
  assert.match(metrics.text, /sluice_server_slow_consumers_total 0\b/);
});

test('chunks large against the ring\'s bytes: pull rounds stay within them, so two readers get everything and nobody is dropped', async (t) => {
  const host = new FakeHost();
  // 256 KiB of ring; before rounds were bounded by it, a round of 2 KiB chunks (up to 4 x 64 KiB plus a slice of 64 chunks) evicted chunk 0 under both readers.
  const server = await startTestServer(t, host, { fanout: { chunks: 1024, bytes: 256 * 1024 } });
  const tok = await token({ streams: ['*'] });
  const a = await rawConnect(t, server, { token: tok });
  a.send({ type: 'start', sub: 1, plugin: 'counter', action: 'count', params: { n: 1000, size: 2048 }, credit: 0 });
  const streamId = String((await a.frame((f) => f.type === 'started')).streamId);
  const b = await rawConnect(t, server, { token: tok });
  b.send({ type: 'subscribe', sub: 1, streamId, fromSeq: 0, credit: 0 });
  await b.frame((f) => f.type === 'started');
  for (const c of [a, b]) {
    c.ws.on('message', (data) => {
      const f = JSON.parse(data.toString()) as { type: string; data?: unknown[] };
      if (f.type === 'chunks') c.send({ type: 'credit', sub: 1, n: f.data!.length });
    });
    c.send({ type: 'credit', sub: 1, n: 1024 });
  }
  for (const c of [a, b]) {
    const end = await c.frame((f) => f.type === 'end' || f.type === 'error', 'end', 20_000);
    assert.equal(end.type, 'end', JSON.stringify(end).slice(0, 300));
    assert.deepEqual(c.seqs(1), Array.from({ length: 1000 }, (_, i) => i));
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
