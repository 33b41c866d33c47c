/**
 * The isolate sandbox pool: runs untrusted plugins in isolated-vm isolates, one per
 * stream, inside supervised child processes (sandbox/isolate/process.ts).
 *
 * Why processes: on Node 20 with isolated-vm 5 a single hostile allocation aborts the
 * whole process that hosts the isolate, and a stray `Atomics.waitAsync` can hang it. So
 * the host never hosts an isolate; it SIGKILLs and replaces a sandbox process that
 * dies or stops answering its heartbeat, and only the streams on that process fail
 * (ERR_SANDBOX_CRASHED / ERR_SANDBOX_UNRESPONSIVE, both retriable).
 *
 * Two channels share each process's IPC pipe, tagged by `t`: comlink for the control
 * plane (describe, ping, stats) and plain messages keyed by stream id for the data path
 * to the process (start, credit, cancel, kill). Stream items from the process (batches,
 * ends, errors) come in frames on a pipe of their own (sandbox/isolate/frames.ts): a
 * batch's bytes cross as they are instead of through IPC's serializer. The data path
 * never goes through comlink: it is per batch, not per call.
 */
import { fork, type ChildProcess } from 'node:child_process';
import type { Readable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import * as Comlink from 'comlink';
import { assertInteger } from '../../protocol/assert.js';
import { SluiceError, fromWireError, toWireError } from '../../protocol/errors.js';
import { parseFromSandbox, parseWireError, type StartSpec, type ToSandbox } from '../../protocol/messages.js';
import type { HostToProcess, ProcessApi, ProcessStats, ProcessToHost, DescribeOutcome } from '../../sandbox/isolate/process.js';
import { DATA_FD, FrameReader, type OutItem } from '../../sandbox/isolate/frames.js';
import type { BundledPlugin, PluginDescription, PoolStats, SandboxEvents, SandboxHandle, SandboxPool } from './types.js';

export interface IsolatePoolOptions {
  /** Sandbox processes to spread streams over. Default 1. */
  processes?: number;
  /** Streams (isolates) one process runs at once; further starts wait for a slot. Default 64. */
  maxIsolatesPerProcess?: number;
  /** How often each process is pinged. Default 1000. */
  heartbeatMs?: number;
  /** A process that has not answered a ping within this is SIGKILLed. Default 5000. */
  heartbeatTimeoutMs?: number;
  /** `describe()` gives up on a plugin that does not load within this. Default 5000. */
  describeTimeoutMs?: number;
  /** Memory limit of the throwaway isolate `describe()` loads a plugin in. Default 64. */
  describeMemoryMb?: number;
}

export const DEFAULT_ISOLATE_POOL_OPTIONS: Readonly<Required<IsolatePoolOptions>> = Object.freeze({
  processes: 1,
  maxIsolatesPerProcess: 64,
  heartbeatMs: 1000,
  heartbeatTimeoutMs: 5000,
  describeTimeoutMs: 5000,
  describeMemoryMb: 64,
});

const DEFAULT_CLOSE_TIMEOUT_MS = 5000;
/** A process that dies before saying ready is respawned after this, doubling up to the max. */
const RESPAWN_BACKOFF_MS = 100;
const RESPAWN_BACKOFF_MAX_MS = 5000;
/** Kept from a process's stderr for the crash error's details. */
const STDERR_TAIL = 4096;
const MIN_DESCRIBE_MEMORY_MB = 8;
/** A process whose IPC channel closed gets this long to exit on its own before SIGKILL. */
const DISCONNECTED_GRACE_MS = 1000;
/** Loading Node and isolated-vm takes a while on a busy machine; a process not ready after this plus `heartbeatTimeoutMs` is hung. */
const STARTUP_ALLOWANCE_MS = 3000;

const PROCESS_ENTRY = fileURLToPath(new URL('../../sandbox/isolate/process.js', import.meta.url));
/**
 * Extra Node flags for every sandbox process, space-separated, from the environment:
 * for profiling (`SLUICE_ISOLATE_EXEC_ARGV='--cpu-prof --cpu-prof-dir=/tmp/prof'`), as
 * NODE_OPTIONS refuses --cpu-prof. Read once; a profile is written when the process exits
 * on its own, which it does when the pool closes.
 */
const PROCESS_EXEC_ARGV = ['--no-node-snapshot', ...(process.env.SLUICE_ISOLATE_EXEC_ARGV ?? '').split(' ').filter((a) => a !== '')];

function parseOptions(options: IsolatePoolOptions): Required<IsolatePoolOptions> {
  if (options === null || typeof options !== 'object') {
    throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`options\` to be an object, got ${options === null ? 'null' : typeof options}`);
  }
  const o = { ...DEFAULT_ISOLATE_POOL_OPTIONS };
  for (const key of Object.keys(DEFAULT_ISOLATE_POOL_OPTIONS) as Array<keyof IsolatePoolOptions>) {
    const v = options[key];
    if (v === undefined) continue;
    assertInteger(v, key, 'ERR_INVALID_ARGUMENT', key === 'describeMemoryMb' ? MIN_DESCRIBE_MEMORY_MB : 1);
    o[key] = v;
  }
  return o;
}

