/**
 * Evaluation of the pipeline expression language (`protocol/pipeline.ts`): a parsed
 * condition or projection is compiled once into a tree of small closures, then run per
 * item. No `eval`, no `new Function`, no property access beyond own data properties.
 */
import type { Condition, FieldPath, JsonValue } from '../../protocol/pipeline.js';
import { pathSegments } from '../../protocol/pipeline.js';

/** What a path yields when the field is not there. */
const MISSING: unique symbol = Symbol('missing');
const MAX_EQUAL_DEPTH = 64;

type Getter = (item: unknown) => unknown;
type Predicate = (item: unknown) => boolean;

const hasOwn = Object.prototype.hasOwnProperty;

function compilePath(path: FieldPath): Getter {
  const segs = pathSegments(path);
  if (segs.length === 0) return (item) => item;
  return (item) => {
    let v: unknown = item;
    for (let i = 0; i < segs.length; i++) {
      const seg = segs[i]!;
      if (Array.isArray(v)) {
        const idx = typeof seg === 'number' ? seg : /^(0|[1-9][0-9]*)$/.test(seg) ? Number(seg) : -1;
        if (idx < 0 || idx >= v.length) return MISSING;
        v = v[idx];
      } else if (v !== null && typeof v === 'object' && hasOwn.call(v, seg)) {
        v = (v as Record<string, unknown>)[seg];
      } else return MISSING;
    }
    return v;
  };
}

/** Structural equality of JSON-like values (Uint8Arrays by bytes). */
function equal(a: unknown, b: unknown, depth = 0): boolean {
  if (a === b) return true;
  if (depth > MAX_EQUAL_DEPTH || a === null || b === null || typeof a !== 'object' || typeof b !== 'object') return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!equal(a[i], b[i], depth + 1)) return false;
    return true;
  }
  if (Array.isArray(b)) return false;
  if (a instanceof Uint8Array || b instanceof Uint8Array) {
    if (!(a instanceof Uint8Array && b instanceof Uint8Array) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }
  const ka = Object.keys(a);
  if (ka.length !== Object.keys(b).length) return false;
  for (const k of ka) {
    if (!hasOwn.call(b, k) || !equal((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k], depth + 1)) return false;
  }
  return true;
}

/** lt/lte/gt/gte compare two numbers or two strings; anything else is false. */
function comparable(a: unknown, b: number | string): boolean {
  return typeof a === typeof b && (typeof a === 'number' || typeof a === 'string');
}

/**
 * Compile a parsed condition into a predicate over a pipeline item.
 * Semantics: `ne` is `not eq` (true for a missing field); ordering comparisons need
 * both sides numbers or both strings; `in` is `eq` to any listed value; `exists: true`
 * holds for a present field, even `null`.
 *
 * @example
 * const isError = compileCondition({ field: 'level', eq: 'error' });
 */
export function compileCondition(cond: Condition): Predicate {
  if ('and' in cond) {
    const parts = cond.and.map(compileCondition);
    return (item) => {
      for (const p of parts) if (!p(item)) return false;
      return true;
    };
  }
  if ('or' in cond) {
    const parts = cond.or.map(compileCondition);
    return (item) => {
      for (const p of parts) if (p(item)) return true;
      return false;
    };
  }
  if ('not' in cond) {
    const inner = compileCondition(cond.not);
    return (item) => !inner(item);
  }
  const get = compilePath(cond.field);
  if ('eq' in cond) {
    const want: JsonValue = cond.eq;
    return (item) => equal(get(item), want);
  }
  if ('ne' in cond) {
    const want: JsonValue = cond.ne;
    return (item) => !equal(get(item), want);
  }
  if ('lt' in cond) {
    const b = cond.lt;
    return (item) => {
      const a = get(item);
      return comparable(a, b) && (a as number) < (b as number);
    };
  }
  if ('lte' in cond) {
    const b = cond.lte;
    return (item) => {
      const a = get(item);
      return comparable(a, b) && (a as number) <= (b as number);
    };
  }
  if ('gt' in cond) {
    const b = cond.gt;
    return (item) => {
      const a = get(item);
      return comparable(a, b) && (a as number) > (b as number);
    };
  }
  if ('gte' in cond) {
    const b = cond.gte;
    return (item) => {
      const a = get(item);
      return comparable(a, b) && (a as number) >= (b as number);
    };
  }
  if ('in' in cond) {
    const list = cond.in;
    return (item) => {
      const a = get(item);
      for (const v of list) if (equal(a, v)) return true;
      return false;
    };
  }
  const want = cond.exists;
  return (item) => (get(item) !== MISSING) === want;
}

/**
 * `get`: the value at a path (`undefined` when missing). `pick`: a new object holding
 * just the listed fields, nested paths rebuilding their nesting; missing fields are left out.
 */
export function compileProjection(spec: { get: FieldPath } | { pick: readonly FieldPath[] }): (item: unknown) => unknown {
  if ('get' in spec) {
    const get = compilePath(spec.get);
    return (item) => {
      const v = get(item);
      return v === MISSING ? undefined : v;
    };
  }
  const fields = spec.pick.map((p) => ({ get: compilePath(p), segs: pathSegments(p).map(String) }));
  return (item) => {
    const out: Record<string, unknown> = {};
    for (const f of fields) {
      const v = f.get(item);
      if (v === MISSING) continue;
      let node = out;
      const last = f.segs.length - 1;
      for (let i = 0; i < last; i++) {
        const seg = f.segs[i]!;
        let next = hasOwn.call(node, seg) ? node[seg] : undefined;
        if (next === null || typeof next !== 'object') next = node[seg] = {};
        node = next as Record<string, unknown>;
      }
      node[f.segs[last]!] = v;
    }
    return out;
  };
}
