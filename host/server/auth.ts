/**
 * Bearer tokens: JWT HS256 (via `jose`) carrying what a client may do.
 *
 * Claims (all but `exp` optional; `aud` must be `sluice`):
 * - `plugins`: what the client may start. `'*'` = anything, `'name'` = every action of
 *   plugin `name`, `'name:action'` = that action only. Absent = nothing.
 * - `streams`: what the client may read. `'*'` = every stream, `'own'` = streams started
 *   with this token, or explicit stream ids. Absent = `['own']`.
 * - `jti`: the token's id; `'own'` is keyed on it (else on `sub`, else on the token's
 *   signature), so re-issuing a token is a different owner.
 *
 * "Own" is stateless: the server names every stream it starts `<ownerTag>.<uuid>`
 * (`<ownerTag>.<requested id>` when the client picked one), where the owner tag is an
 * HMAC of the owner key under the server secret. It survives restarts and cannot be
 * claimed by another token without the secret.
 *
 * Cancel is allowed on own streams, or on any readable stream when `streams` has `'*'`.
 */
import { createHmac, randomBytes, randomUUID } from 'node:crypto';
import { chmod, mkdir, open, readFile, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { jwtVerify, SignJWT } from 'jose';
import { z } from 'zod';
import { SluiceError } from '../../protocol/errors.js';

export const TOKEN_AUDIENCE = 'sluice';
export const TOKEN_ALGORITHM = 'HS256';
/** The secret file in the data folder, created once with mode 0600. */
export const SECRET_FILE = 'server-secret';
export const MIN_SECRET_LENGTH = 32;
const SECRET_BYTES = 32;
const OWNER_TAG_LENGTH = 16;
const MAX_SCOPE_ENTRIES = 1024;

const scopeList = z.array(z.string().min(1).max(512)).max(MAX_SCOPE_ENTRIES);
const claimsSchema = z.object({
  plugins: scopeList.optional(),
  streams: scopeList.optional(),
  jti: z.string().min(1).max(256).optional(),
  sub: z.string().min(1).max(256).optional(),
  exp: z.number(),
});

/** A verified token, ready for scope checks. */
export interface Principal {
  readonly subject: string | undefined;
  readonly plugins: readonly string[];
  readonly streams: readonly string[];
  /** Seconds since the epoch. */
  readonly expiresAt: number;
  /** Prefix of the ids of streams this token starts (see the module comment). */
  readonly ownerTag: string;
}

export interface TokenSpec {
  plugins?: readonly string[];
  streams?: readonly string[];
  /** `'1h'`, `'30m'`, `'7d'` (jose time span) or seconds. Default `'1h'`. */
  ttl?: string | number;
  subject?: string;
}

function keyOf(secret: string): Uint8Array {
  return new TextEncoder().encode(secret);
}

/**
 * Sign a token.
 * @example
 * const token = await createToken(secret, { plugins: ['counter:count'], streams: ['own'], ttl: '1h' });
 */
export async function createToken(secret: string, spec: TokenSpec = {}): Promise<string> {
  assertSecret(secret);
  const claims: Record<string, unknown> = { plugins: [...(spec.plugins ?? [])], streams: [...(spec.streams ?? ['own'])] };
  const ttl = spec.ttl ?? '1h';
  const jwt = new SignJWT(claims)
    .setProtectedHeader({ alg: TOKEN_ALGORITHM })
    .setAudience(TOKEN_AUDIENCE)
    .setIssuedAt()
    .setJti(randomUUID())
    .setExpirationTime(typeof ttl === 'number' ? Math.floor(Date.now() / 1000) + ttl : ttl);
  if (spec.subject !== undefined) jwt.setSubject(spec.subject);
  try {
    return await jwt.sign(keyOf(secret));
  } catch (err) {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Cannot sign token: ${String((err as Error).message)}`, { cause: err });
  }
}

/** Verifies tokens against one secret and answers scope questions. */
export class Authenticator {
  readonly #key: Uint8Array;
  readonly #secret: string;

  constructor(secret: string) {
    assertSecret(secret);
    this.#secret = secret;
    this.#key = keyOf(secret);
  }

  /** Verify a compact JWT; any failure (missing, malformed, bad signature, expired, bad claims) is ERR_UNAUTHORIZED. */
  async verify(token: string | undefined): Promise<Principal> {
    if (token === undefined || token === '') throw new SluiceError('ERR_UNAUTHORIZED', 'No token: pass `Authorization: Bearer <token>`, `?token=` or a `sluice.token.<token>` subprotocol');
    let payload: unknown;
    try {
      ({ payload } = await jwtVerify(token, this.#key, { algorithms: [TOKEN_ALGORITHM], audience: TOKEN_AUDIENCE, requiredClaims: ['exp'] }));
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      throw new SluiceError('ERR_UNAUTHORIZED', `Token rejected: ${typeof code === 'string' ? code : 'invalid'}`, { cause: err });
    }
    const claims = claimsSchema.safeParse(payload);
    if (!claims.success) throw new SluiceError('ERR_UNAUTHORIZED', 'Token rejected: claims `plugins` / `streams` must be arrays of strings');
    const c = claims.data;
    const ownerKey = c.jti !== undefined ? `jti:${c.jti}` : c.sub !== undefined ? `sub:${c.sub}` : `sig:${token.slice(token.lastIndexOf('.') + 1)}`;
    return Object.freeze({
      subject: c.sub,
      plugins: Object.freeze(c.plugins ?? []),
      streams: Object.freeze(c.streams ?? ['own']),
      expiresAt: c.exp,
      ownerTag: this.ownerTag(ownerKey),
    });
  }

  ownerTag(ownerKey: string): string {
    return createHmac('sha256', this.#secret).update(ownerKey).digest('base64url').slice(0, OWNER_TAG_LENGTH);
  }
}

/** The id of a stream `principal` starts: `<ownerTag>.<requested or random>`. */
export function ownedStreamId(principal: Principal, requested?: string): string {
  return `${principal.ownerTag}.${requested ?? randomUUID()}`;
}

export function isOwner(principal: Principal, streamId: string): boolean {
  return streamId.length > principal.ownerTag.length && streamId.startsWith(principal.ownerTag) && streamId[principal.ownerTag.length] === '.';
}

export function mayStart(principal: Principal, plugin: string, action: string): boolean {
  for (const entry of principal.plugins) {
    if (entry === '*' || entry === plugin || entry === `${plugin}:${action}`) return true;
  }
  return false;
}

export function mayRead(principal: Principal, streamId: string): boolean {
  for (const entry of principal.streams) {
    if (entry === '*' || entry === streamId) return true;
    if (entry === 'own' && isOwner(principal, streamId)) return true;
  }
  return false;
}

export function mayCancel(principal: Principal, streamId: string): boolean {
  return isOwner(principal, streamId) ? mayRead(principal, streamId) : principal.streams.includes('*');
}

export function isExpired(principal: Principal, nowMs = Date.now()): boolean {
  return principal.expiresAt * 1000 <= nowMs;
}

function assertSecret(secret: unknown): asserts secret is string {
  if (typeof secret !== 'string' || secret.length < MIN_SECRET_LENGTH) {
    throw new SluiceError('ERR_CONFIG_INVALID', `Expected the token secret to be a string of at least ${MIN_SECRET_LENGTH} characters, got ${typeof secret === 'string' ? `${secret.length} characters` : typeof secret}`);
  }
}

export interface SecretSource {
  secret?: string | undefined;
  dataDir?: string | undefined;
  env?: NodeJS.ProcessEnv;
}

/**
 * The token secret: `secret`, else `SLUICE_SECRET`, else `<dataDir>/server-secret`,
 * generated once (mode 0600, created exclusively so two processes cannot race to write
 * different secrets) and reused. A secret file readable by group or others is refused.
 */
export async function resolveSecret(source: SecretSource): Promise<string> {
  if (source.secret !== undefined) {
    assertSecret(source.secret);
    return source.secret;
  }
  const fromEnv = (source.env ?? process.env).SLUICE_SECRET;
  if (fromEnv !== undefined && fromEnv !== '') {
    assertSecret(fromEnv);
    return fromEnv;
  }
  if (source.dataDir === undefined) {
    throw new SluiceError('ERR_CONFIG_INVALID', 'No token secret: pass `secret`, set SLUICE_SECRET, or give a data folder to keep one in');
  }
  await mkdir(source.dataDir, { recursive: true, mode: 0o700 });
  const file = join(source.dataDir, SECRET_FILE);
  try {
    const handle = await open(file, 'wx', 0o600);
    try {
      const secret = randomBytes(SECRET_BYTES).toString('base64url');
      await handle.writeFile(`${secret}\n`);
      // The umask may have dropped bits but never adds any; chmod pins 0600 regardless.
      await chmod(file, 0o600);
      return secret;
    } finally {
      await handle.close();
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
  }
  const info = await stat(file);
  if (process.platform !== 'win32' && (info.mode & 0o077) !== 0) {
    throw new SluiceError('ERR_CONFIG_INVALID', `Secret file ${file} is readable by others (mode ${(info.mode & 0o777).toString(8)}); run chmod 600 on it`);
  }
  const secret = (await readFile(file, 'utf8')).trim();
  assertSecret(secret);
  return secret;
}
