/**
 * The isolate sandbox's data frames (sandbox/isolate/frames.ts): what the host reads is
 * what the process wrote, however the pipe splits it, and a frame that does not add up
 * is reported once and ends the reading.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serialize } from 'node:v8';
import { FrameReader, encodeFrame, type OutItem } from '../sandbox/isolate/frames.js';
import { UNPACKED } from '../protocol/chunk.js';
import type { SluiceError } from '../protocol/errors.js';

function packedBatch(s: string, firstSeq: number, chunks: Uint8Array[], slack = 0): OutItem {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const arena = new Uint8Array(total + slack);
  let off = 0;
  for (const c of chunks) {
    arena.set(c, off);
    off += c.length;
  }
  const sizes = Int32Array.from(chunks, (c) => c.length);
  return { s, m: { type: 'batch', firstSeq, chunks: [], bytes: total, largest: Math.max(...chunks.map((c) => c.length)), packed: { buffer: arena.buffer, sizes } } };
}

function bytesOf(parts: Uint8Array[]): Buffer {
  return Buffer.concat(parts.map((p) => Buffer.from(p.buffer, p.byteOffset, p.byteLength)));
}

/** Feed `wire` to a reader in pieces of `step` bytes; collect what it delivers. */
function read(wire: Buffer, step: number): { items: unknown[][]; broken: SluiceError[] } {
  const items: unknown[][] = [];
  const broken: SluiceError[] = [];
  const reader = new FrameReader(
    (i) => items.push(i),
    (e) => broken.push(e),
  );
  for (let off = 0; off < wire.length; off += step) reader.push(wire.subarray(off, off + step));
  return { items, broken };
}

test('frames: items and packed bytes arrive as sent, whatever the read size', () => {
  const a = [Uint8Array.of(1, 2, 3), new Uint8Array(0), Uint8Array.of(4)];
  const b = [new Uint8Array(700).fill(9)];
  const frame1: OutItem[] = [
    { s: 'x', m: { type: 'log', level: 'info', message: 'hi' } },
    packedBatch('x', 0, a, 13),
    { s: 'y', m: { type: 'checkpoint', seq: 2, state: { n: 1, raw: Uint8Array.of(5) } } },
    packedBatch('y', 5, b),
  ];
  const frame2: OutItem[] = [{ s: 'x', m: { type: 'end', kind: 'stream' } }, { s: 'y', x: { code: 'ERR_CANCELLED', message: 'bye' } }];
  const wire = Buffer.concat([bytesOf(encodeFrame(frame1)), bytesOf(encodeFrame(frame2))]);
  for (const step of [1, 3, 8, 100, wire.length]) {
    const { items, broken } = read(wire, step);
    assert.deepEqual(broken, [], `step ${step}`);
    assert.equal(items.length, 2, `step ${step}`);
    const [log, batchA, checkpoint, batchB] = items[0] as Array<{ s: string; m: Record<string, unknown> }>;
    assert.deepEqual(log, frame1[0]);
    assert.deepEqual(checkpoint, frame1[2]);
    for (const [got, chunks, firstSeq] of [[batchA, a, 0], [batchB, b, 5]] as const) {
      const packed = got!.m.packed as { buffer: ArrayBuffer; sizes: Int32Array };
      assert.equal(got!.m.firstSeq, firstSeq);
      assert.deepEqual([...packed.sizes], chunks.map((c) => c.length));
      // Only the used bytes travel, in a buffer of their own.
      assert.deepEqual(new Uint8Array(packed.buffer), Uint8Array.from(chunks.flatMap((c) => [...c])));
    }
    assert.deepEqual(items[1], frame2);
  }
});

test('frames: an unpacked chunk in a packed batch is not part of the body', () => {
  const item = packedBatch('x', 0, [Uint8Array.of(1, 2)]);
  const m = (item as { m: { chunks: unknown[]; packed: { sizes: Int32Array } } }).m;
  m.chunks = ['text'];
  m.packed.sizes = Int32Array.of(2, UNPACKED);
  const { items, broken } = read(bytesOf(encodeFrame([item])), 5);
  assert.deepEqual(broken, []);
  const got = (items[0]![0] as { m: { chunks: unknown[]; packed: { buffer: ArrayBuffer } } }).m;
  assert.deepEqual(got.chunks, ['text']);
  assert.deepEqual(new Uint8Array(got.packed.buffer), Uint8Array.of(1, 2));
});

test('frames: a frame that does not add up is reported once, and nothing after it is read', () => {
  const prefix = (meta: number, body: number): Buffer => {
    const b = Buffer.alloc(8);
    b.writeUInt32LE(meta, 0);
    b.writeUInt32LE(body, 4);
    return b;
  };
  const good = bytesOf(encodeFrame([{ s: 'x', m: { type: 'end', kind: 'unary' } }]));
  const meta = (value: unknown, body = 0): Buffer => {
    const m = serialize(value);
    return Buffer.concat([prefix(m.length, body), m, Buffer.alloc(body)]);
  };
  const cases: Array<[string, Buffer]> = [
    ['empty meta', prefix(0, 0)],
    ['meta not { items, lens }', meta({ items: 'no' })],
    ['lengths not adding up', meta({ items: [], lens: [4] }, 3)],
    ['a negative length', meta({ items: [], lens: [-1] })],
    ['a length without a packed batch', meta({ items: [{ s: 'x', m: { type: 'end' } }], lens: [2] }, 2)],
    ['a packed batch without a length', meta({ items: [{ s: 'x', m: { type: 'batch', packed: { sizes: Int32Array.of(1) } } }], lens: [] })],
    ['meta that does not deserialize', Buffer.concat([prefix(4, 0), Buffer.from([0xff, 0xff, 0xff, 0xff])])],
  ];
  for (const [name, bad] of cases) {
    const { items, broken } = read(Buffer.concat([good, bad, good]), 7);
    assert.equal(items.length, 1, name);
    assert.equal(broken.length, 1, name);
    assert.equal(broken[0]!.code, 'ERR_PROTOCOL', name);
  }
});

test('frames: a listener that throws does not cost the frames after it in the same read', () => {
  const wire = Buffer.concat([1, 2, 3].map((n) => bytesOf(encodeFrame([{ s: String(n), m: { type: 'end', kind: 'unary' } }]))));
  const seen: string[] = [];
  const reader = new FrameReader(
    (items) => {
      const s = (items[0] as { s: string }).s;
      seen.push(s);
      if (s === '1') throw new Error('listener');
    },
    () => assert.fail('not broken'),
  );
  assert.throws(() => reader.push(wire), /listener/);
  assert.deepEqual(seen, ['1', '2', '3']);
});
