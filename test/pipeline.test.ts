/**
 * Pipeline descriptions: the parser's accept/reject tables, the expression language,
 * and buildPipeline end to end over fake plugin streams.
 */
import assert from 'node:assert/strict';
import { setImmediate as tick } from 'node:timers/promises';
import { describe, test } from 'node:test';
import { buildPipeline, toArray, type PipelineDeps } from '../host/operators/index.js';
import { compileCondition, compileProjection } from '../host/operators/expr.js';
import { isSluiceError } from '../protocol/errors.js';
import { parsePipeline, type Condition, type JsonValue } from '../protocol/pipeline.js';

const src = { plugin: 'logs', action: 'tail' };

describe('parsePipeline accepts', () => {
  const accepted: [string, unknown][] = [
    ['a bare source', { version: 1, source: src }],
    ['a source with params and no steps', { version: 1, source: { ...src, params: { app: 'a', n: [1, 2, { x: null }] } }, steps: [] }],
    [
      'every step kind',
      {
        version: 1,
        source: src,
        steps: [
          { op: 'filter', where: { field: 'level', eq: 'error' } },
          { op: 'map', pick: ['a.b', ['c.d', 0]] },
          { op: 'map', get: 'a' },
          { op: 'batch', count: 10 },
          { op: 'batch', count: 10, ms: 100 },
          { op: 'window', count: 3, slide: 1 },
          { op: 'take', count: 0 },
          { op: 'skip', count: 5 },
          { op: 'throttle', ms: 10 },
          { op: 'plugin', plugin: 'enrich', action: 'run', params: { k: 1 } },
        ],
      },
    ],
    [
      'every comparison and logic',
      {
        version: 1,
        source: src,
        steps: [
          {
            op: 'filter',
            where: {
              and: [
                { or: [{ field: 'a', ne: 1 }, { field: 'b', lt: 2 }, { field: 'b', lte: 'x' }] },
                { not: { field: 'c', gt: 3 } },
                { field: 'd', gte: 4 },
                { field: 'e', in: [1, 'two', null, { x: [1] }] },
                { field: [], exists: true },
              ],
            },
          },
        ],
      },
    ],
    ['nested combinators and sub-pipelines', { version: 1, source: { merge: [src, { concat: [src, src] }, { zip: [src, { source: src, steps: [{ op: 'take', count: 1 }] }] }] } }],
  ];
  for (const [name, input] of accepted) {
    test(name, () => {
      const p = parsePipeline(input);
      assert.equal(p.version, 1);
      // A parsed pipeline is JSON and parses to itself.
      assert.deepEqual(parsePipeline(JSON.parse(JSON.stringify(p))), p);
    });
  }

  test('the result is a copy holding only what was validated', () => {
    const params = { deep: { list: [1, 2] } };
    const p = parsePipeline({ version: 1, source: { ...src, params } });
    params.deep.list.push(3);
    assert.deepEqual((p.source as { params: JsonValue }).params, { deep: { list: [1, 2] } });
    assert.deepEqual(p.steps, []);
  });
});

