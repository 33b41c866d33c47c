/** `sluice plugins ls`: what the plugins folder holds, and what failed to load and why. */
import type { Command } from 'commander';
import { Sluice } from '../host.js';
import { CLI_DEFAULTS, EXIT, reportError, writeStdout } from './common.js';

export function register(program: Command): void {
  program
    .command('plugins')
    .description('List the plugins in a folder and their actions')
    .option('--plugins <dir>', 'plugins folder', CLI_DEFAULTS.plugins)
    .option('--json', 'JSON output')
    .action(async (opts: { plugins: string; json?: boolean }) => {
      let host: Sluice | undefined;
      try {
        host = await Sluice.open({ plugins: opts.plugins, logger: false });
        const plugins = host.plugins();
        const problems = host.pluginProblems().map((p) => ({ path: p.path, code: p.error.code, message: p.error.message }));
        if (opts.json === true) writeStdout(`${JSON.stringify({ plugins, problems }, null, 2)}\n`);
        else {
          for (const p of plugins) {
            writeStdout(`${p.name}@${p.version} [${p.sandbox}]${p.description === undefined ? '' : ` ${p.description}`}\n`);
            for (const [name, a] of Object.entries(p.actions)) writeStdout(`  ${name} (${a.kind})${a.description === undefined ? '' : `: ${a.description}`}\n`);
          }
          for (const p of problems) process.stderr.write(`sluice: ${p.code}: ${p.message}\n`);
        }
        process.exitCode = problems.length > 0 ? EXIT.failed : EXIT.ok;
      } catch (err) {
        process.exitCode = reportError(err, opts.json === true);
      } finally {
        await host?.close();
      }
    });
}
