/**
 * `sluice tasks`: run a task graph from a JSON file and inspect or cancel graphs.
 *
 * - `submit <file.json>` validates the file (coded errors naming the bad field, before
 *   any plugin runs), runs the graph on a host opened on `--plugins`, prints every
 *   status change (or NDJSON with `--json`) and exits 1 when the graph did not end
 *   `done` (130 on Ctrl-C, which cancels the graph).
 * - `ls`, `show <graph> [task]`, `cancel <graph> [task]` work on the state files that
 *   `submit` keeps in `<data>/tasks/` (one JSON file per graph), so they see graphs run
 *   by any process, this one included. `cancel` asks the running process through a
 *   request file and waits for the state file to show the cancellation.
 */
import { existsSync, watch } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { InvalidArgumentError, Option, type Command } from 'commander';
import { isObject } from '../../protocol/assert.js';
import { SluiceError } from '../../protocol/errors.js';
import { Sluice } from '../host.js';
import { GraphFiles, type StoredGraph } from '../tasks/files.js';
import { TaskGraph } from '../tasks/runner.js';
import { parseTaskGraph } from '../tasks/spec.js';
import { isFinal, type GraphInfo, type TaskInfo, type TaskStatusEvent } from '../tasks/state.js';
import { CLI_DEFAULTS, EXIT, reportError, usageError, writeStdout } from './common.js';

const TASKS_FOLDER = 'tasks';
/** How long `cancel` waits for the running process to confirm. */
const CANCEL_CONFIRM_MS = 10_000;

interface SubmitOptions {
  plugins: string;
  data: string;
  persist: boolean;
  isolates: boolean;
  concurrency?: number;
  sandbox?: 'worker' | 'isolate';
  failFast?: boolean;
  json?: boolean;
}

interface ReadOptions {
  data: string;
  json?: boolean;
  reason?: string;
}

function parsePositiveInt(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n) || n < 1) throw new InvalidArgumentError(`expected a positive integer, got \`${value}\``);
  return n;
}

export function register(program: Command): void {
  const tasks = program.command('tasks').description('Run task graphs (JSON task files) and inspect or cancel them');

  const submitCmd = tasks
    .command('submit')
    .description('Run the task graph in a JSON file; exit status 1 if any task fails')
    .argument('<file>', 'task file (JSON)')
    .option('--plugins <dir>', 'plugins folder', CLI_DEFAULTS.plugins)
    .option('--data <dir>', 'data folder (graph state goes in <dir>/tasks)', CLI_DEFAULTS.data)
    .option('--no-persist', 'keep no state file (ls/show/cancel will not see the graph)')
    .option('--no-isolates', 'run without the isolate sandbox')
    .option('--concurrency <n>', 'tasks of the graph in flight at once', parsePositiveInt)
    .addOption(new Option('--sandbox <kind>', 'default sandbox for tasks that name none').choices(['worker', 'isolate']))
    .option('--fail-fast', 'cancel the rest of the graph when a task fails')
    .option('--json', 'NDJSON output: one line per status change, then the graph');
  submitCmd.action(async (file: string, opts: SubmitOptions) => {
    const pluginsGiven = submitCmd.getOptionValueSource('plugins') !== 'default';
    process.exitCode = await submit(file, opts, pluginsGiven);
  });

  tasks
    .command('ls')
    .description('List task graphs in the data folder')
    .option('--data <dir>', 'data folder', CLI_DEFAULTS.data)
    .option('--json', 'one JSON line per graph')
    .action(async (opts: ReadOptions) => {
      process.exitCode = await list(opts);
    });

  tasks
    .command('show')
    .description('Show a task graph, or one of its tasks, with attempts and errors')
    .argument('<graph>', 'graph id (from submit or ls)')
    .argument('[task]', 'task id')
    .option('--data <dir>', 'data folder', CLI_DEFAULTS.data)
    .option('--json', 'JSON output')
    .action(async (graph: string, task: string | undefined, opts: ReadOptions) => {
      process.exitCode = await show(graph, task, opts);
    });

  tasks
    .command('cancel')
    .description('Cancel a running task graph, or one task and its dependents')
    .argument('<graph>', 'graph id')
    .argument('[task]', 'task id')
    .option('--data <dir>', 'data folder', CLI_DEFAULTS.data)
    .option('--reason <text>', 'recorded with the cancellation')
    .option('--json', 'JSON output')
    .action(async (graph: string, task: string | undefined, opts: ReadOptions) => {
      process.exitCode = await cancel(graph, task, opts);
    });
}

