/**
 * One host per data folder. Two hosts on one folder would both run (resume) its
 * unfinished durable streams and append to the same logs: duplicates, the one thing a
 * log promises never to show. A host holds `host.lock` (pid, machine, start time), made
 * complete in a temporary file and linked into place, so it appears whole or not at all
 * and only one host can link it. A lock whose process is gone from this machine (a
 * SIGKILLed host) is taken over. Inspecting a store takes no lock; changing one from the
 * CLI (`sluice streams rm`) does.
 *
 * Not covered: a lock on a folder shared between machines is never taken over (its
 * pid cannot be checked), and two hosts taking over the same stale lock at the same
 * instant can both succeed.
 */
import { randomUUID } from 'node:crypto';
import { link, readFile, unlink, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { SluiceError } from '../../protocol/errors.js';
import { processAlive } from '../pid.js';
import { FILE_MODE, preparePrivateDir } from './files.js';

export const LOCK_FILE = 'host.lock';

interface Holder {
  pid: number;
  hostname: string;
  since: string;
  token: string;
}

function isHolder(v: unknown): v is Holder {
  const h = v as Partial<Holder> | null;
  return typeof h === 'object' && h !== null && Number.isInteger(h.pid) && typeof h.hostname === 'string' && typeof h.since === 'string' && typeof h.token === 'string';
}

async function readHolder(file: string): Promise<Holder | undefined> {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as unknown;
    return isHolder(parsed) ? parsed : undefined;
  } catch {
    return undefined;
  }
}

const io = (dir: string, err: unknown): SluiceError => new SluiceError('ERR_STORE_IO', `Cannot lock the data folder ${dir}: ${(err as Error).message}`, { cause: err });

export class DataLock {
  private constructor(
    readonly file: string,
    readonly token: string,
  ) {}

  /** Take the folder's lock, or throw ERR_STORE_LOCKED naming who holds it. */
  static async acquire(dir: string): Promise<DataLock> {
    try {
      await preparePrivateDir(dir);
    } catch (err) {
      throw io(dir, err);
    }
    const file = join(dir, LOCK_FILE);
    const mine: Holder = { pid: process.pid, hostname: hostname(), since: new Date().toISOString(), token: randomUUID() };
    const temp = join(dir, `${LOCK_FILE}.${mine.token}`);
    try {
      await writeFile(temp, JSON.stringify(mine), { mode: FILE_MODE });
      // Two attempts: the second after taking over a lock whose process is gone.
      for (let attempt = 0; attempt < 2; attempt++) {
        try {
          await link(temp, file);
          return new DataLock(file, mine.token);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw io(dir, err);
        }
        const holder = await readHolder(file);
        if (holder === undefined) {
          throw new SluiceError('ERR_STORE_LOCKED', `Data folder ${dir} has a lock file ${LOCK_FILE} that cannot be read; delete it if no sluice host uses this folder`);
        }
        if (holder.hostname !== mine.hostname || processAlive(holder.pid)) {
          throw new SluiceError('ERR_STORE_LOCKED', `Data folder ${dir} is in use by process ${holder.pid} on ${holder.hostname} (since ${holder.since}): stop that host, use another data folder, or stream through it`, {
            details: { pid: holder.pid, hostname: holder.hostname, since: holder.since },
          });
        }
        await unlink(file).catch((err: NodeJS.ErrnoException) => {
          if (err.code !== 'ENOENT') throw io(dir, err);
        });
      }
      throw new SluiceError('ERR_STORE_LOCKED', `Data folder ${dir} was locked again while a stale lock was taken over`);
    } finally {
      await unlink(temp).catch(() => undefined);
    }
  }

  /** Give the lock back, if it is still ours. Idempotent. */
  async release(): Promise<void> {
    const holder = await readHolder(this.file);
    if (holder?.token !== this.token) return;
    await unlink(this.file).catch(() => undefined);
  }
}
