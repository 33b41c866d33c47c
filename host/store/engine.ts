/**
 * The store's private engine: the LMDB environment, its tables, the record codec, the
 * epoch, and the per-stream waiters readers park on. Store (store.ts) is the thin
 * public class over it; the log, reader and retention modules work on it.
 *
 * Single writer process: the in-memory log positions (log.ts) assume this process is
 * the only one appending to the environment.
 */
import type { Buffer } from 'node:buffer';
import { randomUUID } from 'node:crypto';
import { open, type Database, type RootDatabase } from 'lmdb';
import { SluiceError } from '../../protocol/errors.js';
import { RecordCipher } from './crypto.js';
import { preparePrivateDir, restrictFiles } from './files.js';
import type { ResolvedStoreOptions } from './options.js';
import {
  META_KEYCHECK_KEY,
  META_STORE_KEY,
  RecordCodec,
  TABLES,
  corrupt,
  isKeycheckBody,
  keyText,
  keycheckBody,
  validateMeta,
  validateStreamBody,
  type MetaRecord,
  type StreamBody,
} from './records.js';

export type LogKey = [string, number];

/** Highest seq a key range may name; seqs are safe integers. */
export const MAX_SEQ = Number.MAX_SAFE_INTEGER;

/** Per-stream wake-ups: appendChunks, setStatus, retention and removal notify; readers wait. */
export class Waiters {
  readonly #byStream = new Map<string, Set<() => void>>();

  /** Resolves on the next notify(id) or notifyAll(); rejects with `signal.reason` on abort. */
  wait(id: string, signal?: AbortSignal): Promise<void> {
    signal?.throwIfAborted();
    return new Promise<void>((resolve, reject) => {
      let set = this.#byStream.get(id);
      if (set === undefined) this.#byStream.set(id, (set = new Set()));
      const waiters = set;
      const cleanup = (): void => {
        waiters.delete(wake);
        if (waiters.size === 0 && this.#byStream.get(id) === waiters) this.#byStream.delete(id);
        signal?.removeEventListener('abort', onAbort);
      };
      const wake = (): void => {
        cleanup();
        resolve();
      };
      const onAbort = (): void => {
        cleanup();
        reject(signal?.reason);
      };
      waiters.add(wake);
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  notify(id: string): void {
    const set = this.#byStream.get(id);
    if (set === undefined) return;
    for (const wake of [...set]) wake();
  }

  notifyAll(): void {
    for (const id of [...this.#byStream.keys()]) this.notify(id);
  }

  /** Readers currently parked (for tests and metrics). */
  get size(): number {
    let n = 0;
    for (const set of this.#byStream.values()) n += set.size;
    return n;
  }
}

export class Engine {
  readonly #root: RootDatabase<Buffer, string>;
  readonly meta: Database<Buffer, string>;
  readonly streams: Database<Buffer, string>;
  readonly checkpoints: Database<Buffer, string>;
  readonly log: Database<Buffer, LogKey>;
  readonly codec: RecordCodec;
  readonly options: ResolvedStoreOptions;
  readonly epoch: string;
  readonly waiters = new Waiters();
  #closed = false;

  private constructor(root: RootDatabase<Buffer, string>, options: ResolvedStoreOptions, codec: RecordCodec, epoch: string) {
    this.#root = root;
    this.options = options;
    this.codec = codec;
    this.epoch = epoch;
    this.meta = root.openDB<Buffer, string>(TABLES.meta, { encoding: 'binary' });
    this.streams = root.openDB<Buffer, string>(TABLES.streams, { encoding: 'binary' });
    this.checkpoints = root.openDB<Buffer, string>(TABLES.checkpoints, { encoding: 'binary' });
    // Not compressed: lmdb's LZ4 halved typical JSON records on disk but made log mode
    // ~1.7x slower (200k ~1 KiB records of pseudo-words: 2.2-2.7 s vs 1.3-1.5 s). Brotli
    // at quality 0 on the thread pool (session 4) cut the bytes written from ~200 to ~85 MB
    // but added ~0.8 s of CPU per 200 MB, on a 2-core machine where log mode already
    // keeps both cores half busy: no faster (1.06-1.27 s vs 0.83-1.12 s).
    this.log = root.openDB<Buffer, LogKey>(TABLES.log, { encoding: 'binary' });
  }

  static async open(options: ResolvedStoreOptions): Promise<Engine> {
    try {
      await preparePrivateDir(options.path);
    } catch (err) {
      throw new SluiceError('ERR_STORE_IO', `Cannot create the store folder ${options.path}: ${(err as Error).message}`, { cause: err });
    }
    let root: RootDatabase<Buffer, string>;
    try {
      // noSubdir: false because lmdb takes a path with a dot ("./data.v2") for a file name.
      root = open<Buffer, string>({ path: options.path, noSubdir: false, encoding: 'binary', maxDbs: 8 });
    } catch (err) {
      throw new SluiceError('ERR_STORE_IO', `Cannot open the store at ${options.path}: ${(err as Error).message}`, { cause: err });
    }
    try {
      await restrictFiles(options.path);
      const cipher = options.key === undefined ? undefined : new RecordCipher(options.key);
      const codec = new RecordCodec(cipher);
      const meta = root.openDB<Buffer, string>(TABLES.meta, { encoding: 'binary' });
      const record = ensureMeta(meta, codec, options.path);
      return new Engine(root, options, codec, record.epoch);
    } catch (err) {
      await root.close();
      throw err;
    }
  }

  get closed(): boolean {
    return this.#closed;
  }

  assertOpen(): void {
    if (this.#closed) throw new SluiceError('ERR_STORE_CLOSED', `Store at ${this.options.path} is closed`);
  }

  getStreamBody(id: string): StreamBody | undefined {
    const bytes = this.streams.get(id);
    return bytes === undefined ? undefined : this.decodeStreamBody(id, bytes);
  }

  decodeStreamBody(id: string, bytes: Uint8Array): StreamBody {
    const where = keyText(TABLES.streams, id);
    return validateStreamBody(where, this.codec.decodeObject(where, bytes));
  }

  encodeStreamBody(body: StreamBody): Buffer {
    return this.codec.encodeObject(keyText(TABLES.streams, body.id), body);
  }

  /**
   * Read-modify-write of a stream record inside one asynchronous LMDB transaction, so
   * setStatus and retention (which moves the log head) never lose each other's update.
   * `update` returns undefined to leave the record unchanged. Resolves once committed.
   */
  async updateStream(id: string, update: (body: StreamBody) => StreamBody | undefined): Promise<StreamBody | undefined> {
    let result: StreamBody | undefined;
    await this.#root.transaction(() => {
      const body = this.getStreamBody(id);
      if (body === undefined) return;
      result = update(body);
      if (result !== undefined) void this.streams.put(id, this.encodeStreamBody(result));
    });
    return result;
  }

  /** Run `fn` in one asynchronous write transaction; resolves when committed. */
  transaction(fn: () => void): Promise<void> {
    return this.#root.transaction(fn).then(() => undefined);
  }

  /**
   * Resolves when every write issued so far is on disk. The thenable is taken now, so
   * the promise covers exactly the writes issued before this call and no later ones.
   */
  flushed(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#root.flushed.then(() => resolve(), reject);
    });
  }

  /** Resolves when every write issued so far is committed (visible, survives a process kill). */
  committed(): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      this.#root.committed.then(() => resolve(), reject);
    });
  }

  /** Refuse new work, wake readers, let `drain` finish what is in flight, flush, close LMDB. */
  async close(drain?: () => Promise<void>): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.waiters.notifyAll();
    try {
      await drain?.();
      await this.flushed();
    } finally {
      await this.#root.close();
    }
  }
}

