/**
 * The data folder is private to the host's user: the folder 0700, its files 0600.
 * LMDB creates its files with the process umask (often 0644); they are tightened right
 * after open, and nobody else could open them in between because the folder is 0700.
 */
import { chmod, mkdir, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';

export const DIR_MODE = 0o700;
export const FILE_MODE = 0o600;
const PERMISSION_BITS = 0o777;

/** Create the folder (0700) or tighten an existing one. */
export async function preparePrivateDir(path: string): Promise<void> {
  await mkdir(path, { recursive: true, mode: DIR_MODE });
  const info = await stat(path);
  if (!info.isDirectory()) throw new Error(`${path} is not a directory`);
  if ((info.mode & PERMISSION_BITS) !== DIR_MODE) await chmod(path, DIR_MODE);
}

/** Tighten every regular file in the folder (data.mdb, lock.mdb) to 0600. */
export async function restrictFiles(path: string): Promise<void> {
  for (const entry of await readdir(path, { withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const file = join(path, entry.name);
    const info = await stat(file);
    if ((info.mode & PERMISSION_BITS) !== FILE_MODE) await chmod(file, FILE_MODE);
  }
}