function stateFolder(data: string): string {
  return join(resolve(data), TASKS_FOLDER);
}

// ---- submit ------------------------------------------------------------------------------

/** Read the task file: not readable is a usage error, not JSON is ERR_TASK_INVALID. */
async function readTaskFile(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw usageError(`Cannot read task file ${file}: ${(err as Error).message}`);
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new SluiceError('ERR_TASK_INVALID', `Task file ${file} is not JSON: ${(err as Error).message}`, { details: { file } });
  }
}

const MAX_WALK_DEPTH = 64;

/**
 * Plugin paths written `./x` or `../x` in a task file mean "next to the file", wherever
 * the command runs from: rewrite every `plugin` of a task or a pipeline source/step.
 */
function resolvePluginPaths(value: unknown, base: string, depth = 0): unknown {
  if (depth > MAX_WALK_DEPTH) return value;
  if (Array.isArray(value)) return value.map((v) => resolvePluginPaths(v, base, depth + 1));
  if (!isObject(value)) return value;
  const out: Record<string, unknown> = {};
  for (const [key, v] of Object.entries(value)) {
    if (key === 'params') out[key] = v; // a plugin's own data, never rewritten
    else if (key === 'plugin' && typeof v === 'string' && (v.startsWith('./') || v.startsWith('../')) && !isAbsolute(v)) out[key] = resolve(base, v);
    else out[key] = resolvePluginPaths(v, base, depth + 1);
  }
  return out;
}

function withDefaultSandbox(definition: unknown, sandbox: 'worker' | 'isolate' | undefined): unknown {
  if (sandbox === undefined || !isObject(definition)) return definition;
  const defaults = definition.defaults === undefined ? {} : definition.defaults;
  if (!isObject(defaults)) return definition; // the parser reports it
  return { ...definition, defaults: { ...defaults, sandbox } };
}

function clock(at: number): string {
  return new Date(at).toISOString().slice(11, 23);
}

function describeEvent(e: TaskStatusEvent): string {
  let line = `${clock(e.at)}  ${e.task.padEnd(20)} ${e.status.padEnd(9)}`;
  if (e.attempt > 1 && (e.status === 'queued' || e.status === 'running')) line += ` attempt ${e.attempt}`;
  if (e.error !== undefined) line += ` ${e.error.code}: ${e.error.message}`;
  if (e.retryAt !== undefined) line += ` (retry in ${Math.max(0, Math.round(e.retryAt - e.at))} ms)`;
  return line;
}

function describeTask(t: TaskInfo): string {
  const first = t.attempts[0];
  const last = t.attempts[t.attempts.length - 1];
  const ms = first?.queuedAt !== undefined && last?.endedAt !== undefined ? `${Math.round(last.endedAt - first.queuedAt)} ms` : '-';
  let line = `  ${t.id.padEnd(20)} ${t.status.padEnd(9)} attempts ${t.attempts.length}  chunks ${t.chunks}  bytes ${t.bytes}  ${ms}`;
  if (t.error !== undefined) line += `  ${t.error.code}: ${t.error.message}`;
  return line;
}

function summary(info: GraphInfo): string {
  const c = info.counts;
  return `graph ${info.id} ${info.status}: ${c.done} done, ${c.failed} failed, ${c.cancelled} cancelled of ${info.tasks.length}`;
}

