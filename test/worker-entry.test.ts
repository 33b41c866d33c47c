/**
 * A worker thread terminated while it loads the sandbox module must not take the host
 * down. With Piscina pointed at the ES module itself, its `require()` goes through
 * Node's require(esm) path, which aborts the whole process (a fatal error in
 * `ModuleWrap::InstantiateSync`) when the thread is terminated mid-load: here within a
 * few hundred start-and-terminate rounds, and once in CI as a hard stop's replacement
 * thread met the host's close. The rounds run in a child process, so a regression is a
 * failed test, not a crashed test file. It is a race: against the old entry this test
 * failed (SIGABRT) in two runs of three; it has not failed against the CommonJS entry.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WORKER_ENTRY } from '../host/sandbox/worker-pool.js';
import { runNode } from './helpers.js';

const PISCINA = import.meta.resolve('piscina');
const ROUNDS = 150;

test('worker threads terminated while they load the sandbox never abort the host process', async () => {
  const script = `
    const { Piscina } = await import(${JSON.stringify(PISCINA)});
    for (let i = 0; i < ${ROUNDS}; i++) {
      const pool = new Piscina({ filename: ${JSON.stringify(WORKER_ENTRY)}, minThreads: 2, maxThreads: 2, resourceLimits: { maxOldGenerationSizeMb: 64, maxYoungGenerationSizeMb: 16 } });
      await new Promise((r) => setTimeout(r, 20 + Math.random() * 60));
      for (const t of pool.threads) t.terminate();
      await pool.destroy().catch(() => {});
    }
    console.log('survived');`;
  const { code, signal, stdout, stderr } = await runNode(['--input-type=module', '-e', script], 120_000);
  assert.equal(signal, null, `the process died by ${signal}: ${stderr.slice(0, 400)}`);
  assert.equal(code, 0, stderr.slice(0, 400));
  assert.equal(stdout.trim(), 'survived');
});
