/**
 * The fan-out ring (host/server/ring.ts): every chunk's JSON is kept once, as UTF-8
 * bytes in a circular buffer, and a subscriber's frame is a header plus a copy of a
 * contiguous range. A wrong offset here would send a client corrupt JSON or the wrong
 * seqs, so the frame contents are checked against what was pushed, under wrap-around,
 * growth, eviction and multi-byte text.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ChunkRing, FrameScratch } from '../host/server/ring.js';
import { encodeChunkJson, encodeChunksJson } from '../host/server/subscription.js';

/** A small seeded PRNG (mulberry32), so a failure reproduces. */
function prng(seed: number): (n: number) => number {
  let a = seed >>> 0;
  return (n) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const ALPHABET = ['a', 'b', 'é', '€', '😀', '"', '\\', '\n'];

test('a frame carries exactly the pushed chunks of its range, in order, as valid JSON', () => {
  const ring = new ChunkRing({ chunks: 8, bytes: 1 << 16 });
  const scratch = new FrameScratch();
  for (let i = 0; i < 5; i++) ring.push(JSON.stringify({ i, text: 'é😀' }));
  ring.commit();
  const { bytes, count } = ring.frame(scratch, 3, 1, 10, 1 << 16);
  const frame = JSON.parse(Buffer.from(bytes).toString('utf8')) as { sub: number; seq: number; data: { i: number }[] };
  assert.equal(count, 4);
  assert.equal(frame.sub, 3);
  assert.equal(frame.seq, 1);
  assert.deepEqual(frame.data.map((d) => d.i), [1, 2, 3, 4]);
});

test('randomised: wrap-around, growth, eviction and multi-byte text never corrupt a frame or break the bounds', () => {
  const rnd = prng(0x51ce);
  let frames = 0;
  for (let trial = 0; trial < 200; trial++) {
    const slots = 1 + rnd(50);
    const maxBytes = 1 + rnd(20_000);
    const ring = new ChunkRing({ chunks: slots, bytes: maxBytes });
    const scratch = new FrameScratch();
    const pushed: string[] = [];
    const start = rnd(3) === 0 ? rnd(100) : 0;
    if (start > 0) ring.startAt(start);
    for (let step = 0; step < 300; step++) {
      const len = rnd(3) === 0 ? rnd(3000) : rnd(40);
      let s = '';
      for (let i = 0; i < len; i++) s += ALPHABET[rnd(ALPHABET.length)];
      const json = JSON.stringify({ s });
      pushed.push(json);
      ring.push(json);
      if (rnd(4) === 0) ring.commit();
      assert.equal(ring.nextSeq, start + pushed.length);
      assert.ok(ring.nextSeq - ring.baseSeq <= slots, 'never more chunks than the ring holds');
      if (rnd(3) !== 0) continue;
      ring.commit();
      const base = ring.baseSeq;
      if (ring.committedSeq - base > 1) assert.ok(ring.endByte - ring.startOf(base) <= maxBytes, 'live bytes stay within the limit');
      if (ring.committedSeq <= base) continue;
      const first = base + rnd(ring.committedSeq - base);
      const maxChunks = 1 + rnd(20);
      const { bytes, count } = ring.frame(scratch, 7, first, maxChunks, 1 + rnd(5000));
      const frame = JSON.parse(Buffer.from(bytes).toString('utf8')) as { sub: number; seq: number; data: unknown[] };
      frames++;
      assert.equal(frame.sub, 7);
      assert.equal(frame.seq, first);
      assert.ok(count >= 1 && count <= maxChunks);
      assert.equal(frame.data.length, count);
      for (let i = 0; i < count; i++) assert.deepEqual(frame.data[i], JSON.parse(pushed[first - start + i]!));
    }
  }
  assert.ok(frames > 1000, `checked ${frames} frames`);
});

/** A random chunk value: nesting, strings full of quotes and backslashes, bytes, tag-shaped objects. */
function randomValue(rnd: (n: number) => number, depth = 0): unknown {
  const text = (): string => {
    let s = '';
    for (let i = rnd(12); i > 0; i--) s += ['"', '\\', '\\"', ',', ']', '}', '{', '[', 'é', '😀', 'a', '\n'][rnd(12)];
    return s;
  };
  switch (depth > 3 ? rnd(5) : rnd(9)) {
    case 0: return rnd(1000) - 500;
    case 1: return text();
    case 2: return null;
    case 3: return rnd(2) === 0;
    case 4: return undefined;
    case 5: return Uint8Array.from({ length: rnd(6) }, () => rnd(256));
    case 6: return { $bytes: text() };
    case 7: return Array.from({ length: rnd(4) }, () => randomValue(rnd, depth + 1));
    default: {
      const o: Record<string, unknown> = {};
      for (let i = rnd(4); i > 0; i--) o[text()] = randomValue(rnd, depth + 1);
      return o;
    }
  }
}

test('encodeChunksJson: each piece is exactly what encodeChunkJson gives that chunk', () => {
  const rnd = prng(0xba7c);
  for (let trial = 0; trial < 2000; trial++) {
    const datas = Array.from({ length: rnd(8) }, () => randomValue(rnd));
    const { text, lengths } = encodeChunksJson(datas);
    assert.equal(lengths.length, datas.length);
    let at = 0;
    for (let i = 0; i < datas.length; i++) {
      assert.equal(text.slice(at, at + lengths[i]!), `${encodeChunkJson(datas[i])},`);
      at += lengths[i]!;
    }
    assert.equal(at, text.length);
  }
});

test('pushMany: chunks pushed in pieces frame exactly as pushed one by one, eviction included', () => {
  const rnd = prng(0x9a11);
  for (let trial = 0; trial < 200; trial++) {
    const slots = 1 + rnd(40);
    const ring = new ChunkRing({ chunks: slots, bytes: 1 + rnd(20_000) });
    const scratch = new FrameScratch();
    const pushed: string[] = [];
    for (let step = 0; step < 100; step++) {
      const datas = Array.from({ length: 1 + rnd(slots) }, () => ({ v: randomValue(rnd) }));
      const { text, lengths } = encodeChunksJson(datas);
      ring.pushMany(text, lengths);
      for (const d of datas) pushed.push(encodeChunkJson(d));
      assert.equal(ring.nextSeq, pushed.length);
      assert.ok(ring.nextSeq - ring.baseSeq <= slots, 'never more chunks than the ring holds');
      ring.commit();
      if (ring.committedSeq <= ring.baseSeq) continue;
      const first = ring.baseSeq + rnd(ring.committedSeq - ring.baseSeq);
      const { bytes, count } = ring.frame(scratch, 1, first, 1 + rnd(20), 1 + rnd(5000));
      const frame = JSON.parse(Buffer.from(bytes).toString('utf8')) as { data: unknown[] };
      for (let i = 0; i < count; i++) assert.deepEqual(frame.data[i], JSON.parse(pushed[first + i]!));
    }
  }
});