type Listener = (ev: { data: unknown }) => void;

type StreamState = 'waiting' | 'running' | 'terminating' | 'done';

interface StreamRecord {
  readonly id: string;
  readonly events: SandboxEvents;
  readonly start: Extract<HostToProcess, { t: 'start' }>;
  state: StreamState;
  slot: ProcessSlot | undefined;
  /** Set by terminate(): the error exit() reports, whatever the process says. */
  reason: SluiceError | undefined;
}

/** One sandbox process and the streams on it. */
class ProcessSlot {
  readonly child: ChildProcess;
  readonly streams = new Map<string, StreamRecord>();
  readonly remote: Comlink.Remote<ProcessApi>;
  ready = false;
  /** It said ready once: its death is a crash, not a failure to start. */
  everReady = false;
  gone = false;
  /** Why the pool killed it, if it did. */
  killedFor: 'unresponsive' | 'closed' | undefined;
  pingInFlight = false;
  readonly spawnedAt = Date.now();
  stderrTail = '';
  /** Settles (never rejects) when the process has exited and its pipes closed. */
  readonly closed: Promise<void>;
  private readonly pending: HostToProcess[] = [];
  private readonly comlinkListeners = new Set<Listener>();
  private readonly readyWaiters: Array<(ok: boolean) => void> = [];

