#!/usr/bin/env node
// The `ferry` command: a thin launcher for the compiled CLI in dist/.
import { main } from '../dist/src/cli/main.js';
import { native } from '../dist/src/sys/native.js';

// Exit explicitly once the command is done: a guest thread stopped while blocked on a memory hole
// (a destination shut down in postcopy) never returns to JavaScript and would keep the process
// alive. stdout and stderr are synchronous on Linux (files, pipes and terminals), so nothing
// written is lost. The exit is _exit(2) (native.exitNow), not process.exit(): the latter joins
// V8's worker threads, which first finish the compile jobs they are running, and for a big guest
// that is TurboFan compiling its largest functions for nothing (SQLite's shell: 0.3-1 s after the
// guest has ended). Under --cpu-prof / --prof the ordinary exit is kept, so profiles get written.
const profiling = process.execArgv.some((a) => a.startsWith('--cpu-prof') || a.startsWith('--prof') || a.startsWith('--heap-prof'));
const exit = (code) => (profiling || process.env.FERRY_ORDINARY_EXIT === '1' ? process.exit(code) : native.exitNow(code));
main(process.argv.slice(2)).then(
  (code) => exit(code),
  (err) => {
    process.stderr.write(`ferry: ${err instanceof Error ? err.message : String(err)}\n`);
    exit(1);
  },
);