describe('parsePipeline rejects with ERR_PIPELINE_INVALID naming the field', () => {
  const deep = (n: number): unknown => (n === 0 ? { field: 'a', eq: 1 } : { not: deep(n - 1) });
  const rejected: [string, unknown, string][] = [
    ['not an object', 'pipeline', 'pipeline'],
    ['an array', [], 'pipeline'],
    ['a wrong version', { version: 2, source: src }, 'version'],
    ['no version', { source: src }, 'version'],
    ['an unknown top-level key', { version: 1, source: src, extra: 1 }, 'extra'],
    ['no source', { version: 1 }, 'source'],
    ['a source of no known kind', { version: 1, source: { kind: 'x' } }, 'source'],
    ['an empty plugin name', { version: 1, source: { plugin: '', action: 'a' } }, 'source.plugin'],
    ['a missing action', { version: 1, source: { plugin: 'p' } }, 'source.action'],
    ['a function in params', { version: 1, source: { ...src, params: { f: () => 1 } } }, 'source.params.f'],
    ['NaN in params', { version: 1, source: { ...src, params: [1, Number.NaN] } }, 'source.params[1]'],
    ['a class instance in params', { version: 1, source: { ...src, params: { d: new Date(0) } } }, 'source.params.d'],
    ['an unknown source key', { version: 1, source: { ...src, sandbox: 'worker' } }, 'source.sandbox'],
    ['an empty merge', { version: 1, source: { merge: [] } }, 'source.merge'],
    ['a bad source inside merge', { version: 1, source: { merge: [src, { plugin: 'p', action: 7 }] } }, 'source.merge[1].action'],
    ['merge with a second key', { version: 1, source: { merge: [src], zip: [src] } }, 'source.zip'],
    ['steps not an array', { version: 1, source: src, steps: {} }, 'steps'],
    ['an unknown op', { version: 1, source: src, steps: [{ op: 'eval', code: '1' }] }, 'steps[0].op'],
    ['a step that is not an object', { version: 1, source: src, steps: [null] }, 'steps[0]'],
    ['a batch count of 0', { version: 1, source: src, steps: [{ op: 'take', count: 1 }, { op: 'batch', count: 0 }] }, 'steps[1].count'],
    ['a fractional take', { version: 1, source: src, steps: [{ op: 'take', count: 1.5 }] }, 'steps[0].count'],
    ['a negative skip', { version: 1, source: src, steps: [{ op: 'skip', count: -1 }] }, 'steps[0].count'],
    ['a batch ms of 0', { version: 1, source: src, steps: [{ op: 'batch', count: 1, ms: 0 }] }, 'steps[0].ms'],
    ['a throttle without ms', { version: 1, source: src, steps: [{ op: 'throttle' }] }, 'steps[0].ms'],
    ['a window slide of 0', { version: 1, source: src, steps: [{ op: 'window', count: 2, slide: 0 }] }, 'steps[0].slide'],
    ['an unknown step key', { version: 1, source: src, steps: [{ op: 'take', count: 1, limit: 2 }] }, 'steps[0].limit'],
    ['map with both pick and get', { version: 1, source: src, steps: [{ op: 'map', pick: ['a'], get: 'a' }] }, 'steps[0]'],
    ['map with neither', { version: 1, source: src, steps: [{ op: 'map' }] }, 'steps[0]'],
    ['an empty pick', { version: 1, source: src, steps: [{ op: 'map', pick: [] }] }, 'steps[0].pick'],
    ['a root path in pick', { version: 1, source: src, steps: [{ op: 'map', pick: [[]] }] }, 'steps[0].pick[0]'],
    ['a __proto__ path', { version: 1, source: src, steps: [{ op: 'map', get: 'a.__proto__' }] }, 'steps[0].get'],
    ['a constructor segment', { version: 1, source: src, steps: [{ op: 'map', pick: [['a', 'constructor']] }] }, 'steps[0].pick[0][1]'],
    ['an empty path segment', { version: 1, source: src, steps: [{ op: 'map', get: 'a..b' }] }, 'steps[0].get'],
    ['a negative index segment', { version: 1, source: src, steps: [{ op: 'map', get: ['a', -1] }] }, 'steps[0].get[1]'],
    ['a filter without where', { version: 1, source: src, steps: [{ op: 'filter' }] }, 'steps[0].where'],
    ['a comparison with two ops', { version: 1, source: src, steps: [{ op: 'filter', where: { field: 'a', eq: 1, ne: 2 } }] }, 'steps[0].where'],
    ['a comparison with no op', { version: 1, source: src, steps: [{ op: 'filter', where: { field: 'a' } }] }, 'steps[0].where'],
    ['an unknown comparison', { version: 1, source: src, steps: [{ op: 'filter', where: { field: 'a', regex: '.*' } }] }, 'steps[0].where.regex'],
    ['lt against an object', { version: 1, source: src, steps: [{ op: 'filter', where: { field: 'a', lt: {} } }] }, 'steps[0].where.lt'],
    ['in with a non-array', { version: 1, source: src, steps: [{ op: 'filter', where: { field: 'a', in: 'abc' } }] }, 'steps[0].where.in'],
    ['exists with a non-boolean', { version: 1, source: src, steps: [{ op: 'filter', where: { field: 'a', exists: 1 } }] }, 'steps[0].where.exists'],
    ['an empty and', { version: 1, source: src, steps: [{ op: 'filter', where: { and: [] } }] }, 'steps[0].where.and'],
    ['a bad field deep inside logic', { version: 1, source: src, steps: [{ op: 'filter', where: { or: [{ field: 'a', eq: 1 }, { and: [{ field: 5, eq: 1 }] }] } }] }, 'steps[0].where.or[1].and[0].field'],
    ['and with an extra key', { version: 1, source: src, steps: [{ op: 'filter', where: { and: [{ field: 'a', eq: 1 }], or: [] } }] }, 'steps[0].where.or'],
    ['a condition nested too deep', { version: 1, source: src, steps: [{ op: 'filter', where: deep(20) }] }, `steps[0].where${'.not'.repeat(16)}`],
    ['too many steps', { version: 1, source: src, steps: Array.from({ length: 65 }, () => ({ op: 'take', count: 1 })) }, 'steps'],
    ['sources nested too deep', { version: 1, source: { merge: [{ merge: [{ merge: [{ merge: [{ merge: [{ merge: [{ merge: [{ merge: [src] }] }] }] }] }] }] }] } }, 'source.merge[0].merge[0].merge[0].merge[0].merge[0].merge[0].merge[0].merge[0]'],
    ['a plugin step without a plugin', { version: 1, source: src, steps: [{ op: 'plugin', action: 'a' }] }, 'steps[0].plugin'],
    ['a bad step inside a sub-pipeline', { version: 1, source: { source: src, steps: [{ op: 'take' }] } }, 'source.steps[0].count'],
  ];
  for (const [name, input, field] of rejected) {
    test(name, () => {
      assert.throws(
        () => parsePipeline(input),
        (err: unknown) => {
          assert.ok(isSluiceError(err, 'ERR_PIPELINE_INVALID'), `expected ERR_PIPELINE_INVALID, got ${String(err)}`);
          assert.equal(err.details?.field, field);
          assert.ok(err.message.includes(`\`${field}\``), err.message);
          return true;
        },
      );
    });
  }
});

