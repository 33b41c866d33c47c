/**
 * `sluice run` as a user runs it: the real CLI (package.json "bin") in a child process,
 * judged by its stdout lines, stderr and exit status.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test, type TestContext } from 'node:test';
import { CONFORMANCE, fixture, ndjson, runNode, type NodeRun } from './helpers.js';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const pkg = createRequire(import.meta.url)('../../package.json') as { bin: { sluice: string } };
const CLI = join(ROOT, pkg.bin.sluice);
/** Declared `sandbox: 'worker'`: failAfter, where. */
const WORKER_PLUGIN = fixture('plugins/cli-run.ts');
/** forever, whose `finally` writes a marker file. */
const FINALLY_PLUGIN = fixture('plugins/cli-finally.ts');
/** Long enough for a cold isolate sandbox and a first bundle on a busy 2-core machine. */
const RUN_TIMEOUT_MS = 45_000;
const TEST_TIMEOUT_MS = 120_000;

function spawnCli(t: TestContext, args: string[], cwd = ROOT): ChildProcessWithoutNullStreams {
  const child = spawn(process.execPath, ['--no-node-snapshot', CLI, ...args], { cwd, stdio: 'pipe' });
  child.stdin.end();
  t.after(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  return child;
}

/** Run `sluice <args>` to its end; past RUN_TIMEOUT_MS it is killed and the test fails. */
function runCli(args: string[], cwd = ROOT): Promise<NodeRun> {
  return runNode(['--no-node-snapshot', CLI, ...args], RUN_TIMEOUT_MS, cwd);
}

/** A folder with no `plugins` subfolder, removed after the test. */
async function emptyDir(t: TestContext): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'sluice-cli-run-'));
  t.after(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

function lastLine(stdout: string): Record<string, unknown> {
  return ndjson(stdout).at(-1)!;
}

test('--json prints exactly one {seq,data} line per chunk, then {done,chunks}, exit 0', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const r = await runCli(['run', CONFORMANCE, 'count', '--params', '{"to":3}', '--json']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, '{"seq":0,"data":{"i":0}}\n{"seq":1,"data":{"i":1}}\n{"seq":2,"data":{"i":2}}\n{"done":true,"chunks":3}\n');
  assert.equal(r.stderr, '');
});

test('human output prints each chunk on its own line and no progress bar off a terminal', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const r = await runCli(['run', CONFORMANCE, 'syncCount', '--params', '{"to":3}']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, '0\n1\n2\n');
  assert.equal(r.stderr, '');
});

test('the default ./plugins folder is optional; a --plugins folder the user named must exist', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const cwd = await emptyDir(t);
  const byPath = await runCli(['run', CONFORMANCE, 'count', '--params', '{"to":2}', '--json'], cwd);
  assert.equal(byPath.code, 0, byPath.stdout + byPath.stderr);
  assert.deepEqual(lastLine(byPath.stdout), { done: true, chunks: 2 });

  const named = await runCli(['run', CONFORMANCE, 'count', '--params', '{"to":2}', '--plugins', './missing', '--json'], cwd);
  assert.equal(named.code, 1);
  const { error } = lastLine(named.stdout) as { error: { code: string; message: string } };
  assert.equal(error.code, 'ERR_CONFIG_INVALID');
  assert.match(error.message, /missing cannot be read/);

  // Where ./plugins exists it is still the default: plugins are found by name.
  const byName = await runCli(['run', 'records', 'transform', '--params', '{"rows":2}', '--json'], ROOT);
  assert.equal(byName.code, 0, byName.stdout + byName.stderr);
  assert.deepEqual(lastLine(byName.stdout), { done: true, chunks: 2 });
});

