/**
 * maxBytes: a stream delivers every chunk whose running total stays within the limit,
 * in order, then ends with ERR_LIMIT_BYTES, and its plugin is stopped at the chunk that
 * would pass it. Run in each sandbox with test/fixtures/plugins/limit-bytes.ts.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';
import { copyChunk } from '../protocol/chunk.js';
import { parseStartSpec } from '../protocol/messages.js';
import type { SluiceStream } from '../host/types.js';
import type { SandboxKind } from '../sandbox/sdk.js';
import { fixture, openHost as open, outcome } from './helpers.js';

const PLUGIN = fixture('plugins/limit-bytes.ts');
const SANDBOXES: SandboxKind[] = ['worker', 'isolate'];
const MAX_BYTES = 20_000;
/** Far more than fits: a plugin that is not stopped makes hundreds of chunks past the limit. */
const COUNT = 1000;
/** A broken limit can leave a stream waiting forever: fail instead. */
const TIMEOUT = { timeout: 60_000 };

type Kind = 'bytes' | 'json' | 'mixed';
const KINDS: Kind[] = ['bytes', 'json', 'mixed'];

/** Chunk `i` as the fixture yields it (its `chunkAt`). */
function chunkAt(kind: Kind, i: number): Uint8Array | { i: number; text: string } {
  if (kind === 'bytes' || (kind === 'mixed' && i % 2 === 0)) return new Uint8Array(kind === 'bytes' ? 1000 : 500 + (i % 7) * 100).fill(i & 0xff);
  return { i, text: 'x'.repeat(900 + (i % 5) * 50) };
}

/** A chunk's size as maxBytes counts it: the estimate in protocol/chunk.ts. */
const sizeOf = (kind: Kind, i: number): number => copyChunk(chunkAt(kind, i)).bytes;

/** How many chunks from seq 0 fit within `max` bytes, and their total. */
function fitting(kind: Kind, max: number): { count: number; bytes: number } {
  let count = 0;
  let bytes = 0;
  while (bytes + sizeOf(kind, count) <= max) bytes += sizeOf(kind, count++);
  return { count, bytes };
}

/** The `made N from SEQ` lines the plugin logs from its `finally`: how many chunks each run made, from which seq. */
function runs(stream: SluiceStream): { made: number; from: number }[] {
  const out: { made: number; from: number }[] = [];
  stream.on('log', (line) => {
    const m = /^made (\d+) from (\d+)$/.exec(line.message);
    if (m !== null) out.push({ made: Number(m[1]), from: Number(m[2]) });
  });
  return out;
}

test('a sandbox gets the byte budget in its start spec, checked like the rest of it', () => {
  const spec = { streamId: 's', action: 'emit', params: {}, window: { chunks: 4, bytes: 100 }, limits: { maxChunkBytes: 0, memoryMb: 64, cpuMs: 0 } };
  assert.equal(parseStartSpec(spec).byteBudget, undefined);
  assert.deepEqual(parseStartSpec({ ...spec, byteBudget: { fromSeq: 3, left: 0 } }).byteBudget, { fromSeq: 3, left: 0 });
  for (const byteBudget of [null, 5, { fromSeq: 0 }, { fromSeq: -1, left: 10 }, { fromSeq: 0, left: 1.5 }, { fromSeq: 0, left: '10' }]) {
    assert.throws(() => parseStartSpec({ ...spec, byteBudget }), { code: 'ERR_PROTOCOL' }, JSON.stringify(byteBudget));
  }
});

test('the sizes the tests rely on', () => {
  // 20 byte chunks of 1000 fill the limit exactly: a chunk that reaches it is within it.
  assert.deepEqual(fitting('bytes', MAX_BYTES), { count: 20, bytes: 20_000 });
  for (const kind of KINDS) assert.ok(fitting(kind, MAX_BYTES).count >= 10, kind);
});