describe('expression language', () => {
  const item = { level: 'error', n: 5, s: 'beta', nested: { list: [{ id: 'x' }, { id: 'y' }], nil: null }, tags: ['a', 'b'] };
  const table: [Condition, boolean][] = [
    [{ field: 'level', eq: 'error' }, true],
    [{ field: 'level', ne: 'error' }, false],
    [{ field: 'missing', ne: 'error' }, true],
    [{ field: 'n', lt: 6 }, true],
    [{ field: 'n', lte: 5 }, true],
    [{ field: 'n', gt: 5 }, false],
    [{ field: 'n', gte: 5 }, true],
    [{ field: 's', gt: 'alpha' }, true],
    [{ field: 'n', lt: 'z' }, false],
    [{ field: 'nested.list.1.id', eq: 'y' }, true],
    [{ field: ['nested', 'list', 0, 'id'], in: ['x', 'z'] }, true],
    [{ field: 'tags', eq: ['a', 'b'] }, true],
    [{ field: 'nested.nil', exists: true }, true],
    [{ field: 'nested.none', exists: false }, true],
    [{ field: 'nested.list.5', exists: true }, false],
    [{ field: 'level.length', exists: true }, false],
    [{ field: 'toString', exists: true }, false],
    [{ and: [{ field: 'n', gt: 1 }, { not: { field: 'level', eq: 'info' } }] }, true],
    [{ or: [{ field: 'n', gt: 10 }, { field: 'nested', eq: { list: [{ id: 'x' }, { id: 'y' }], nil: null } }] }, true],
  ];
  table.forEach(([cond, want], i) => {
    test(`condition #${i}: ${JSON.stringify(cond)} is ${want}`, () => {
      assert.equal(compileCondition(cond)(item), want);
    });
  });

  test('the root path addresses the item itself', () => {
    assert.equal(compileCondition({ field: [], gt: 3 })(4), true);
    assert.equal(compileCondition({ field: [], gt: 3 })('4'), false);
  });

  test('projections: get and pick', () => {
    assert.equal(compileProjection({ get: 'nested.list.1.id' })(item), 'y');
    assert.equal(compileProjection({ get: 'nope' })(item), undefined);
    assert.deepEqual(compileProjection({ pick: ['level', 'nested.list.0.id', 'absent'] })(item), { level: 'error', nested: { list: { '0': { id: 'x' } } } });
  });
});