for (const json of [true, false]) {
  test(`a reader closing stdout (| head -1) cancels the stream: its finally runs, exit 141, nothing on stderr (${json ? '--json' : 'human'})`, { timeout: TEST_TIMEOUT_MS }, async (t) => {
    const dir = await emptyDir(t);
    const marker = join(dir, 'finally');
    const child = spawnCli(t, ['run', FINALLY_PLUGIN, 'forever', '--params', JSON.stringify({ marker }), ...(json ? ['--json'] : [])]);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
    const first = await new Promise<string>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no chunk within ${RUN_TIMEOUT_MS} ms; stderr: ${stderr}`)), RUN_TIMEOUT_MS);
      let out = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const nl = out.indexOf('\n');
        if (nl < 0) return;
        clearTimeout(timer);
        // What `head -1` does: take a line, close the pipe.
        child.stdout.destroy();
        resolve(out.slice(0, nl));
      });
    });
    assert.deepEqual(json ? JSON.parse(first) : first, json ? { seq: 0, data: 0 } : '0');
    const code = await Promise.race([exited, new Promise<'hung'>((r) => setTimeout(() => r('hung'), RUN_TIMEOUT_MS).unref())]);
    assert.equal(code, 141, `stderr: ${stderr}`);
    assert.equal(stderr, '');
    assert.match(await readFile(marker, 'utf8'), /^finally after \d+$/);
  });
}

test('--limit-memory-mb below the minimum is a usage error naming the flag typed, exit 2', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  for (const flag of ['--limit-memory-mb', '--limit-memoryMb']) {
    const r = await runCli(['run', CONFORMANCE, 'count', '--params', '{"to":2}', flag, '4', '--json']);
    assert.equal(r.code, 2, r.stdout + r.stderr);
    const all = ndjson(r.stdout);
    assert.equal(all.length, 1, 'no chunk ran');
    const { error } = all[0] as { error: { code: string; message: string } };
    assert.equal(error.code, 'ERR_CLI_USAGE');
    assert.ok(error.message.includes(`'${flag} <n>'`), error.message);
    assert.ok(error.message.includes("'4'"), error.message);
    assert.doesNotMatch(error.message, /options\.limits/);
  }
});

test('a plugin that throws ends --json with {"error":{code,message}} after its chunks, exit 1', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const r = await runCli(['run', WORKER_PLUGIN, 'failAfter', '--params', '{"after":2}', '--json']);
  assert.equal(r.code, 1, r.stderr);
  assert.deepEqual(ndjson(r.stdout), [{ seq: 0, data: 0 }, { seq: 1, data: 1 }, { error: { code: 'ERR_PLUGIN_THREW', message: 'broke after 2' } }]);
});

test('--limit-max-chunks 3 stops the stream after 3 chunks with ERR_LIMIT_CHUNKS, exit 1', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const r = await runCli(['run', CONFORMANCE, 'count', '--params', '{"to":10}', '--limit-max-chunks', '3', '--json']);
  assert.equal(r.code, 1, r.stderr);
  const all = ndjson(r.stdout);
  assert.deepEqual(all.slice(0, 3), [0, 1, 2].map((i) => ({ seq: i, data: { i } })));
  assert.equal(all.length, 4);
  assert.equal((all[3] as { error: { code: string } }).error.code, 'ERR_LIMIT_CHUNKS');
});

test('--sandbox isolate runs a plugin its manifest puts in a worker in an isolate instead', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const seen: Record<string, unknown> = {};
  for (const [name, flags] of [['manifest', []], ['isolate', ['--sandbox', 'isolate']]] as const) {
    const r = await runCli(['run', WORKER_PLUGIN, 'where', ...flags, '--json']);
    assert.equal(r.code, 0, r.stdout + r.stderr);
    const all = ndjson(r.stdout);
    assert.deepEqual(all.at(-1), { done: true, chunks: 1 });
    seen[name] = (all[0] as { data: { process: string } }).data.process;
  }
  // Isolates have no `process` global; workers do.
  assert.deepEqual(seen, { manifest: 'object', isolate: 'undefined' });
});

test('bad arguments are ERR_CLI_USAGE naming the flag, exit 2, in both output modes', { timeout: TEST_TIMEOUT_MS }, async (t) => {
  const cwd = await emptyDir(t);
  const cases: { args: string[]; names: string }[] = [
    { args: ['--bogus'], names: '--bogus' },
    { args: ['--params', '{bad'], names: '--params' },
    { args: ['--params-file', join(cwd, 'absent.json')], names: '--params-file' },
    { args: ['--params', '{}', '--params-file', join(cwd, 'absent.json')], names: '--params-file' },
    { args: ['--limit-max-chunks', '-1'], names: '--limit-max-chunks' },
    { args: ['--sandbox', 'vm'], names: '--sandbox' },
  ];
  for (const { args, names } of cases) {
    const json = await runCli(['run', CONFORMANCE, 'count', ...args, '--json'], cwd);
    assert.equal(json.code, 2, `${args.join(' ')}: ${json.stdout}${json.stderr}`);
    const all = ndjson(json.stdout);
    assert.equal(all.length, 1, json.stdout);
    const { error } = all[0] as { error: { code: string; message: string } };
    assert.equal(error.code, 'ERR_CLI_USAGE', args.join(' '));
    assert.ok(error.message.includes(names), `${args.join(' ')}: ${error.message}`);

    const human = await runCli(['run', CONFORMANCE, 'count', ...args], cwd);
    assert.equal(human.code, 2, args.join(' '));
    assert.equal(human.stdout, '');
    assert.match(human.stderr, /^sluice: ERR_CLI_USAGE: .+\n$/);
  }
});
