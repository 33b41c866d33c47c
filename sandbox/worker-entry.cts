/**
 * The file Piscina starts: a CommonJS module that loads the ES module worker
 * (sandbox/worker.ts) with `import()`.
 *
 * Piscina loads its worker file with `require()` first. On Node 20.19+ `require()` of an
 * ES module goes through a generated "facade" module, and in one CI run that path
 * failed a native assertion while a worker thread started
 * (`ModuleWrap::CreateRequiredModuleFacade`): SIGABRT, the whole host process gone with
 * every stream on it. `require()` of this file loads plain CommonJS, and the worker
 * module comes through `import()`, the path Piscina takes on every other Node version.
 */
import type { DescribeTask, StreamTask } from './worker.js';

// Loaded as the thread starts, as Piscina would preload the handler; a failure surfaces
// in the first task that awaits it, not as an unhandled rejection that ends the thread.
const worker = import('./worker.js');
worker.catch(() => undefined);

export = async function runTask(task: DescribeTask | StreamTask): Promise<unknown> {
  return (await worker).default(task);
};