  constructor(
    readonly index: number,
    onItems: (slot: ProcessSlot, items: unknown[]) => void,
    onClose: (slot: ProcessSlot, code: number | null, signal: NodeJS.Signals | null) => void,
  ) {
    this.child = fork(PROCESS_ENTRY, [], {
      execArgv: PROCESS_EXEC_ARGV,
      serialization: 'advanced',
      // 0-2 std, 3 IPC, DATA_FD the data pipe.
      stdio: ['ignore', 'ignore', 'pipe', 'ipc', 'pipe'],
      env: { ...process.env, SLUICE_ISOLATE_PROCESS: '1' },
    });
    const data = this.child.stdio[DATA_FD] as Readable;
    const reader = new FrameReader(
      (items) => onItems(this, items),
      (err) => {
        this.stderrTail = `${this.stderrTail}\n${err.message}`.slice(-STDERR_TAIL);
        this.kill();
      },
    );
    data.on('data', (chunk: Buffer) => reader.push(chunk));
    data.on('error', () => this.kill());
    this.child.stderr?.setEncoding('utf8');
    this.child.stderr?.on('data', (s: string) => {
      this.stderrTail = (this.stderrTail + s).slice(-STDERR_TAIL);
    });
    // Send failures surface as 'close' below; without a listener they would throw.
    this.child.on('error', () => undefined);
    this.child.on('message', (msg: ProcessToHost) => {
      if (msg === null || typeof msg !== 'object') return;
      if (msg.t === 'c') {
        for (const l of [...this.comlinkListeners]) l({ data: msg.d });
        return;
      }
      if (msg.t === 'ready') {
        this.ready = true;
        this.everReady = true;
        for (const m of this.pending.splice(0)) this.child.send(m);
        for (const w of this.readyWaiters.splice(0)) w(true);
      }
    });
    // Gone = exited AND its IPC channel and data pipe closed, so every message and frame
    // it managed to send has been handled. ('close' is not emitted at all after a
    // host-side disconnect().)
    this.closed = new Promise((resolve) => {
      let exit: [number | null, NodeJS.Signals | null] | undefined;
      let disconnected = false;
      let drained = false;
      const settle = (): void => {
        if (exit === undefined || !disconnected || !drained || this.gone) return;
        this.gone = true;
        this.ready = false;
        for (const w of this.readyWaiters.splice(0)) w(false);
        resolve();
        onClose(this, exit[0], exit[1]);
      };
      this.child.once('exit', (code, signal) => {
        exit = [code, signal];
        settle();
      });
      data.once('close', () => {
        drained = true;
        settle();
      });
      this.child.once('disconnect', () => {
        disconnected = true;
        // A process without its channel cannot serve; it should be exiting already.
        if (exit === undefined) setTimeout(() => this.kill(), DISCONNECTED_GRACE_MS).unref();
        settle();
      });
    });
    const endpoint = {
      postMessage: (d: unknown) => this.send({ t: 'c', d }),
      addEventListener: (_type: string, l: unknown) => void this.comlinkListeners.add(l as Listener),
      removeEventListener: (_type: string, l: unknown) => void this.comlinkListeners.delete(l as Listener),
    } as Comlink.Endpoint;
    this.remote = Comlink.wrap<ProcessApi>(endpoint);
  }

  get pid(): number | undefined {
    return this.child.pid;
  }

  /** Queued until the process says ready; dropped once it is gone. */
  send(msg: HostToProcess): void {
    if (this.gone) return;
    if (!this.ready) {
      this.pending.push(msg);
      return;
    }
    this.child.send(msg, (err) => {
      // The channel closed under us: the 'close' handler ends the streams.
      if (err !== null && err !== undefined) this.kill();
    });
  }

  /** Resolves true once ready, false if the process died first. */
  whenReady(): Promise<boolean> {
    if (this.ready) return Promise.resolve(true);
    if (this.gone) return Promise.resolve(false);
    return new Promise((resolve) => this.readyWaiters.push(resolve));
  }