/** A fake plugin stream: counts how far it was read and whether it was returned. */
class FakeStream implements AsyncIterableIterator<{ seq: number; data: unknown }> {
  seq = 0;
  returned = false;
  constructor(private readonly produce: (i: number) => unknown | typeof END) {}
  [Symbol.asyncIterator](): this {
    return this;
  }
  async next(): Promise<IteratorResult<{ seq: number; data: unknown }>> {
    if (this.returned) return { done: true, value: undefined };
    const data = this.produce(this.seq);
    if (data === END) return { done: true, value: undefined };
    return { done: false, value: { seq: this.seq++, data } };
  }
  async return(): Promise<IteratorResult<{ seq: number; data: unknown }>> {
    this.returned = true;
    return { done: true, value: undefined };
  }
}
const END = Symbol('end');

function fakeDeps(): { deps: PipelineDeps; opened: { plugin: string; action: string; params: unknown; stream: FakeStream; input?: AsyncIterable<unknown> }[] } {
  const opened: { plugin: string; action: string; params: unknown; stream: FakeStream; input?: AsyncIterable<unknown> }[] = [];
  const deps: PipelineDeps = {
    stream(plugin, action, params, input) {
      let stream: FakeStream;
      if (plugin === 'logs') {
        const app = (params as { app: string }).app;
        const count = (params as { count?: number }).count ?? Infinity;
        stream = new FakeStream((i) => (i >= count ? END : { app, i, level: i % 3 === 0 ? 'error' : 'info', msg: `${app}-${i}` }));
      } else if (plugin === 'upper') {
        // A stream-consuming plugin: reads its input and transforms it.
        assert.ok(input !== undefined, 'a plugin step gets the upstream as input');
        const it = input[Symbol.asyncIterator]();
        const s = new FakeStream(() => END);
        s.next = async () => {
          if (s.returned) return { done: true, value: undefined };
          const r = await it.next();
          if (r.done === true) return { done: true, value: undefined };
          return { done: false, value: { seq: s.seq++, data: String((r.value as { msg: string }).msg).toUpperCase() } };
        };
        s.return = async () => {
          s.returned = true;
          await it.return?.();
          return { done: true, value: undefined };
        };
        stream = s;
      } else throw new Error(`no plugin ${plugin}`);
      opened.push({ plugin, action, params, stream, ...(input === undefined ? {} : { input }) });
      return stream;
    },
  };
  return { deps, opened };
}

