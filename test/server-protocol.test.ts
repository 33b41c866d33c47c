/**
 * sluice.v1 parsers pinned by accept / reject tables, the chunk-data encoding, and the
 * uWS native-binary guard with injected loader results.
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { test } from 'node:test';
import { isSluiceError } from '../protocol/errors.js';
import {
  base64ToBytes,
  bytesToBase64,
  decodeChunkData,
  decodeClientFrame,
  encodeChunkData,
  parseClientFrame,
  parseServerFrame,
  CLOSE_CODES,
} from '../protocol/ws.js';
import { loadNativeUws, requireUws, whyNotNative } from '../host/server/native.js';
import { startServer } from '../host/server/server.js';
import { FakeHost, SECRET } from './server-helpers.js';

const CLIENT_ACCEPT: [string, unknown, unknown][] = [
  ['minimal start', { type: 'start', sub: 1, plugin: 'p', action: 'a' }, { type: 'start', sub: 1, plugin: 'p', action: 'a' }],
  [
    'full start',
    { type: 'start', sub: 2, plugin: 'p', action: 'a', params: { x: [1] }, credit: 0, options: { durability: 'log', priority: 'high', limits: { wallMs: 10 }, window: { chunks: 4 }, id: 'my.id-1' } },
    { type: 'start', sub: 2, plugin: 'p', action: 'a', params: { x: [1] }, credit: 0, options: { durability: 'log', priority: 'high', limits: { wallMs: 10 }, window: { chunks: 4 }, id: 'my.id-1' } },
  ],
  ['start with null params', { type: 'start', sub: 1, plugin: 'p', action: 'a', params: null }, { type: 'start', sub: 1, plugin: 'p', action: 'a', params: null }],
  ['subscribe', { type: 'subscribe', sub: 3, streamId: 'abc.def' }, { type: 'subscribe', sub: 3, streamId: 'abc.def' }],
  ['subscribe resume', { type: 'subscribe', sub: 3, streamId: 'x', fromSeq: 42, epoch: 'e1', credit: 8 }, { type: 'subscribe', sub: 3, streamId: 'x', fromSeq: 42, epoch: 'e1', credit: 8 }],
  ['subscribe with the empty epoch of a storeless host', { type: 'subscribe', sub: 3, streamId: 'x', epoch: '' }, { type: 'subscribe', sub: 3, streamId: 'x' }],
  ['credit', { type: 'credit', sub: 1, n: 5 }, { type: 'credit', sub: 1, n: 5 }],
  ['cancel', { type: 'cancel', sub: 9 }, { type: 'cancel', sub: 9 }],
  ['unsubscribe', { type: 'unsubscribe', sub: 9 }, { type: 'unsubscribe', sub: 9 }],
  ['ping', { type: 'ping' }, { type: 'ping' }],
  ['ping with id', { type: 'ping', id: 'x' }, { type: 'ping', id: 'x' }],
  ['unknown extra top-level field ignored', { type: 'ping', extra: 1 }, { type: 'ping' }],
];

const CLIENT_REJECT: [string, unknown, RegExp][] = [
  ['not an object', 42, /`frame`/],
  ['an array', [], /`frame`/],
  ['null', null, /`frame`/],
  ['no type', { sub: 1 }, /`frame.type`/],
  ['unknown type', { type: 'hello' }, /`frame.type`/],
  ['start without sub', { type: 'start', plugin: 'p', action: 'a' }, /`start.sub`/],
  ['start sub 0', { type: 'start', sub: 0, plugin: 'p', action: 'a' }, /`start.sub`/],
  ['start sub float', { type: 'start', sub: 1.5, plugin: 'p', action: 'a' }, /`start.sub`/],
  ['start sub string', { type: 'start', sub: '1', plugin: 'p', action: 'a' }, /`start.sub`/],
  ['start without plugin', { type: 'start', sub: 1, action: 'a' }, /`start.plugin`/],
  ['start empty action', { type: 'start', sub: 1, plugin: 'p', action: '' }, /`start.action`/],
  ['start huge plugin name', { type: 'start', sub: 1, plugin: 'p'.repeat(300), action: 'a' }, /`start.plugin`/],
  ['start negative credit', { type: 'start', sub: 1, plugin: 'p', action: 'a', credit: -1 }, /`start.credit`/],
  ['start options not object', { type: 'start', sub: 1, plugin: 'p', action: 'a', options: 'x' }, /`start.options`/],
  ['start picks a sandbox', { type: 'start', sub: 1, plugin: 'p', action: 'a', options: { sandbox: 'worker' } }, /`start.options.sandbox`/],
  ['start bad durability', { type: 'start', sub: 1, plugin: 'p', action: 'a', options: { durability: 'disk' } }, /`start.options.durability`/],
  ['start bad limit', { type: 'start', sub: 1, plugin: 'p', action: 'a', options: { limits: { wallMs: -1 } } }, /`start.options.limits.wallMs`/],
  ['start unknown limit', { type: 'start', sub: 1, plugin: 'p', action: 'a', options: { limits: { foo: 1 } } }, /`start.options.limits.foo`/],
  ['start bad id', { type: 'start', sub: 1, plugin: 'p', action: 'a', options: { id: 'a/b' } }, /`start.options.id`/],
  ['start bad window', { type: 'start', sub: 1, plugin: 'p', action: 'a', options: { window: { chunks: 0 } } }, /`start.options.window.chunks`/],
  ['subscribe without streamId', { type: 'subscribe', sub: 1 }, /`subscribe.streamId`/],
  ['subscribe streamId with slash', { type: 'subscribe', sub: 1, streamId: '../x' }, /`subscribe.streamId`/],
  ['subscribe negative fromSeq', { type: 'subscribe', sub: 1, streamId: 'x', fromSeq: -1 }, /`subscribe.fromSeq`/],
  ['subscribe epoch number', { type: 'subscribe', sub: 1, streamId: 'x', epoch: 3 }, /`subscribe.epoch`/],
  ['credit zero', { type: 'credit', sub: 1, n: 0 }, /`credit.n`/],
  ['credit huge', { type: 'credit', sub: 1, n: 2 ** 40 }, /`credit.n`/],
  ['credit NaN-ish', { type: 'credit', sub: 1, n: '5' }, /`credit.n`/],
  ['cancel without sub', { type: 'cancel' }, /`cancel.sub`/],
  ['unsubscribe bad sub', { type: 'unsubscribe', sub: -2 }, /`unsubscribe.sub`/],
  ['ping id too long', { type: 'ping', id: 'x'.repeat(100) }, /`ping.id`/],
];

test('parseClientFrame accepts the documented frames', () => {
  for (const [name, input, expected] of CLIENT_ACCEPT) {
    assert.deepEqual(parseClientFrame(input), expected, name);
  }
});

test('parseClientFrame rejects malformed frames with ERR_FRAME_INVALID naming the field', () => {
  for (const [name, input, field] of CLIENT_REJECT) {
    assert.throws(
      () => parseClientFrame(input),
      (err: unknown) => isSluiceError(err, 'ERR_FRAME_INVALID') && field.test(err.message),
      name,
    );
  }
});

test('decodeClientFrame maps bad JSON to ERR_FRAME_INVALID', () => {
  for (const text of ['', '{', 'nul', '{"type":"ping"', "{'type':'ping'}"]) {
    assert.throws(() => decodeClientFrame(text), (err: unknown) => isSluiceError(err, 'ERR_FRAME_INVALID'), text);
  }
  assert.deepEqual(decodeClientFrame('{"type":"ping"}'), { type: 'ping' });
});

const SERVER_ACCEPT: unknown[] = [
  { type: 'started', sub: 1, streamId: 's', epoch: 'e', durability: 'none', seq: 0 },
  { type: 'chunks', sub: 1, seq: 5, data: [1, 'two', { three: 3 }] },
  { type: 'progress', sub: 1, fraction: 0.5, message: 'half' },
  { type: 'end', sub: 1, status: 'done' },
  { type: 'end', sub: 1, status: 'failed', error: { code: 'ERR_PLUGIN_THREW', message: 'boom' } },
  { type: 'error', code: 'ERR_FRAME_INVALID', message: 'bad' },
  { type: 'error', sub: 2, fatal: true, code: 'ERR_FORBIDDEN', message: 'no' },
  { type: 'gap', sub: 1, fromSeq: 0, toSeq: 10 },
  { type: 'reset', sub: 1, epoch: 'e2' },
  { type: 'pong' },
];

const SERVER_REJECT: unknown[] = [
  'x',
  { type: 'chunks', sub: 1, seq: 0, data: [] },
  { type: 'chunks', sub: 1, seq: -1, data: [1] },
  { type: 'started', sub: 1, streamId: 's', epoch: 'e', durability: 'forever', seq: 0 },
  { type: 'end', sub: 1, status: 'weird' },
  { type: 'error', code: 'ERR_NOT_A_CODE', message: 'x' },
  { type: 'gap', sub: 1, fromSeq: 5, toSeq: 5 },
  { type: 'progress', sub: 1, fraction: 2 },
  { type: 'welcome' },
];

test('parseServerFrame accepts v1 server frames and rejects others with ERR_PROTOCOL', () => {
  for (const f of SERVER_ACCEPT) assert.deepEqual(parseServerFrame(f), f);
  for (const f of SERVER_REJECT) assert.throws(() => parseServerFrame(f), (err: unknown) => isSluiceError(err, 'ERR_PROTOCOL'), JSON.stringify(f));
});

test('chunk data encoding round-trips bytes, tag-shaped objects and __proto__ keys', () => {
  const proto = JSON.parse('{"__proto__": {"polluted": true}, "ok": 1}') as Record<string, unknown>;
  const cases: unknown[] = [
    null,
    1,
    'text',
    [1, [2, [3]]],
    { a: { b: 'c' } },
    new Uint8Array([]),
    new Uint8Array([0, 1, 2, 253, 254, 255]),
    { nested: [new Uint8Array([9, 8, 7, 6, 5])] },
    { $bytes: 'AAAA' },
    { $literal: { $bytes: 'AAAA' } },
    { $bytes: new Uint8Array([1]) },
    proto,
  ];
  for (const value of cases) {
    const wire = JSON.parse(JSON.stringify(encodeChunkData(value))) as unknown;
    const back = decodeChunkData(wire);
    assert.deepEqual(back, value, JSON.stringify(wire));
  }
  const decoded = decodeChunkData(JSON.parse(JSON.stringify(encodeChunkData(proto)))) as Record<string, unknown>;
  assert.equal(({} as Record<string, unknown>).polluted, undefined);
  assert.equal(Object.getPrototypeOf(decoded), Object.prototype);
  // Plain JSON is passed through without a copy.
  const plain = { a: [1, 2, { b: 'c' }] };
  assert.equal(encodeChunkData(plain), plain);
  for (let n = 0; n < 40; n++) {
    const bytes = Uint8Array.from({ length: n }, (_, i) => (i * 37 + n) & 255);
    assert.equal(bytesToBase64(bytes), Buffer.from(bytes).toString('base64'));
    assert.deepEqual(base64ToBytes(Buffer.from(bytes).toString('base64')), bytes);
  }
  assert.throws(() => base64ToBytes('abc'), (err: unknown) => isSluiceError(err, 'ERR_PROTOCOL'));
  assert.throws(() => base64ToBytes('ab!='), (err: unknown) => isSluiceError(err, 'ERR_PROTOCOL'));
});

test('close codes are distinct', () => {
  const codes = Object.values(CLOSE_CODES);
  assert.equal(new Set(codes).size, codes.length);
});

// ---- uWS native guard ----------------------------------------------------------------

const requireHere = createRequire(import.meta.url);
const uwsDir = requireHere.resolve('uWebSockets.js').replace(/src[\\/]uws\.js$/, '');

test('the installed uWS loads natively here', () => {
  assert.equal(whyNotNative(requireUws()), undefined);
  assert.equal(typeof loadNativeUws().App, 'function');
});

test('the package JavaScript fallback is detected and refused with ERR_UWS_NATIVE_MISSING', () => {
  // Exactly what the package returns when its binary fails to load.
  const fallback = requireHere(`${uwsDir}dist/index.js`) as unknown;
  assert.match(whyNotNative(fallback) ?? '', /fallback/);
  assert.throws(
    () => loadNativeUws(() => fallback),
    (err: unknown) => isSluiceError(err, 'ERR_UWS_NATIVE_MISSING') && /refuses to serve on the slow JavaScript fallback/.test(err.message) && /uws_linux|uws_\w+_\w+_\d+\.node/.test(err.message),
  );
});

test('other non-native loader results are refused too', () => {
  const fakes: [string, () => unknown][] = [
    ['null', () => null],
    ['throws', () => {
      throw new Error('libc mismatch');
    }],
    ['JS App without interop marker', () => ({ App: () => ({}), SSLApp: () => ({}), getParts: () => undefined, DEDICATED_COMPRESSOR_4KB: 1 })],
    ['native App but missing exports', () => ({ App: Math.max })],
  ];
  for (const [name, loader] of fakes) {
    assert.throws(() => loadNativeUws(loader), (err: unknown) => isSluiceError(err, 'ERR_UWS_NATIVE_MISSING'), name);
  }
});

test('startServer refuses to start on the fallback', async () => {
  const fallback = requireHere(`${uwsDir}dist/index.js`) as unknown;
  await assert.rejects(startServer(new FakeHost(), { port: 0, secret: SECRET, uwsLoader: () => fallback }), (err: unknown) => isSluiceError(err, 'ERR_UWS_NATIVE_MISSING'));
});
