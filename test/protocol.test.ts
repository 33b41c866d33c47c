/**
 * The contract in protocol/: the error catalogue and its doc, the host<->sandbox
 * parsers (accept/reject tables), chunk validation and the credit arithmetic.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import {
  BytePacker,
  CreditBalance,
  CreditLedger,
  UNPACKED,
  batchCount,
  checkPacking,
  unpackChunks,
  ERROR_CODES,
  MAX_RECYCLED_BUFFERS,
  SluiceError,
  copyChunk,
  errors,
  fromWireError,
  parseFromSandbox,
  parseStartSpec,
  parseToSandbox,
  toWireError,
  type ErrorCode,
  type FromSandbox,
  type StartSpec,
  type ToSandbox,
} from '../protocol/index.js';
import { StreamDriver } from '../sandbox/driver.js';

describe('error catalogue', () => {
  test('every code is documented in protocol/ERRORS.md exactly once, and the doc names no other code', async () => {
    const doc = await readFile(fileURLToPath(new URL('../../protocol/ERRORS.md', import.meta.url)), 'utf8');
    const documented = [...doc.matchAll(/^\| `(ERR_[A-Z_]+)` \|/gm)].map((m) => m[1]);
    const codes = Object.keys(ERROR_CODES);
    assert.deepEqual([...documented].sort(), [...codes].sort());
    assert.equal(new Set(documented).size, documented.length, 'no code documented twice');
  });

  test('one generated class per code; the code survives a trip across the wire', () => {
    for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
      const err = new errors[code]('why', { details: { n: 1 } });
      assert.ok(err instanceof SluiceError);
      assert.equal(err.code, code);
      const back = fromWireError(structuredClone(toWireError(err)));
      assert.equal(back.code, code);
      assert.equal(back.message, 'why');
      assert.deepEqual(back.details, { n: 1 });
      assert.equal(back.retriable, err.retriable);
    }
    assert.equal(new errors.ERR_SANDBOX_CRASHED().retriable, true);
    assert.equal(new errors.ERR_PLUGIN_THREW().retriable, false);
  });

  test('a thrown non-Error, or an error with a hostile getter, becomes ERR_PLUGIN_THREW data', () => {
    assert.deepEqual(toWireError(42), { code: 'ERR_PLUGIN_THREW', message: '42', details: { thrownType: 'number' } });
    const hostile = { get message() { throw new Error('gotcha'); } };
    Object.setPrototypeOf(hostile, Error.prototype);
    assert.equal(toWireError(hostile).code, 'ERR_PLUGIN_THREW');
  });
});

describe('host <-> sandbox parsers', () => {
  const fromSandboxAccept: unknown[] = [
    { type: 'batch', firstSeq: 0, chunks: [1], bytes: 8, largest: 8 },
    { type: 'batch', firstSeq: 0, chunks: [], bytes: 3, largest: 2, packed: { buffer: new ArrayBuffer(3), sizes: Int32Array.of(1, 2) } },
    { type: 'batch', firstSeq: 0, chunks: ['x'], bytes: 5, largest: 2, packed: { buffer: new ArrayBuffer(2), sizes: Int32Array.of(2, -1) } },
    { type: 'progress', fraction: 0.5 },
    { type: 'progress', fraction: 1, message: 'done' },
    { type: 'checkpoint', seq: 3, state: { a: 1 } },
    { type: 'log', level: 'warn', message: 'x' },
    { type: 'end', kind: 'stream' },
    { type: 'error', error: { code: 'ERR_PLUGIN_THREW', message: 'x' } },
    { type: 'input-credit', chunks: 4, bytes: 100 },
  ];
  const fromSandboxReject: [string, unknown][] = [
    ['not an object', 'batch'],
    ['null', null],
    ['unknown type', { type: 'hello' }],
    ['empty batch', { type: 'batch', firstSeq: 0, chunks: [], bytes: 0, largest: 0 }],
    ['empty packed batch', { type: 'batch', firstSeq: 0, chunks: [], bytes: 0, largest: 0, packed: { buffer: new ArrayBuffer(0), sizes: new Int32Array(0) } }],
    ['packed batch with a value for a packed chunk', { type: 'batch', firstSeq: 0, chunks: ['x'], bytes: 1, largest: 1, packed: { buffer: new ArrayBuffer(1), sizes: Int32Array.of(1) } }],
    ['packed batch missing a value', { type: 'batch', firstSeq: 0, chunks: [], bytes: 5, largest: 2, packed: { buffer: new ArrayBuffer(2), sizes: Int32Array.of(2, -1) } }],
    ['packed batch longer than its buffer', { type: 'batch', firstSeq: 0, chunks: [], bytes: 5, largest: 5, packed: { buffer: new ArrayBuffer(2), sizes: Int32Array.of(5) } }],
    ['negative seq', { type: 'batch', firstSeq: -1, chunks: [1], bytes: 8, largest: 8 }],
    ['fractional bytes', { type: 'batch', firstSeq: 0, chunks: [1], bytes: 1.5, largest: 1 }],
    ['progress over 1', { type: 'progress', fraction: 1.5 }],
    ['progress NaN', { type: 'progress', fraction: Number.NaN }],
    ['unknown log level', { type: 'log', level: 'trace', message: 'x' }],
    ['unknown end kind', { type: 'end', kind: 'both' }],
    ['error with an unknown code', { type: 'error', error: { code: 'ERR_NOPE', message: 'x' } }],
    ['error without an object', { type: 'error', error: 'boom' }],
  ];
  for (const msg of fromSandboxAccept) test(`parseFromSandbox accepts ${JSON.stringify(msg)}`, () => assert.equal(parseFromSandbox(msg).type, (msg as { type: string }).type));
  for (const [name, msg] of fromSandboxReject) {
    test(`parseFromSandbox rejects ${name} with ERR_PROTOCOL`, () => assert.throws(() => parseFromSandbox(msg), { code: 'ERR_PROTOCOL' }));
  }

  test('parseToSandbox accepts the host messages and rejects anything else', () => {
    for (const msg of [{ type: 'credit', chunks: 1, bytes: 1 }, { type: 'credit', chunks: 0, bytes: 0, buffers: [new ArrayBuffer(8)] }, { type: 'cancel', reason: 'x' }, { type: 'input', firstSeq: 0, chunks: [1], bytes: 8 }, { type: 'input-end' }, { type: 'input-error', error: { code: 'ERR_PLUGIN_THREW', message: 'x' } }]) {
      assert.equal(parseToSandbox(msg).type, msg.type);
    }
    const tooMany = Array.from({ length: MAX_RECYCLED_BUFFERS + 1 }, () => new ArrayBuffer(8));
    for (const bad of [{ type: 'credit', chunks: -1, bytes: 1 }, { type: 'credit', chunks: 1 }, { type: 'credit', chunks: 1, bytes: 1, buffers: [new Uint8Array(8)] }, { type: 'credit', chunks: 1, bytes: 1, buffers: tooMany }, { type: 'credit', chunks: 1, bytes: 1, buffers: new ArrayBuffer(8) }, { type: 'start' }, { type: 'input', firstSeq: 0, chunks: 'x', bytes: 1 }, 7]) {
      assert.throws(() => parseToSandbox(bad), { code: 'ERR_PROTOCOL' });
    }
  });

  test('parseStartSpec checks every field a sandbox relies on', () => {
    const good = { streamId: 's', action: 'a', params: {}, window: { chunks: 4, bytes: 100 }, limits: { maxChunkBytes: 0, memoryMb: 64, cpuMs: 0 } };
    assert.deepEqual(parseStartSpec(good).window, { chunks: 4, bytes: 100 });
    assert.deepEqual(parseStartSpec({ ...good, resume: { seq: 5, state: 1 } }).resume, { seq: 5, state: 1 });
    for (const bad of [{ ...good, streamId: '' }, { ...good, window: { chunks: 0, bytes: 1 } }, { ...good, limits: { memoryMb: 64 } }, { ...good, resume: { seq: -1 } }, { ...good, input: { window: {} } }]) {
      assert.throws(() => parseStartSpec(bad), { code: /ERR_(PROTOCOL|INVALID_ARGUMENT)/ });
    }
  });
});

describe('chunk validation', () => {
  test('JSON data and bytes are copied, never shared', () => {
    const bytes = new Uint8Array([1, 2, 3]);
    const value = { a: [1, 'x', null, true], b: bytes, __proto__: null } as Record<string, unknown>;
    const { data, bytes: size } = copyChunk(value);
    assert.deepEqual(JSON.parse(JSON.stringify(data, (_k, v) => (v instanceof Uint8Array ? [...v] : v))), { a: [1, 'x', null, true], b: [1, 2, 3] });
    bytes[0] = 99;
    assert.equal(((data as Record<string, unknown>).b as Uint8Array)[0], 1, 'mutating the original after the copy changes nothing');
    assert.ok(size > 0);
  });

  test('a `__proto__` key stays data and cannot replace the prototype', () => {
    const { data } = copyChunk(JSON.parse('{"__proto__": {"polluted": true}}'));
    assert.equal(({} as Record<string, unknown>).polluted, undefined);
    assert.deepEqual(Object.keys(data as object), ['__proto__']);
  });

  const invalid: [string, unknown][] = [
    ['undefined', undefined],
    ['a function', () => 1],
    ['a symbol', Symbol('s')],
    ['a bigint', 1n],
    ['NaN', Number.NaN],
    ['Infinity', Infinity],
    ['a Date', new Date(0)],
    ['a Map', new Map()],
    ['a Float64Array', new Float64Array(1)],
    ['a symbol key', { [Symbol('k')]: 1 }],
    ['a class instance', new (class Thing {})()],
  ];
  for (const [name, value] of invalid) test(`${name} is ERR_CHUNK_INVALID`, () => assert.throws(() => copyChunk(value), { code: 'ERR_CHUNK_INVALID' }));

  test('cycles, depth and size are bounded, and the path of the bad value is named', () => {
    const cyclic: Record<string, unknown> = { a: {} };
    (cyclic.a as Record<string, unknown>).back = cyclic;
    assert.throws(() => copyChunk(cyclic), { code: 'ERR_CHUNK_INVALID', message: /chunk\.a\.back/ });
    let deep: unknown = 0;
    for (let i = 0; i < 100; i++) deep = [deep];
    assert.throws(() => copyChunk(deep), { code: 'ERR_CHUNK_INVALID', message: /nested deeper/ });
    assert.throws(() => copyChunk('x'.repeat(2000), { maxDepth: 64, maxChunkBytes: 1000 }), { code: 'ERR_LIMIT_CHUNK_BYTES' });
    // A shared (non-cyclic) reference is fine.
    const shared = { v: 1 };
    assert.deepEqual(JSON.parse(JSON.stringify(copyChunk([shared, shared]).data)), [{ v: 1 }, { v: 1 }]);
  });

  test('a getter that throws is ERR_CHUNK_INVALID, not a crash', () => {
    assert.throws(() => copyChunk({ get x() { throw new Error('no'); } }), { code: 'ERR_CHUNK_INVALID' });
  });
});

describe('packed byte chunks', () => {
  const rules = { maxDepth: 64, maxChunkBytes: 0 };
  test('a recycled buffer is packed into again, and each batch unpacks to the bytes as packed', () => {
    const packer = new BytePacker();
    for (let i = 0; i < 3; i++) packer.pack(new Uint8Array(1000).fill(i), i, rules);
    const first = packer.take(3)!;
    assert.deepEqual(unpackChunks([], checkPacking([], first)).map((c) => (c as Uint8Array)[999]), [0, 1, 2]);
    packer.recycle(first.buffer);
    packer.pack(new Uint8Array(1000).fill(7), 0, rules);
    packer.pack('not bytes', 1, rules);
    packer.pack(new Uint8Array(2000).fill(8), 2, rules);
    const second = packer.take(3)!;
    assert.equal(second.buffer, first.buffer, 'the recycled buffer, not a fresh one');
    assert.deepEqual([...second.sizes], [1000, UNPACKED, 2000]);
    const [a, b, c] = unpackChunks(['x'], checkPacking(['x'], second)) as [Uint8Array, string, Uint8Array];
    assert.deepEqual([a.length, a.every((x) => x === 7), b, c.length, c.every((x) => x === 8)], [1000, true, 'x', 2000, true]);
  });

  test('a detached or too small buffer is not reused', () => {
    const packer = new BytePacker();
    const moved = new ArrayBuffer(8192);
    structuredClone(moved, { transfer: [moved] });
    const small = new ArrayBuffer(16);
    packer.recycle(moved);
    packer.recycle(small);
    packer.pack(new Uint8Array(5000).fill(3), 0, rules);
    const next = packer.take(1)!;
    assert.notEqual(next.buffer, moved);
    assert.notEqual(next.buffer, small);
    assert.deepEqual([...(unpackChunks([], next)[0] as Uint8Array)], Array(5000).fill(3));
  });
});

describe('credit arithmetic', () => {
  test('the sandbox stops when either balance runs out and may overshoot bytes by one chunk only', () => {
    const b = new CreditBalance({ chunks: 3, bytes: 100 });
    b.spend(60);
    assert.ok(b.available);
    b.spend(60);
    assert.ok(!b.available, 'bytes exhausted (overshoot by one chunk)');
    b.grant(0, 50);
    assert.ok(b.available);
    b.spend(1);
    assert.ok(!b.available, 'chunks exhausted');
  });

  test('the ledger says whether a grant goes to a sandbox with at most half a window left (it reads it soon)', () => {
    const l = new CreditLedger({ chunks: 8, bytes: 8000 });
    l.receive(2, 200, 100);
    l.consume(2, 200);
    l.flush();
    assert.equal(l.shortAtLastGrant, false, '6 of 8 chunks of credit left');
    l.receive(8, 800, 100);
    l.consume(4, 400);
    assert.equal(l.shortAtLastGrant, true, 'no credit left');
  });

  test('the host ledger rejects a sandbox that overspends, and returns credit in half-window slices', () => {
    const l = new CreditLedger({ chunks: 10, bytes: 1000 });
    assert.equal(l.receive(11, 10, 1), false, 'more chunks than granted');
    assert.equal(l.receive(5, 600, 200), true);
    assert.equal(l.receive(5, 600, 200), false, 'bytes overshot by more than the largest chunk');
    assert.equal(l.receive(2, 500, 400), true, 'an overshoot of less than one chunk is allowed');
    assert.equal(l.consume(1, 100), undefined, 'under half a window: held back');
    const grant = l.consume(4, 500);
    assert.deepEqual(grant, { chunks: 5, bytes: 600 });
    assert.deepEqual(l.flush(), undefined);
    l.consume(1, 10);
    assert.deepEqual(l.flush(), { chunks: 1, bytes: 10 }, 'a waiting consumer gets everything back at once');
  });

  test('a waiting consumer returns a sliver of credit only to a sandbox that may be starved of it', () => {
    const l = new CreditLedger({ chunks: 256, bytes: 1 << 20 });
    l.receive(1, 1024, 1024);
    l.consume(1, 1024);
    // 255 of 256 chunks of credit are the sandbox's: a grant of 1 would only make it send a batch of 1.
    assert.equal(l.flushIfShort(), undefined);
    l.receive(200, 200 * 1024, 1024);
    assert.deepEqual(l.flushIfShort(), { chunks: 1, bytes: 1024 }, 'with 55 chunks of credit left it may run dry: everything goes back');
    l.consume(100, 100 * 1024);
    assert.deepEqual(l.flushIfShort(), { chunks: 100, bytes: 100 * 1024 }, 'still short: everything consumed goes back');
  });
});

describe('stream driver', () => {
  test('out of credit, the driver takes a grant already waiting (poll) without a turn of the event loop', async () => {
    const sent: FromSandbox[] = [];
    let turns = 0;
    const queued: ToSandbox[] = [];
    const actions = {
      async *count() {
        for (let i = 0; i < 6; i++) yield i;
      },
    };
    const spec: StartSpec = { streamId: 's', action: 'count', params: {}, window: { chunks: 2, bytes: 1 << 20 }, limits: { maxChunkBytes: 0, memoryMb: 64, cpuMs: 0 } };
    const driver = new StreamDriver(actions, spec, {
      send: (msg) => {
        sent.push(msg);
        // The host answers each batch with credit for it, which waits in the port's queue.
        if (msg.type === 'batch') queued.push({ type: 'credit', chunks: batchCount(msg), bytes: msg.bytes });
      },
      later: (fn) => {
        turns++;
        setImmediate(fn);
      },
      poll: () => queued.shift(),
    });
    // Without the poll the driver would wait for credit that never comes through onMessage.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<'stuck'>((resolve) => (timer = setTimeout(() => resolve('stuck'), 2000)));
    const outcome = await Promise.race([driver.run(), timeout]);
    clearTimeout(timer);
    assert.notEqual(outcome, 'stuck', 'the driver waited for credit it could have polled');
    const batches = sent.filter((m): m is Extract<FromSandbox, { type: 'batch' }> => m.type === 'batch');
    assert.deepEqual(batches.flatMap((b) => b.chunks), [0, 1, 2, 3, 4, 5]);
    assert.deepEqual(sent.at(-1), { type: 'end', kind: 'stream' });
    // Nothing came through onMessage: each grant was polled as the driver ran dry (all but
    // the one for the last batch, which it never needed), and it never waited a turn.
    assert.equal(queued.length, 1);
    assert.equal(turns, 0);
  });

  test('byte chunks travel packed, the others as values in order; a batch of bytes alone carries no value array', async () => {
    const sent: Array<{ msg: FromSandbox; transfer: ArrayBuffer[] | undefined }> = [];
    const yielded: unknown[] = [Uint8Array.of(1), 'a', Uint8Array.of(2, 3), { b: 1 }, 7, Uint8Array.of(4), Uint8Array.of(5, 6)];
    const actions = {
      async *mixed({ split }: { split: number }) {
        for (const [i, value] of yielded.entries()) {
          // The bytes-only tail goes in a batch of its own.
          if (i === split) await new Promise((resolve) => setImmediate(resolve));
          yield value;
        }
      },
    };
    const spec: StartSpec = { streamId: 's', action: 'mixed', params: { split: 5 }, window: { chunks: 64, bytes: 1 << 20 }, limits: { maxChunkBytes: 0, memoryMb: 64, cpuMs: 0 } };
    const driver = new StreamDriver(actions, spec, { send: (msg, transfer) => sent.push({ msg, transfer }), later: setImmediate });
    await driver.run();
    const batches = sent.filter((s) => s.msg.type === 'batch');
    // What a host receives: each batch moved (as postMessage would) and parsed at the boundary.
    const received = batches.map(({ msg, transfer }) => parseFromSandbox(structuredClone(msg, { transfer })));
    assert.deepEqual(
      received.flatMap((b) => (b.type === 'batch' ? b.chunks : [])),
      yielded,
    );
    const last = batches.at(-1)!.msg as Extract<FromSandbox, { type: 'batch' }>;
    assert.deepEqual([last.firstSeq, last.chunks, [...last.packed!.sizes]], [5, [], [1, 2]]);
    assert.deepEqual(received.map((b) => (b.type === 'batch' ? b.firstSeq : -1)), [0, 1, 5]);
  });
});