async function submit(file: string, opts: SubmitOptions, pluginsGiven: boolean): Promise<number> {
  const json = opts.json === true;
  let host: Sluice | undefined;
  let interrupted = false;
  const out = (line: string): void => writeStdout(`${line}\n`);
  try {
    const raw = await readTaskFile(file);
    const definition = withDefaultSandbox(resolvePluginPaths(raw, dirname(resolve(file))), opts.sandbox);
    // Validate before a sandbox starts: a bad file costs nothing.
    const spec = parseTaskGraph(definition);
    // Durable tasks need the host's store, which lives in the data folder.
    const durable = spec.tasks.some((task) => task.kind === 'stream' && task.durability !== 'none');
    // The default plugins folder is optional (task files may name plugins by path); a given one is not.
    const plugins = pluginsGiven || existsSync(opts.plugins) ? opts.plugins : undefined;
    host = await Sluice.open({
      ...(plugins === undefined ? {} : { plugins }),
      ...(opts.isolates ? {} : { isolates: false }),
      ...(durable ? { dataDir: opts.data } : {}),
    });
    const graph = new TaskGraph(host, definition, {
      ...(opts.concurrency === undefined ? {} : { concurrency: opts.concurrency }),
      ...(opts.failFast === true ? { failFast: true } : {}),
    });
    const files = opts.persist ? new GraphFiles(stateFolder(opts.data)) : undefined;
    const persisted = files?.attach(graph, (err) => reportError(err, false));
    if (json) out(JSON.stringify({ type: 'graph', id: graph.id, name: graph.name, tasks: graph.status().tasks.length, ...(files === undefined ? {} : { state: join(files.dir, `${graph.id}.json`) }) }));
    else process.stderr.write(`graph ${graph.id}${files === undefined ? '' : ` (state in ${files.dir})`}\n`);
    // Thrown from here it would land in the graph's emit: stop the graph, report after.
    let lostStdout: unknown;
    graph.on('status', (e) => {
      if (lostStdout !== undefined) return;
      try {
        out(json ? JSON.stringify({ type: 'status', ...e }) : describeEvent(e));
      } catch (err) {
        lostStdout = err;
        graph.cancel(undefined, 'stdout closed');
      }
    });

    const onSignal = (): void => {
      interrupted = true;
      graph.cancel(undefined, 'interrupted');
    };
    process.once('SIGINT', onSignal);
    process.once('SIGTERM', onSignal);
    let info: GraphInfo;
    try {
      info = await graph.start();
      await persisted;
    } finally {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    }
    if (lostStdout !== undefined) throw lostStdout;
    if (json) out(JSON.stringify({ type: 'end', graph: info }));
    else {
      out(summary(info));
      for (const t of info.tasks) out(describeTask(t));
    }
    if (interrupted) return EXIT.interrupted;
    return info.status === 'done' ? EXIT.ok : EXIT.failed;
  } catch (err) {
    const status = reportError(err, json);
    return interrupted ? EXIT.interrupted : status;
  } finally {
    await host?.close();
  }
}

// ---- ls / show / cancel ------------------------------------------------------------------

function statusOf(g: StoredGraph): string {
  return g.alive ? g.info.status : `${g.info.status} (process ${g.info.pid} gone)`;
}

async function list(opts: ReadOptions): Promise<number> {
  const json = opts.json === true;
  try {
    const { graphs, problems } = await new GraphFiles(stateFolder(opts.data)).list();
    for (const p of problems) reportError(p, false);
    for (const g of graphs) {
      const i = g.info;
      if (json) writeStdout(`${JSON.stringify({ id: i.id, name: i.name, status: i.status, alive: g.alive, pid: i.pid, createdAt: i.createdAt, endedAt: i.endedAt, counts: i.counts })}\n`);
      else {
        const c = i.counts;
        writeStdout(`${i.id.padEnd(32)} ${statusOf(g).padEnd(12)} ${c.done}/${i.tasks.length} done, ${c.failed} failed, ${c.cancelled} cancelled  ${new Date(i.createdAt).toISOString()}\n`);
      }
    }
    if (!json && graphs.length === 0) process.stderr.write(`no task graphs in ${stateFolder(opts.data)}\n`);
    return EXIT.ok;
  } catch (err) {
    return reportError(err, json);
  }
}

function findTask(info: GraphInfo, task: string): TaskInfo {
  const t = info.tasks.find((x) => x.id === task);
  if (t === undefined) throw new SluiceError('ERR_TASK_NOT_FOUND', `Task graph \`${info.id}\` has no task \`${task}\``, { details: { graph: info.id, task } });
  return t;
}

