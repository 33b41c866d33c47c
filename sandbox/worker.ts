/**
 * The Piscina worker entry. One task runs a whole stream over its own MessagePort
 * (a Piscina task round trip costs 25-65 µs here, so never a task per chunk); a
 * `describe` task loads a plugin and reports its manifest and actions.
 *
 * A worker runs one task at a time, so a stream owns its thread while it runs: the
 * host measures the thread's CPU from outside (event-loop utilisation) and a hard
 * stop terminates the thread without touching any other stream.
 */
import { receiveMessageOnPort, threadId, type MessagePort } from 'node:worker_threads';
import { pathToFileURL } from 'node:url';
import { SluiceError, toWireError, type WireError } from '../protocol/errors.js';
import { parseStartSpec, parseToSandbox, type ActionKind, type FromSandbox, type ToSandbox } from '../protocol/messages.js';
import { StreamDriver } from './driver.js';
import { actionKinds, manifestData, readPluginModule, type LoadedPlugin } from './plugin-module.js';

export interface DescribeTask {
  kind: 'describe';
  modulePath: string;
}

export type DescribeResult = { ok: true; description: { manifest: unknown; actions: Record<string, ActionKind> } } | { ok: false; error: WireError };

export interface StreamTask {
  kind: 'stream';
  modulePath: string;
  spec: unknown;
  port: MessagePort;
}

/** First message on a stream's port, before any FromSandbox: lets the host find this thread. */
export interface WorkerHello {
  type: 'hello';
  threadId: number;
}

// Bundles are content-addressed, so a path always means the same code: cache per thread.
const loaded = new Map<string, Promise<LoadedPlugin>>();

function load(modulePath: string): Promise<LoadedPlugin> {
  let p = loaded.get(modulePath);
  if (p === undefined) {
    p = import(pathToFileURL(modulePath).href).then(
      (mod: Record<string, unknown>) => readPluginModule(mod),
      (err: unknown) => {
        loaded.delete(modulePath);
        throw new SluiceError('ERR_PLUGIN_LOAD', `Plugin module failed to load: ${(err as Error)?.message ?? String(err)}`, { cause: err });
      },
    );
    loaded.set(modulePath, p);
  }
  return p;
}

export default async function runTask(task: DescribeTask | StreamTask): Promise<unknown> {
  if (task.kind === 'describe') {
    // Errors travel as data: structured clone would drop their code.
    try {
      const plugin = await load(task.modulePath);
      return { ok: true, description: { manifest: manifestData(plugin.manifest), actions: actionKinds(plugin.actions) } };
    } catch (err) {
      return { ok: false, error: toWireError(err, false, 'ERR_PLUGIN_LOAD') };
    }
  }
  const { port } = task;
  const send = (msg: FromSandbox | WorkerHello, transfer?: ArrayBuffer[]): void => port.postMessage(msg, transfer);
  send({ type: 'hello', threadId });
  try {
    const spec = parseStartSpec(task.spec);
    const plugin = await load(task.modulePath);
    // Every host message is parsed here, whether it comes as an event or is polled.
    const poll = (): ToSandbox | undefined => {
      const queued = receiveMessageOnPort(port);
      return queued === undefined ? undefined : parseToSandbox(queued.message);
    };
    const driver = new StreamDriver(plugin.actions, spec, { send, later: setImmediate, poll });
    port.on('message', (data: unknown) => {
      try {
        driver.onMessage(parseToSandbox(data));
      } catch (err) {
        send({ type: 'error', error: toWireError(err, false, 'ERR_PROTOCOL') });
      }
    });
    await driver.run();
  } catch (err) {
    send({ type: 'error', error: toWireError(err, false, 'ERR_PLUGIN_LOAD') });
  }
  // No port.close() here: it can drop the final message still in flight. The host
  // closes its end once that message has arrived.
  return null;
}
