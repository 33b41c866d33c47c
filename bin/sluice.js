#!/usr/bin/env node
// The CLI is compiled TypeScript; `npm install` builds it (the prepare script).
import { main } from '../dist/host/cli/main.js';

await main();