/** Read or create the store's meta record, and check the key against it. */
function ensureMeta(meta: Database<Buffer, string>, codec: RecordCodec, path: string): MetaRecord {
  const storeWhere = keyText(TABLES.meta, META_STORE_KEY);
  const checkWhere = keyText(TABLES.meta, META_KEYCHECK_KEY);
  // One synchronous transaction, once per open: creation must be atomic (epoch and key
  // check together) and durable before anything is written under the epoch.
  const created = meta.transactionSync(() => {
    if (meta.get(META_STORE_KEY) !== undefined) return undefined;
    const record: MetaRecord = { epoch: randomUUID(), createdAt: Date.now(), encrypted: codec.sealed };
    meta.putSync(META_STORE_KEY, codec.encodeObject(storeWhere, record, false));
    if (codec.sealed) meta.putSync(META_KEYCHECK_KEY, codec.encodeObject(checkWhere, keycheckBody(), true));
    return record;
  });
  if (created !== undefined) return created;

  const record = validateMeta(storeWhere, codec.decodeObject(storeWhere, meta.get(META_STORE_KEY), false));
  if (record.encrypted && !codec.sealed) {
    throw new SluiceError('ERR_STORE_KEY', `Store at ${path} is encrypted: pass \`encryptionKey\` or set SLUICE_STORE_KEY`);
  }
  if (!record.encrypted && codec.sealed) {
    throw new SluiceError('ERR_STORE_KEY', `Store at ${path} was created without encryption; open it without a key`);
  }
  if (record.encrypted) {
    const sealed = meta.get(META_KEYCHECK_KEY);
    if (sealed === undefined) throw corrupt(checkWhere, 'the key check of an encrypted store is missing');
    let body: unknown;
    try {
      body = codec.decodeObject(checkWhere, sealed, true);
    } catch (err) {
      if (err instanceof SluiceError && err.code === 'ERR_STORE_CORRUPT') {
        throw new SluiceError('ERR_STORE_KEY', `Wrong encryption key for the store at ${path}`, { cause: err });
      }
      throw err;
    }
    if (!isKeycheckBody(body)) throw new SluiceError('ERR_STORE_KEY', `Wrong encryption key for the store at ${path}`);
  }
  return record;
}
