#!/usr/bin/env node
// The `ferry` command: a thin launcher for the compiled CLI in dist/.
import { main } from '../dist/src/cli/main.js';

// Exit explicitly once the command is done: a guest thread stopped while blocked on a memory hole
// (a destination shut down in postcopy) never returns to JavaScript and would keep the process
// alive. stdout and stderr are synchronous on Linux, so nothing written is lost.
main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`ferry: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
