#!/usr/bin/env node
// The `ferry` command: a thin launcher for the compiled CLI in dist/. The control commands'
// common shapes take a fast path that loads neither commander nor anything heavy
// (src/cli/fast-path.ts); everything else goes to the full program, loaded only then.
import { fastPath } from '../dist/src/cli/fast-path.js';

const argv = process.argv.slice(2);
const fast = fastPath(argv);
const run = fast ? fast() : import('../dist/src/cli/main.js').then(({ main }) => main(argv));

// Exit explicitly once the command is done: a guest thread stopped while blocked on a memory hole
// (a destination shut down in postcopy) never returns to JavaScript and would keep the process
// alive. stdout and stderr are synchronous on Linux, so nothing written is lost.
// Ferry's own messages must never take a guest down: a stdout or stderr whose reader went away
// (EPIPE) or whose file cannot be written (ENOSPC, EIO) makes Node emit 'error' on the stream, which
// without a listener ends the process. Those messages are lost; the guest and the command go on.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);

run.then(
  (code) => process.exit(code),
  (err) => {
    process.stderr.write(`ferry: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
