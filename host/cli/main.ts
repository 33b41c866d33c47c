/**
 * The `sluice` command line. Each command lives in its own module and registers
 * itself; this file only assembles them and turns commander's usage errors into
 * coded ones (ERR_CLI_USAGE, exit status 2).
 */
import { Command, CommanderError } from 'commander';
import { createRequire } from 'node:module';
import { EXIT, reportError, usageError } from './common.js';
import { register as registerRun } from './run.js';
import { register as registerPlugins } from './plugins.js';
import { register as registerServe } from './serve.js';
import { register as registerStreams } from './streams.js';
import { register as registerTasks } from './tasks.js';
import { register as registerToken } from './token.js';

const pkg = createRequire(import.meta.url)('../../../package.json') as { version: string };

export function buildProgram(): Command {
  const program = new Command('sluice')
    .description('Run sandboxed plugins and stream their output')
    .version(pkg.version)
    .exitOverride()
    .configureOutput({ writeErr: () => undefined })
    .showHelpAfterError(false);
  registerServe(program);
  registerRun(program);
  registerStreams(program);
  registerTasks(program);
  registerToken(program);
  registerPlugins(program);
  return program;
}

/**
 * Without a listener, stdout's 'error' event (EPIPE when `| head` closes the pipe)
 * throws out of the event loop with a stack trace. The error is not lost: it stays in
 * `process.stdout.errored`, where writeStdout() finds it and turns it into the exit.
 */
function keepStdoutErrors(): void {}

export async function main(argv: string[] = process.argv): Promise<void> {
  process.stdout.on('error', keepStdoutErrors);
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help and --version are commander "errors" with exit code 0.
      if (err.exitCode === 0) return;
      const json = argv.includes('--json');
      reportError(usageError(err.message.replace(/^error: /, '')), json);
      process.exitCode = EXIT.usage;
      return;
    }
    process.exitCode = reportError(err, argv.includes('--json'));
  }
}
