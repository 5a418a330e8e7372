#!/usr/bin/env node
// The `ferry` command: a thin launcher for the compiled CLI in dist/. The control commands' common
// shapes take a fast path that loads neither commander nor anything heavy (src/cli/fast-path.ts);
// everything else goes to the full program, loaded only then.
// CommonJS (bin/package.json), like the bundles it loads: an ES entry keeps everything, the guest
// thread's start included, waiting for Node's ES loader to set itself up and read the entry's
// imports (15-25 ms here).
'use strict';
const { join } = require('node:path');
const { pathToFileURL } = require('node:url');
const { cliCodeCacheWanted, noOlderThan, requireBundle } = require('./code-cache.cjs');

const DIST = join(__dirname, '../dist/src');

/**
 * `bundle` if it is no older than `plain`, what tsc made and it was made from. The rule of
 * spare-worker.ts's bundleIfFresh, which this file cannot use before it has picked a bundle to load.
 */
const bundleIfFresh = (bundle, plain) => (noOlderThan(bundle, plain) ? bundle : plain);

/**
 * Loads `plain` (an ES module of dist/src/) from its CommonJS bundle while that is fresh, else as it
 * is (FERRY_CLI_BUNDLE=0: always as it is); `cached`: the bundle with its code cache. A promise
 * either way, a failure to load included.
 */
function load(bundle, plain, cached = false) {
  return new Promise((resolve) => {
    const file = process.env.FERRY_CLI_BUNDLE === '0' ? join(DIST, plain) : bundleIfFresh(join(DIST, bundle), join(DIST, plain));
    resolve(!file.endsWith('.cjs') ? import(pathToFileURL(file).href) : cached ? requireBundle(file) : require(file));
  });
}

const argv = process.argv.slice(2);
// A guest runs on a worker thread of its own, and starting one takes about as long as loading the
// CLI: `ferry run` and `ferry restore` start it first thing, so it boots on the other core
// meanwhile and the guest adopts it (src/guest/spare-worker.ts). A `--help` or a usage error wastes
// a thread start, nothing more (a spare never keeps the process alive). A lazy restore's faults are
// served by a native thread, which needs no head start: its fault worker is started ahead only
// where that is turned off (FERRY_NATIVE_FAULTS=0).
const faultWorker = argv.includes('--lazy') && process.env.FERRY_NATIVE_FAULTS === '0';
const spares = argv[0] === 'run' ? ['guest'] : argv[0] === 'restore' ? (faultWorker ? ['guest', 'fault'] : ['guest']) : [];
const launch = load('cli/launch.bundle.cjs', 'cli/launch.js');
if (spares.length > 0) launch.then(({ startSpareWorker }) => spares.forEach((k) => startSpareWorker(k)), () => undefined);
// The full program from its one-file bundle (scripts/bundle.mjs), loaded with require(): ES modules
// load one by one, and the CLI's took 15-30 ms longer; import() of a CommonJS file would first scan
// all of it for the names of its exports. FERRY_CLI_BUNDLE=0 loads main.js and its modules as they are.
// With its code cache only where a switchover may come (bin/code-cache.cjs, cliCodeCacheWanted).
const program = () => load('cli/main.bundle.cjs', 'cli/main.js', cliCodeCacheWanted(argv));
/** The full program's module, once loaded: its exitNow ends the process without loading anything. */
let full = null;
let fast = null;
const run = launch.then((l) => {
  fast = l.fastPath(argv);
  return fast ? fast() : program().then((m) => (full = m).main(argv));
});

// Ferry's own messages must never take a guest down: a stdout or stderr whose reader went away
// (EPIPE) or whose file cannot be written (ENOSPC, EIO) makes Node emit 'error' on the stream, which
// without a listener ends the process. Those messages are lost; the guest and the command go on.
for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);

// Exit explicitly once the command is done: a guest thread stopped while blocked on a memory hole
// (a destination shut down in postcopy) never returns to JavaScript and would keep the process
// alive. stdout and stderr are synchronous on Linux (files, pipes and terminals), so nothing
// written is lost. The full program exits with _exit(2) (native.exitNow), not process.exit(): the
// latter joins V8's worker threads, which first finish the compile jobs they are running, and for a
// big guest that is TurboFan compiling its largest functions for nothing (SQLite's shell: 0.3-1 s
// after the guest has ended). The fast path runs no guest and keeps process.exit (it never loads
// the addon). Under --cpu-prof / --prof the ordinary exit is kept, so profiles get written.
const profiling = process.execArgv.some((a) => a.startsWith('--cpu-prof') || a.startsWith('--prof') || a.startsWith('--heap-prof'));
const exit = (code) =>
  fast || profiling || process.env.FERRY_ORDINARY_EXIT === '1'
    ? process.exit(code)
    : (full?.exitNow ?? ((c) => import(pathToFileURL(join(DIST, 'sys/native.js')).href).then(({ native }) => native.exitNow(c))))(code).catch(() => process.exit(code));
run.then(
  (code) => exit(code),
  (err) => {
    process.stderr.write(`ferry: ${err instanceof Error ? err.message : String(err)}\n`);
    exit(1);
  },
);
