/**
 * One host per data folder. Two hosts on one folder would both run (resume) its
 * unfinished durable streams and append to the same logs: duplicates, the one thing a
 * log promises never to show. A host holds `host.lock` (pid, machine, start time), made
 * complete in a temporary file and linked into place, so it appears whole or not at all
 * and only one host can link it. A lock whose process is gone from this machine (a
 * SIGKILLed host) is taken over. Inspecting a store takes no lock; changing one from the
 * CLI (`sluice streams rm`) does.
 *
 * Taking over is itself guarded: several hosts that find the same stale lock at once
 * (a supervisor restarting a killed host while someone runs `sluice resume`) must not
 * each remove it and then each link their own, after one of them has already won. Only
 * the holder of `host.lock.takeover` (linked into place the same way, held for a few
 * file operations) may remove a stale lock, and only after reading again that it is the
 * same one.
 *
 * Not covered: a lock on a folder shared between machines is never taken over (its
 * pid cannot be checked).
 */
import { randomUUID } from 'node:crypto';
import { link, readFile, unlink, writeFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
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

/** The holder named in `file`; GONE when there is no such file, undefined when it cannot be read. */
const GONE = Symbol('gone');

async function readHolder(file: string): Promise<Holder | typeof GONE | undefined> {
  try {
    const parsed = JSON.parse(await readFile(file, 'utf8')) as unknown;
    return isHolder(parsed) ? parsed : undefined;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ENOENT' ? GONE : undefined;
  }
}

/** A lock whose process is gone from this machine. */
const isStale = (holder: Holder): boolean => holder.hostname === hostname() && !processAlive(holder.pid);

/** Rounds of "link, else look at the holder" before giving up: each ends in a link, a verdict or a short wait. */
const MAX_ATTEMPTS = 50;
const TAKEOVER_WAIT_MS = 10;

const io = (dir: string, err: unknown): SluiceError => new SluiceError('ERR_STORE_IO', `Cannot lock the data folder ${dir}: ${(err as Error).message}`, { cause: err });

/**
 * Remove `stale` from `file` if it is still there, under the takeover guard; returns
 * without removing anything while another host holds the guard (the caller looks again).
 */
async function removeStale(dir: string, file: string, temp: string, stale: Holder): Promise<void> {
  const guard = `${file}.takeover`;
  try {
    await link(temp, guard);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw io(dir, err);
    const guardHolder = await readHolder(guard);
    // A guard left by a host killed mid-takeover would block every later host for good.
    // It is removed unguarded: two hosts doing so at one instant could still both win, but
    // only after a host died inside its few file operations of takeover.
    if (guardHolder !== GONE && guardHolder !== undefined && isStale(guardHolder)) await unlink(guard).catch(ignoreMissing(dir));
    else await sleep(TAKEOVER_WAIT_MS);
    return;
  }
  try {
    const now = await readHolder(file);
    if (now !== GONE && now?.token === stale.token) await unlink(file).catch(ignoreMissing(dir));
  } finally {
    await unlink(guard).catch(() => undefined);
  }
}

const ignoreMissing =
  (dir: string) =>
  (err: NodeJS.ErrnoException): void => {
    if (err.code !== 'ENOENT') throw io(dir, err);
  };

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
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        try {
          await link(temp, file);
          return new DataLock(file, mine.token);
        } catch (err) {
          if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw io(dir, err);
        }
        const holder = await readHolder(file);
        if (holder === GONE) continue;
        if (holder === undefined) {
          throw new SluiceError('ERR_STORE_LOCKED', `Data folder ${dir} has a lock file ${LOCK_FILE} that cannot be read; delete it if no sluice host uses this folder`);
        }
        if (!isStale(holder)) {
          throw new SluiceError('ERR_STORE_LOCKED', `Data folder ${dir} is in use by process ${holder.pid} on ${holder.hostname} (since ${holder.since}): stop that host, use another data folder, or stream through it`, {
            details: { pid: holder.pid, hostname: holder.hostname, since: holder.since },
          });
        }
        await removeStale(dir, file, temp, holder);
      }
      throw new SluiceError('ERR_STORE_LOCKED', `Data folder ${dir}: could not take its lock over from a host that is gone (other hosts were taking it over at the same time)`);
    } finally {
      await unlink(temp).catch(() => undefined);
    }
  }

  /** Give the lock back, if it is still ours. Idempotent. */
  async release(): Promise<void> {
    const holder = await readHolder(this.file);
    if (holder === GONE || holder?.token !== this.token) return;
    await unlink(this.file).catch(() => undefined);
  }
}
