/**
 * Graph state on disk, so `sluice tasks ls|show|cancel` work from another process:
 * one JSON file per graph (`<dir>/<graphId>.json`), rewritten atomically (temp file,
 * then rename) on status changes, and a cancel request file (`<graphId>.cancel`) that
 * the process running the graph watches for.
 *
 * Writes are coalesced: at most one in flight and one pending, whatever the event
 * rate, so a graph of 10,000 tasks does not queue 10,000 writes.
 */
import { mkdirSync, watch, type FSWatcher } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isObject } from '../../protocol/assert.js';
import { SluiceError } from '../../protocol/errors.js';
import type { TaskGraph } from './runner.js';
import type { GraphInfo } from './state.js';
import { processAlive } from '../pid.js';

const STATE_SUFFIX = '.json';
const CANCEL_SUFFIX = '.cancel';

export interface StoredGraph {
  info: GraphInfo;
  /** False when the graph was not final but its process is gone (killed, crashed). */
  alive: boolean;
}

export interface CancelRequest {
  task?: string;
  reason?: string;
}

function parseStored(data: unknown, file: string): GraphInfo {
  if (!isObject(data) || typeof data.id !== 'string' || typeof data.status !== 'string' || typeof data.pid !== 'number' || !Array.isArray(data.tasks)) {
    throw new SluiceError('ERR_STORE_CORRUPT', `${file} is not a task graph state file`, { details: { file } });
  }
  return data as unknown as GraphInfo;
}

export class GraphFiles {
  constructor(readonly dir: string) {}

  #path(id: string, suffix: string): string {
    if (!/^[A-Za-z0-9_.:-]{1,200}$/.test(id)) throw new SluiceError('ERR_TASK_NOT_FOUND', `No task graph \`${id}\``, { details: { graph: id } });
    return join(this.dir, `${id}${suffix}`);
  }

  async write(info: GraphInfo): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    const path = this.#path(info.id, STATE_SUFFIX);
    const tmp = `${path}.${process.pid}.tmp`;
    await writeFile(tmp, `${JSON.stringify(info, null, 2)}\n`);
    await rename(tmp, path);
  }

  async read(id: string): Promise<StoredGraph> {
    const path = this.#path(id, STATE_SUFFIX);
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new SluiceError('ERR_TASK_NOT_FOUND', `No task graph \`${id}\` in ${this.dir}`, { details: { graph: id } });
      throw new SluiceError('ERR_STORE_IO', `Cannot read ${path}: ${(err as Error).message}`, { cause: err });
    }
    let data: unknown;
    try {
      data = JSON.parse(text);
    } catch (err) {
      throw new SluiceError('ERR_STORE_CORRUPT', `${path} is not JSON: ${(err as Error).message}`, { cause: err });
    }
    const info = parseStored(data, path);
    const final = info.status === 'done' || info.status === 'failed' || info.status === 'cancelled';
    return { info, alive: final || processAlive(info.pid) };
  }

  /** Every graph in the folder, newest first; unreadable files are reported in `problems`. */
  async list(): Promise<{ graphs: StoredGraph[]; problems: SluiceError[] }> {
    let names: string[];
    try {
      names = await readdir(this.dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { graphs: [], problems: [] };
      throw new SluiceError('ERR_STORE_IO', `Cannot list ${this.dir}: ${(err as Error).message}`, { cause: err });
    }
    const graphs: StoredGraph[] = [];
    const problems: SluiceError[] = [];
    for (const name of names) {
      if (!name.endsWith(STATE_SUFFIX)) continue;
      try {
        graphs.push(await this.read(name.slice(0, -STATE_SUFFIX.length)));
      } catch (err) {
        problems.push(err as SluiceError);
      }
    }
    graphs.sort((a, b) => b.info.createdAt - a.info.createdAt);
    return { graphs, problems };
  }

  /** Ask the process running graph `id` to cancel it (or one task). */
  async requestCancel(id: string, request: CancelRequest): Promise<void> {
    const { info, alive } = await this.read(id);
    if (!alive) throw new SluiceError('ERR_TASK_NOT_FOUND', `Task graph \`${id}\` is not running (process ${info.pid} is gone)`, { details: { graph: id } });
    if (request.task !== undefined && !info.tasks.some((t) => t.id === request.task)) {
      throw new SluiceError('ERR_TASK_NOT_FOUND', `Task graph \`${id}\` has no task \`${request.task}\``, { details: { graph: id, task: request.task } });
    }
    // Atomic, so the watcher never reads a half-written request.
    const path = this.#path(id, CANCEL_SUFFIX);
    const tmp = `${path}.${process.pid}.tmp`;
    await writeFile(tmp, JSON.stringify(request));
    await rename(tmp, path);
  }

  /**
   * Keep `graph`'s state file current until it ends, and apply cancel requests for it.
   * Returns a promise that settles once the final state is on disk.
   */
  attach(graph: TaskGraph, onError: (err: unknown) => void = () => {}): Promise<void> {
    let writing: Promise<void> | undefined;
    let dirty = false;
    const flush = (): Promise<void> => {
      if (writing !== undefined) {
        dirty = true;
        return writing;
      }
      writing = (async () => {
        do {
          dirty = false;
          try {
            await this.write(graph.status());
          } catch (err) {
            onError(err);
          }
        } while (dirty);
        writing = undefined;
      })();
      return writing;
    };
    const onStatus = (): void => void flush();
    graph.on('status', onStatus);
    const watcher = this.#watchCancels(graph, onError);
    void flush();
    return new Promise((resolve) => {
      graph.once('end', () => {
        graph.off('status', onStatus);
        watcher?.close();
        // The last write must see the final state: wait out the one in flight, then write again.
        void (async () => {
          await writing;
          await flush();
          resolve();
        })();
      });
    });
  }

  #watchCancels(graph: TaskGraph, onError: (err: unknown) => void): FSWatcher | undefined {
    const file = `${graph.id}${CANCEL_SUFFIX}`;
    const path = join(this.dir, file);
    const apply = async (): Promise<void> => {
      let text: string;
      try {
        text = await readFile(path, 'utf8');
        await rm(path, { force: true });
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') onError(err);
        return;
      }
      let request: CancelRequest;
      try {
        const data: unknown = JSON.parse(text);
        if (!isObject(data) || (data.task !== undefined && typeof data.task !== 'string') || (data.reason !== undefined && typeof data.reason !== 'string')) throw new Error('not a cancel request');
        request = { ...(typeof data.task === 'string' ? { task: data.task } : {}), ...(typeof data.reason === 'string' ? { reason: data.reason } : {}) };
      } catch (err) {
        // A malformed request cancels nothing: guessing "everything" would be worse.
        onError(new SluiceError('ERR_STORE_CORRUPT', `${path} is not a cancel request`, { cause: err }));
        return;
      }
      const reason = request.reason ?? 'cancel requested';
      try {
        if (request.task === undefined) graph.cancel(undefined, reason);
        else graph.cancel(request.task, reason);
      } catch (err) {
        onError(err);
      }
    };
    try {
      // Once, at attach: the folder must exist before it can be watched.
      mkdirSync(this.dir, { recursive: true });
      return watch(this.dir, (_event, name) => {
        if (name === file) void apply();
      });
    } catch (err) {
      onError(err);
      return undefined;
    }
  }
}