for (const sandbox of SANDBOXES) {
  describe(`maxBytes (${sandbox})`, () => {
    const S = { sandbox } as const;
    const openHost = (t: TestContext) => open(t, { isolates: sandbox === 'isolate' ? { processes: 1 } : false });

    for (const kind of KINDS) {
      test(`${kind} chunks: every chunk within maxBytes arrives, in order, then ERR_LIMIT_BYTES; the plugin stops`, TIMEOUT, async (t) => {
        const host = await openHost(t);
        const stream = host.stream(PLUGIN, 'emit', { count: COUNT, kind }, { ...S, limits: { maxBytes: MAX_BYTES } });
        const made = runs(stream);
        const { chunks, error } = await outcome(stream);
        const result = await stream.result;
        const fit = fitting(kind, MAX_BYTES);
        assert.equal(error?.code, 'ERR_LIMIT_BYTES', error?.message);
        assert.deepEqual((error as Error & { details?: unknown }).details, { limit: 'maxBytes', max: MAX_BYTES });
        assert.equal(chunks.length, fit.count, `${chunks.length} chunks arrived, ${fit.count} fit in maxBytes`);
        assert.deepEqual(
          chunks.map((c) => c.seq),
          [...Array(fit.count).keys()],
        );
        for (const c of chunks) assert.deepEqual(c.data, chunkAt(kind, c.seq), `chunk ${c.seq}`);
        assert.equal(result.status, 'failed');
        assert.equal(result.chunks, fit.count);
        assert.equal(result.bytes, fit.bytes);
        // It made the chunk that would pass the limit (that is how its size is known), no
        // more, and its finally ran: it was stopped, not left producing until a hard stop.
        assert.deepEqual(made, [{ made: fit.count + 1, from: 0 }]);
      });
    }

    test('a stream that ends exactly at maxBytes is done', TIMEOUT, async (t) => {
      const host = await openHost(t);
      const stream = host.stream(PLUGIN, 'emit', { count: 20, kind: 'bytes' }, { ...S, limits: { maxBytes: MAX_BYTES } });
      const { chunks, error } = await outcome(stream);
      assert.equal(error, undefined);
      assert.equal(chunks.length, 20);
      assert.equal((await stream.result).status, 'done');
    });

    test('with maxChunks too, the limit reached first ends the stream', TIMEOUT, async (t) => {
      const host = await openHost(t);
      const first = await outcome(host.stream(PLUGIN, 'emit', { count: COUNT, kind: 'bytes' }, { ...S, limits: { maxBytes: MAX_BYTES, maxChunks: 10 } }));
      assert.equal(first.error?.code, 'ERR_LIMIT_CHUNKS', first.error?.message);
      assert.equal(first.chunks.length, 10);
      const second = await outcome(host.stream(PLUGIN, 'emit', { count: COUNT, kind: 'bytes' }, { ...S, limits: { maxBytes: MAX_BYTES, maxChunks: 30 } }));
      assert.equal(second.error?.code, 'ERR_LIMIT_BYTES', second.error?.message);
      assert.equal(second.chunks.length, 20);
    });

    test('a first chunk larger than maxBytes: no chunk, ERR_LIMIT_BYTES', TIMEOUT, async (t) => {
      const host = await openHost(t);
      const stream = host.stream(PLUGIN, 'emit', { count: COUNT, kind: 'bytes' }, { ...S, limits: { maxBytes: 999 } });
      const made = runs(stream);
      const { chunks, error } = await outcome(stream);
      await stream.result;
      assert.equal(error?.code, 'ERR_LIMIT_BYTES', error?.message);
      assert.equal(chunks.length, 0);
      assert.deepEqual(made, [{ made: 1, from: 0 }]);
    });
  });
}

test('a stream retried from its checkpoint counts maxBytes across both runs', TIMEOUT, async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-limit-bytes-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  const host = await open(t, { dataDir: join(dir, 'data'), isolates: { processes: 1 }, retries: { backoffMs: 10 } });
  // Chunks 0..11 arrive a batch each, the checkpoint at 10 with them; the crash at 12
  // retries the plugin from that checkpoint, and it makes 10 and 11 again in one batch
  // with the chunks after them: the repeats are dropped, and do not count twice.
  // The json chunks differ in size, and the chunk that passes the limit passes it by one
  // byte: a count off by a byte either way cuts in the wrong place.
  const maxBytes = fitting('json', MAX_BYTES).bytes + sizeOf('json', fitting('json', MAX_BYTES).count) - 1;
  const stream = host.stream(PLUGIN, 'emit', { count: COUNT, kind: 'json', pause: true, checkpointEvery: 5, crashAt: 12 }, { sandbox: 'isolate', durability: 'checkpoint', limits: { maxBytes } });
  const made = runs(stream);
  const { chunks, error } = await outcome(stream);
  const result = await stream.result;
  const fit = fitting('json', maxBytes);
  assert.equal(error?.code, 'ERR_LIMIT_BYTES', error?.message);
  assert.deepEqual(
    chunks.map((c) => c.seq),
    [...Array(fit.count).keys()],
  );
  for (const c of chunks) assert.deepEqual(c.data, chunkAt('json', c.seq), `chunk ${c.seq}`);
  assert.equal(result.bytes, fit.bytes);
  // The crashed run never reached its finally; the retry made its repeats and then
  // chunks up to the one that passes the limit, no further.
  assert.equal(made.length, 1);
  assert.ok(made[0]!.from > 0 && made[0]!.from < 12, `retried from ${made[0]!.from}`);
  assert.equal(made[0]!.from + made[0]!.made, fit.count + 1);
});
