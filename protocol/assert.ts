/**
 * Small `asserts` helpers that trust-boundary parsers are built from. Each throws a
 * SluiceError with the caller's code and a message naming the field and the bad value.
 */
import { SluiceError, type ErrorCode } from './errors.js';

export type Obj = Record<string, unknown>;

/** `'foo'` / `3` / `null` / `object`: short enough for an error message, never runs user code. */
export function show(value: unknown): string {
  switch (typeof value) {
    case 'string':
      return JSON.stringify(value.length > 60 ? `${value.slice(0, 60)}…` : value);
    case 'number':
    case 'boolean':
    case 'bigint':
    case 'undefined':
      return `${String(value)} (${typeof value})`;
    case 'symbol':
      return 'a symbol';
    case 'function':
      return 'a function';
    default:
      return value === null ? 'null' : Array.isArray(value) ? 'an array' : 'an object';
  }
}

export function fail(code: ErrorCode, field: string, expected: string, value: unknown): never {
  throw new SluiceError(code, `Expected \`${field}\` to be ${expected}, got ${show(value)}`, { details: { field } });
}

export function isObject(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

export function assertObject(value: unknown, field: string, code: ErrorCode): asserts value is Obj {
  if (!isObject(value)) fail(code, field, 'an object', value);
}

export function assertString(value: unknown, field: string, code: ErrorCode, maxLength = 1024): asserts value is string {
  if (typeof value !== 'string' || value.length === 0 || value.length > maxLength) {
    fail(code, field, `a non-empty string of at most ${maxLength} characters`, value);
  }
}

export function assertInteger(value: unknown, field: string, code: ErrorCode, min = 0, max = Number.MAX_SAFE_INTEGER): asserts value is number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    fail(code, field, min === 1 && max === Number.MAX_SAFE_INTEGER ? 'a positive integer' : `an integer in [${min}, ${max}]`, value);
  }
}

export function assertNumber(value: unknown, field: string, code: ErrorCode, min = -Infinity, max = Infinity): asserts value is number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    fail(code, field, `a finite number in [${min}, ${max}]`, value);
  }
}

export function assertOneOf<T extends string>(value: unknown, allowed: readonly T[], field: string, code: ErrorCode): asserts value is T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    fail(code, field, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, value);
  }
}

export function assertNever(value: never, what = 'value'): never {
  throw new SluiceError('ERR_PROTOCOL', `Unexpected ${what}: ${show(value)}`);
}