async function show(graph: string, task: string | undefined, opts: ReadOptions): Promise<number> {
  const json = opts.json === true;
  try {
    const stored = await new GraphFiles(stateFolder(opts.data)).read(graph);
    const info = stored.info;
    if (task !== undefined) {
      const t = findTask(info, task);
      if (json) writeStdout(`${JSON.stringify(t)}\n`);
      else {
        writeStdout(`${describeTask(t).trim()}\n  kind ${t.kind}${t.plugin === undefined ? '' : `  ${t.plugin} ${t.action}`}  priority ${t.priority}  dependsOn [${t.dependsOn.join(', ')}]\n`);
        for (const a of t.attempts) {
          const ran = a.startedAt !== undefined && a.endedAt !== undefined ? `${Math.round(a.endedAt - a.startedAt)} ms` : '-';
          writeStdout(`  attempt ${a.attempt}: ${a.status}  queued ${clock(a.queuedAt)}  ran ${ran}  chunks ${a.chunks}${a.resumedFrom === undefined ? '' : `  resumed from ${a.resumedFrom}`}${a.error === undefined ? '' : `  ${a.error.code}: ${a.error.message}`}\n`);
        }
      }
      return EXIT.ok;
    }
    if (json) writeStdout(`${JSON.stringify({ ...info, alive: stored.alive })}\n`);
    else {
      writeStdout(`${summary(info)}${stored.alive ? '' : ` (process ${info.pid} gone)`}\n`);
      for (const t of info.tasks) writeStdout(`${describeTask(t)}\n`);
    }
    return EXIT.ok;
  } catch (err) {
    return reportError(err, json);
  }
}

/** Resolve with the graph's state once `done(info)` holds, or undefined after `ms`. */
function waitForState(files: GraphFiles, id: string, done: (info: GraphInfo) => boolean, ms: number): Promise<GraphInfo | undefined> {
  return new Promise((resolvePromise) => {
    let settled = false;
    const finish = (info: GraphInfo | undefined): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      watcher.close();
      resolvePromise(info);
    };
    const check = async (): Promise<void> => {
      try {
        const { info } = await files.read(id);
        if (done(info)) finish(info);
      } catch {
        // A write in progress (rename is atomic, but the file may be briefly absent): the next event rechecks.
      }
    };
    const watcher = watch(files.dir, (_e, name) => {
      if (name === `${id}.json`) void check();
    });
    const timer = setTimeout(() => finish(undefined), ms);
    void check();
  });
}

async function cancel(graph: string, task: string | undefined, opts: ReadOptions): Promise<number> {
  const json = opts.json === true;
  try {
    const files = new GraphFiles(stateFolder(opts.data));
    const { info } = await files.read(graph);
    const target = (i: GraphInfo): boolean => (task === undefined ? i.status !== 'pending' && i.status !== 'running' : isFinal(findTask(i, task).status));
    if (target(info)) {
      const status = task === undefined ? info.status : findTask(info, task).status;
      if (json) writeStdout(`${JSON.stringify({ graph, task, status, cancelled: false })}\n`);
      else writeStdout(`${task ?? graph} is already ${status}\n`);
      return EXIT.ok;
    }
    await files.requestCancel(graph, { ...(task === undefined ? {} : { task }), ...(opts.reason === undefined ? {} : { reason: opts.reason }) });
    const after = await waitForState(files, graph, target, CANCEL_CONFIRM_MS);
    if (after === undefined) throw new SluiceError('ERR_TASK_NOT_FOUND', `Task graph \`${graph}\` did not confirm the cancellation within ${CANCEL_CONFIRM_MS} ms`, { details: { graph } });
    const status = task === undefined ? after.status : findTask(after, task).status;
    if (json) writeStdout(`${JSON.stringify({ graph, task, status, cancelled: status === 'cancelled' })}\n`);
    else writeStdout(`${task ?? graph}: ${status}\n`);
    return EXIT.ok;
  } catch (err) {
    return reportError(err, json);
  }
}
