/** Runs `sluice serve` / `sluice token` from their register() functions (main.ts wiring is separate). */
import { Command } from 'commander';
import { register as registerServe } from '../host/cli/serve.js';
import { register as registerToken } from '../host/cli/token.js';

const program = new Command('sluice').exitOverride();
registerServe(program);
registerToken(program);
await program.parseAsync(process.argv);