  /**
   * Run a comlink call once the process is ready, failing with ERR_SANDBOX_CRASHED when
   * the process dies first (comlink itself would wait forever), with `timeout()` when it
   * takes over `timeoutMs` (counted from ready: a process that never gets ready is the
   * heartbeat's to kill), or with the signal's reason.
   */
  async call<T>(fn: (remote: Comlink.Remote<ProcessApi>) => Promise<T>, timeoutMs: number, timeout: () => SluiceError, signal?: AbortSignal): Promise<T> {
    signal?.throwIfAborted();
    let timer: NodeJS.Timeout | undefined;
    let onAbort: (() => void) | undefined;
    const aborted = new Promise<never>((_resolve, reject) => {
      if (signal === undefined) return;
      onAbort = () => reject(signal.reason);
      signal.addEventListener('abort', onAbort, { once: true });
    });
    const died = this.closed.then((): never => {
      throw this.crashedError();
    });
    // Whichever loses the race must not surface as an unhandled rejection.
    aborted.catch(() => undefined);
    died.catch(() => undefined);
    try {
      if (!(await Promise.race([this.whenReady(), died, aborted]))) throw this.crashedError();
      return await Promise.race([
        fn(this.remote),
        died,
        aborted,
        new Promise<never>((_resolve, reject) => {
          timer = setTimeout(() => reject(timeout()), timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      if (onAbort !== undefined) signal?.removeEventListener('abort', onAbort);
    }
  }

  crashedError(): SluiceError {
    if (this.killedFor === 'unresponsive') return new SluiceError('ERR_SANDBOX_UNRESPONSIVE', `Isolate sandbox process ${this.pid} stopped answering and was killed`);
    if (this.killedFor === 'closed') return new SluiceError('ERR_HOST_CLOSED', 'Isolate pool was destroyed');
    const tail = this.stderrTail.trim().split('\n').slice(-5).join('\n');
    return new SluiceError('ERR_SANDBOX_CRASHED', `Isolate sandbox process ${this.pid} exited${tail === '' ? '' : `: ${tail.slice(-500)}`}`, {
      details: { pid: this.pid, stderr: this.stderrTail },
    });
  }

  kill(why?: 'unresponsive' | 'closed'): void {
    if (why !== undefined) this.killedFor ??= why;
    if (this.gone || this.child.exitCode !== null || this.child.signalCode !== null) return;
    this.child.kill('SIGKILL');
  }

  /** Ask a process to exit on its own: it does when its IPC channel closes. */
  disconnect(): void {
    if (!this.gone && this.child.connected) this.child.disconnect();
  }
}

/**
 * Runs isolate streams in supervised sandbox processes.
 *
 * @example
 * const pool = new IsolatePool({ processes: 2 });
 * const script = await bundleForIsolate('plugins/counter/index.ts');
 * const plugin = { id: 'counter@1', name: 'counter', modulePath: '', script };
 * const handle = await pool.start(plugin, spec, { message: (m) => console.log(m), exit: (e) => console.log('exit', e) });
 * await pool.close();
 */
export class IsolatePool implements SandboxPool {
  readonly kind = 'isolate' as const;
  readonly #options: Required<IsolatePoolOptions>;
  readonly #slots: Array<ProcessSlot | undefined>;
  readonly #waiting: StreamRecord[] = [];
  readonly #streams = new Map<string, StreamRecord>();
  #replaced = 0;
  readonly #respawnFailures: number[];
  /** Time before which a crashed slot is not respawned. */
  readonly #respawnAt: number[];
  #heartbeat: NodeJS.Timeout | undefined;
  #closing = false;
  #closePromise: Promise<void> | undefined;
  #destroyPromise: Promise<void> | undefined;
  /** Wakes close() when the last stream ends. */
  #idleWaiters: Array<() => void> = [];

  constructor(options: IsolatePoolOptions = {}) {
    this.#options = parseOptions(options);
    this.#slots = new Array<ProcessSlot | undefined>(this.#options.processes).fill(undefined);
    this.#respawnFailures = new Array<number>(this.#options.processes).fill(0);
    this.#respawnAt = new Array<number>(this.#options.processes).fill(0);
  }

  async describe(plugin: BundledPlugin, signal?: AbortSignal): Promise<PluginDescription> {
    signal?.throwIfAborted();
    this.#assertOpen();
    const slot = this.#leastLoaded();
    const { describeTimeoutMs, describeMemoryMb } = this.#options;
    // The process enforces the timeout itself; this one covers a process that hangs.
    const outcome = await slot.call<DescribeOutcome>(
      (remote) => remote.describe(plugin.script, { memoryMb: describeMemoryMb, timeoutMs: describeTimeoutMs }),
      describeTimeoutMs + this.#options.heartbeatTimeoutMs,
      () => new SluiceError('ERR_SANDBOX_UNRESPONSIVE', `Isolate sandbox process did not answer describe within ${describeTimeoutMs} ms`),
      signal,
    );
    if (!outcome.ok) throw fromWireError(parseWireError(outcome.error));
    return { manifest: outcome.manifest, actions: outcome.actions };
  }

  async start(plugin: BundledPlugin, spec: StartSpec, events: SandboxEvents): Promise<SandboxHandle> {
    this.#assertOpen();
    if (this.#streams.has(spec.streamId)) {
      throw new SluiceError('ERR_INVALID_ARGUMENT', `Expected \`spec.streamId\` to be unique among running streams, got ${JSON.stringify(spec.streamId)}`);
    }
    const rec: StreamRecord = {
      id: spec.streamId,
      events,
      start: { t: 'start', s: spec.streamId, plugin: { id: plugin.id, name: plugin.name, script: plugin.script }, spec },
      state: 'waiting',
      slot: undefined,
      reason: undefined,
    };
    this.#streams.set(rec.id, rec);
    const slot = this.#slotWithRoom();
    if (slot === undefined) this.#waiting.push(rec);
    else this.#place(rec, slot);
    return {
      send: (msg: ToSandbox) => this.#send(rec, msg),
      terminate: (reason: SluiceError) => this.#terminate(rec, reason),
    };
  }

  stats(): PoolStats {
    let sandboxes = 0;
    for (const slot of this.#slots) if (slot !== undefined && !slot.gone) sandboxes++;
    let running = 0;
    for (const rec of this.#streams.values()) if (rec.state === 'running' || rec.state === 'terminating') running++;
    return { kind: 'isolate', running, sandboxes, replaced: this.#replaced };
  }

  /** Per-process numbers from the processes themselves (isolates, heap, rss). */
  async processStats(): Promise<ProcessStats[]> {
    const live = this.#slots.filter((s): s is ProcessSlot => s !== undefined && !s.gone);
    const timeout = this.#options.heartbeatTimeoutMs;
    return Promise.all(
      live.map((slot) => slot.call((remote) => remote.stats(), timeout, () => new SluiceError('ERR_SANDBOX_UNRESPONSIVE', `Process ${slot.pid} did not answer stats`))),
    );
  }

  /** Pids of the live sandbox processes (for supervision and tests). */
  pids(): number[] {
    return this.#slots.flatMap((s) => (s !== undefined && !s.gone && s.pid !== undefined ? [s.pid] : []));
  }

  close(timeoutMs: number = DEFAULT_CLOSE_TIMEOUT_MS): Promise<void> {
    assertInteger(timeoutMs, 'timeoutMs', 'ERR_INVALID_ARGUMENT');
    this.#closePromise ??= this.#close(timeoutMs);
    return this.#closePromise;
  }

  destroy(): Promise<void> {
    this.#destroyPromise ??= this.#destroy();
    return this.#destroyPromise;
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  // ---- engine ------------------------------------------------------------------

  #assertOpen(): void {
    if (this.#closing) throw new SluiceError('ERR_HOST_CLOSED', 'Isolate pool is closed');
  }

  #spawn(index: number): ProcessSlot {
    const slot = new ProcessSlot(
      index,
      (s, items) => this.#onItems(s, items),
      (s) => this.#onProcessClose(s),
    );
    this.#slots[index] = slot;
    this.#ensureHeartbeat();
    return slot;
  }

  /** Live processes, spawning the missing ones (lazily, and not during a respawn backoff). */
  #live(): ProcessSlot[] {
    const out: ProcessSlot[] = [];
    const now = Date.now();
    for (let i = 0; i < this.#slots.length; i++) {
      const slot = this.#slots[i];
      if (slot !== undefined && !slot.gone) out.push(slot);
      else if (slot === undefined && now >= (this.#respawnAt[i] ?? 0)) out.push(this.#spawn(i));
    }
    return out;
  }

  #leastLoaded(): ProcessSlot {
    const live = this.#live();
    let best = live[0];
    for (const slot of live) if (best === undefined || slot.streams.size < best.streams.size) best = slot;
    if (best === undefined) throw new SluiceError('ERR_SANDBOX_CRASHED', 'No isolate sandbox process is running (respawning after crashes)');
    return best;
  }

  #slotWithRoom(): ProcessSlot | undefined {
    let best: ProcessSlot | undefined;
    for (const slot of this.#live()) {
      if (slot.streams.size >= this.#options.maxIsolatesPerProcess) continue;
      if (best === undefined || slot.streams.size < best.streams.size) best = slot;
    }
    return best;
  }

  #place(rec: StreamRecord, slot: ProcessSlot): void {
    rec.state = 'running';
    rec.slot = slot;
    slot.streams.set(rec.id, rec);
    slot.send(rec.start);
  }

  #send(rec: StreamRecord, msg: ToSandbox): void {
    if (rec.state === 'running') {
      rec.slot?.send({ t: 'to', s: rec.id, m: msg });
      return;
    }
    // A stream still waiting for a process slot has nothing to stop cooperatively.
    if (rec.state === 'waiting' && msg.type === 'cancel') this.#terminate(rec, new SluiceError('ERR_CANCELLED', msg.reason));
  }

  #terminate(rec: StreamRecord, reason: SluiceError): void {
    if (rec.state === 'done' || rec.state === 'terminating') return;
    if (rec.state === 'waiting') {
      const i = this.#waiting.indexOf(rec);
      if (i >= 0) this.#waiting.splice(i, 1);
      rec.reason = reason;
      // exit() follows terminate(), never inside it.
      queueMicrotask(() => this.#end(rec, reason));
      return;
    }
    rec.state = 'terminating';
    rec.reason = reason;
    // The process answers with an exit item once the isolate is disposed (or was gone).
    rec.slot?.send({ t: 'kill', s: rec.id, e: toWireError(reason, false) });
  }

  /** Deliver the stream's last event exactly once and free its slot. */
  #end(rec: StreamRecord, error: SluiceError | undefined): void {
    if (rec.state === 'done') return;
    rec.state = 'done';
    this.#streams.delete(rec.id);
    const slot = rec.slot;
    if (slot !== undefined) {
      slot.streams.delete(rec.id);
      if (!this.#closing) this.#drainWaiting();
    }
    if (this.#streams.size === 0) for (const w of this.#idleWaiters.splice(0)) w();
    rec.events.exit(error);
  }

  #drainWaiting(): void {
    while (this.#waiting.length > 0) {
      const slot = this.#slotWithRoom();
      if (slot === undefined) return;
      this.#place(this.#waiting.shift() as StreamRecord, slot);
    }
  }

  #onItems(slot: ProcessSlot, items: unknown[]): void {
    let thrown: { err: unknown } | undefined;
    for (const item of items as OutItem[]) {
      const rec = slot.streams.get(item?.s);
      if (rec === undefined || rec.state === 'done') continue;
      try {
        this.#onItem(rec, item);
      } catch (err) {
        // A consumer's listener threw: keep delivering to the other streams, then rethrow.
        thrown ??= { err };
      }
    }
    if (thrown !== undefined) throw thrown.err;
  }

  #onItem(rec: StreamRecord, item: OutItem): void {
    if ('x' in item) {
      let error: SluiceError;
      try {
        error = rec.reason ?? fromWireError(parseWireError(item.x));
      } catch (err) {
        error = err instanceof SluiceError ? err : new SluiceError('ERR_PROTOCOL', String(err));
      }
      this.#end(rec, error);
      return;
    }
    // After terminate() only the kill's answer matters.
    if (rec.state !== 'running') return;
    let parsed;
    try {
      // Packed byte chunks stay packed: HostStream copies each out as its consumer takes it.
      parsed = parseFromSandbox(item.m, { keepPacked: true });
    } catch (err) {
      this.#terminate(rec, err instanceof SluiceError ? err : new SluiceError('ERR_PROTOCOL', String(err)));
      return;
    }
    if (parsed.type === 'end' || parsed.type === 'error') {
      try {
        rec.events.message(parsed);
      } finally {
        this.#end(rec, undefined);
      }
      return;
    }
    rec.events.message(parsed);
  }

  #onProcessClose(slot: ProcessSlot): void {
    if (this.#slots[slot.index] === slot) this.#slots[slot.index] = undefined;
    const error = slot.crashedError();
    const recs = [...slot.streams.values()];
    let thrown: { err: unknown } | undefined;
    for (const rec of recs) {
      try {
        this.#end(rec, rec.reason ?? error);
      } catch (err) {
        thrown ??= { err };
      }
    }
    if (!this.#closing) {
      this.#replaced++;
      const index = slot.index;
      // A process that never got ready is failing to start: back off instead of spinning.
      const failures = slot.everReady ? 0 : (this.#respawnFailures[index] ?? 0) + 1;
      this.#respawnFailures[index] = failures;
      if (failures === 0) this.#spawn(index);
      else {
        const delay = Math.min(RESPAWN_BACKOFF_MAX_MS, RESPAWN_BACKOFF_MS * 2 ** (failures - 1));
        this.#respawnAt[index] = Date.now() + delay;
        setTimeout(() => {
          if (!this.#closing && this.#slots[index] === undefined) {
            this.#spawn(index);
            this.#drainWaiting();
          }
        }, delay).unref();
      }
      this.#drainWaiting();
    }
    if (thrown !== undefined) throw thrown.err;
  }

  #ensureHeartbeat(): void {
    if (this.#heartbeat !== undefined || this.#closing) return;
    this.#heartbeat = setInterval(() => this.#beat(), this.#options.heartbeatMs);
    this.#heartbeat.unref();
  }

  #beat(): void {
    const now = Date.now();
    for (const slot of this.#slots) {
      if (slot === undefined || slot.gone) continue;
      if (!slot.ready) {
        // Hung before it could answer a ping (or stopped): same treatment.
        if (now - slot.spawnedAt > this.#options.heartbeatTimeoutMs + STARTUP_ALLOWANCE_MS) slot.kill('unresponsive');
        continue;
      }
      if (slot.pingInFlight) continue;
      slot.pingInFlight = true;
      slot
        .call(
          (remote) => remote.ping(),
          this.#options.heartbeatTimeoutMs,
          () => new SluiceError('ERR_SANDBOX_UNRESPONSIVE', 'ping timed out'),
        )
        .then(
          () => {
            slot.pingInFlight = false;
          },
          (err: unknown) => {
            slot.pingInFlight = false;
            if (err instanceof SluiceError && err.code === 'ERR_SANDBOX_UNRESPONSIVE') slot.kill('unresponsive');
          },
        );
    }
  }

  async #close(timeoutMs: number): Promise<void> {
    this.#closing = true;
    const deadline = Date.now() + timeoutMs;
    for (const rec of this.#waiting.splice(0)) this.#end(rec, new SluiceError('ERR_HOST_CLOSED', 'Isolate pool closed before the stream started'));
    if (this.#streams.size > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(0, deadline - Date.now()));
        this.#idleWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    // Idle processes exit when their channel closes; whatever is left then gets killed.
    const slots = this.#slots.filter((s): s is ProcessSlot => s !== undefined && !s.gone);
    if (this.#streams.size === 0) {
      for (const slot of slots) slot.disconnect();
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([Promise.all(slots.map((s) => s.closed)), new Promise((r) => (timer = setTimeout(r, Math.max(0, deadline - Date.now()))))]);
      // A pending timer would keep the host's event loop alive until the deadline.
      clearTimeout(timer);
    }
    await this.destroy();
  }

  async #destroy(): Promise<void> {
    this.#closing = true;
    if (this.#heartbeat !== undefined) clearInterval(this.#heartbeat);
    for (const rec of this.#waiting.splice(0)) this.#end(rec, new SluiceError('ERR_HOST_CLOSED', 'Isolate pool was destroyed'));
    const slots = this.#slots.filter((s): s is ProcessSlot => s !== undefined);
    for (const slot of slots) slot.kill('closed');
    await Promise.all(slots.map((s) => s.closed));
  }
}