describe('buildPipeline', () => {
  test('merge two plugin sources, filter, pick, batch: end to end', async () => {
    const { deps, opened } = fakeDeps();
    const p = parsePipeline({
      version: 1,
      source: {
        merge: [
          { plugin: 'logs', action: 'tail', params: { app: 'a', count: 6 } },
          { plugin: 'logs', action: 'tail', params: { app: 'b', count: 6 } },
        ],
      },
      steps: [
        { op: 'filter', where: { field: 'level', eq: 'error' } },
        { op: 'map', pick: ['app', 'i'] },
        { op: 'batch', count: 3 },
      ],
    });
    const out = buildPipeline(p, deps);
    assert.equal(opened.length, 0, 'nothing starts before the pipeline is read');
    const batches = (await toArray(out)) as { app: string; i: number }[][];
    assert.equal(opened.length, 2);
    assert.deepEqual(
      batches.map((b) => b.length),
      [3, 1],
    );
    const flat = batches.flat();
    assert.deepEqual(
      flat.filter((x) => x.app === 'a').map((x) => x.i),
      [0, 3],
    );
    assert.deepEqual(
      flat.filter((x) => x.app === 'b').map((x) => x.i),
      [0, 3],
    );
  });

  test('a plugin step consumes the upstream; take cancels every plugin', async () => {
    const { deps, opened } = fakeDeps();
    const p = parsePipeline({
      version: 1,
      source: { plugin: 'logs', action: 'tail', params: { app: 'x' } },
      steps: [
        { op: 'skip', count: 1 },
        { op: 'plugin', plugin: 'upper', action: 'run' },
        { op: 'take', count: 2 },
      ],
    });
    assert.deepEqual(await toArray(buildPipeline(p, deps)), ['X-1', 'X-2']);
    assert.deepEqual(
      opened.map((o) => [o.plugin, o.stream.returned]),
      [
        ['upper', true],
        ['logs', true],
      ],
    );
    assert.equal(opened[1]!.stream.seq, 3, 'the infinite source was read no further than needed');
  });

  test('zip, concat and a sub-pipeline', async () => {
    const { deps } = fakeDeps();
    const logs = (app: string, count: number): unknown => ({ plugin: 'logs', action: 'tail', params: { app, count } });
    const p = parsePipeline({
      version: 1,
      source: {
        zip: [
          { concat: [logs('a', 1), logs('b', 1)] },
          { source: logs('c', 10), steps: [{ op: 'map', get: 'msg' }] },
        ],
      },
      steps: [{ op: 'map', get: [0, 'msg'] }],
    });
    assert.deepEqual(await toArray(buildPipeline(p, deps)), ['a-0', 'b-0']);
  });

  test('aborting the signal cancels every plugin stream', async () => {
    const { deps, opened } = fakeDeps();
    const p = parsePipeline({
      version: 1,
      source: { merge: [{ plugin: 'logs', action: 'tail', params: { app: 'a' } }, { plugin: 'logs', action: 'tail', params: { app: 'b' } }] },
      steps: [{ op: 'throttle', ms: 5 }],
    });
    const ac = new AbortController();
    let seen = 0;
    await assert.rejects(
      (async () => {
        for await (const _ of buildPipeline(p, deps, { signal: ac.signal })) {
          if (++seen === 3) ac.abort(new Error('client left'));
          if (seen > 1000) break; // safety bound
        }
      })(),
      /client left/,
    );
    await tick();
    assert.equal(seen, 3);
    assert.ok(
      opened.every((o) => o.stream.returned),
      'every plugin stream returned',
    );
  });

  test('a plugin failure reaches the consumer and the other plugin is returned', async () => {
    const { deps, opened } = fakeDeps();
    const failing: PipelineDeps = {
      stream(plugin, action, params, input) {
        if (plugin === 'broken') {
          return {
            [Symbol.asyncIterator]: () => ({
              next: () => Promise.reject(new Error('plugin crashed')),
            }),
          };
        }
        return deps.stream(plugin, action, params, input);
      },
    };
    const p = parsePipeline({ version: 1, source: { merge: [{ plugin: 'logs', action: 'tail', params: { app: 'a' } }, { plugin: 'broken', action: 'x' }] } });
    await assert.rejects(toArray(buildPipeline(p, failing)), /plugin crashed/);
    assert.equal(opened[0]!.stream.returned, true);
  });
});
