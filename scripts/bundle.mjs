// Bundles three module graphs into one CommonJS file each, after tsc (`npm run build`):
//  - the guest's worker (dist/src/guest/worker.js and the ~30 modules it imports) into
//    dist/src/guest/worker.bundle.cjs. A fresh worker thread loads its ES modules one by one, and
//    for the guest's thread that was ≈ 35 ms of every `ferry run`, `ferry restore` and unprepared
//    restore's start (the thread is ready at ≈ 68 ms instead of ≈ 105 ms after the process starts).
//  - the CLI (dist/src/cli/main.js, its commands and what they import, commander included) into
//    dist/src/cli/main.bundle.cjs, which bin/ferry.js loads with require(): the modules of
//    `ferry restore` and the snapshot layer one by one took 40-55 ms of the main thread.
//  - what bin/ferry.js needs first (dist/src/cli/launch.js: the fast path, the spare thread's start)
//    into dist/src/cli/launch.bundle.cjs: bin/ferry.js is CommonJS too, so `ferry run` starts the
//    guest's thread without waiting for Node's ES loader (≈ 10 ms sooner, 2026-12-07).
// CommonJS rather than one ES module: an ES module's imports are all loaded before any of it runs,
// so the one-file CLI loaded every Node built-in any command uses (tls, http, zlib, vm, readline,
// child_process, ...: 35-45 ms of a `ferry run`'s main thread on these machines), where CommonJS
// requires each where its module is first initialised. The CLI bundle went from 55-95 ms to
// 37-55 ms of the main thread (2026-12-07), and a thread starts a CommonJS script 6-9 ms sooner
// than an ES one. bin/ferry.js loads the CLI bundle with require(), not import(): import() of a
// CommonJS file first scans all of it for its exports' names (≈ 150 ms for 0.8 MB).
// Each bundle is used only while it is no older than the module it was made from
// (src/guest/spare-worker.ts, bundleIfFresh): tsc rewrites every output, so a tsc without this step
// is never served stale.
import { build } from 'esbuild';
import { spawnSync } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, relative, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));

/** The worker bundle's code cache made under Ferry's V8 flags (src/guest/tiering.ts). */
const FLAGGED_VARIANT = 'flagged';

/** The bundle's own URL, for the modules in it that find files relative to their own. */
const BUNDLE_URL = '__ferryBundleUrl';

/**
 * Modules find their workers, addons and data files relative to their own file: inside a bundle
 * each keeps its own URL (relative to the bundle's folder), in place of import.meta.url, which
 * CommonJS does not have.
 */
function ownUrls(outfile) {
  const outDir = resolve(root, dirname(outfile));
  const fromBundle = (file) => {
    const r = relative(outDir, file).split(sep).join('/');
    return r.startsWith('.') ? r : `./${r}`;
  };
  return {
    name: 'ferry-own-urls',
    setup(b) {
      b.onLoad({ filter: /[\\/]dist[\\/]src[\\/].*\.js$/ }, async (args) => {
        const text = await readFile(args.path, 'utf8');
        if (!text.includes('import.meta.url')) return undefined;
        const own = `new URL(${JSON.stringify(fromBundle(args.path))}, ${BUNDLE_URL}).href`;
        return { contents: text.replaceAll('import.meta.url', own), loader: 'js', resolveDir: dirname(args.path) };
      });
    },
  };
}

async function bundle(entry, outfile, external = []) {
  await build({
    absWorkingDir: root,
    bundle: true,
    format: 'cjs',
    platform: 'node',
    target: 'node20',
    // The addons are found at run time (src/sys/native.ts walks up to build/Release).
    external: ['*.node', ...external],
    logLevel: 'warning',
    entryPoints: [entry],
    outfile,
    plugins: [ownUrls(outfile)],
    banner: { js: `const ${BUNDLE_URL} = require('node:url').pathToFileURL(__filename).href;` },
  });
}

await bundle('dist/src/guest/worker.js', 'dist/src/guest/worker.bundle.cjs');
// The spare threads' registry (src/sys/spare-threads.ts) is kept on globalThis, so the bundle's copy
// of it finds the spares bin/ferry.js started with its own.
await bundle('dist/src/cli/main.js', 'dist/src/cli/main.bundle.cjs');
// What bin/ferry.js loads first (src/cli/launch.ts). The control commands' actions stay out of it:
// only the fast path loads them, when it runs one.
await bundle('dist/src/cli/launch.js', 'dist/src/cli/launch.bundle.cjs', ['./control-actions.js']);

// The guest's thread starts from a file that loads its bundle with a code cache (bin/code-cache.cjs):
// the one made under Ferry's V8 flags when the thread was started after they were set.
const { ferryV8Flags } = await import(pathToFileURL(resolve(root, 'dist/src/guest/tiering.js')).href);
const { FLAGGED_CODE_CACHE_HINT: FLAGGED_HINT } = await import(pathToFileURL(resolve(root, 'dist/src/guest/spare-worker.js')).href);
await writeFile(resolve(root, 'dist/src/guest/worker.boot.cjs'), `'use strict';
// The guest's thread's first script (src/guest/spare-worker.ts): its bundle, with a V8 code cache
// (bin/code-cache.cjs). Written by scripts/bundle.mjs.
const { workerData } = require('node:worker_threads');
const flagged = typeof workerData === 'object' && workerData !== null && workerData.${FLAGGED_HINT} === true;
require('../../../bin/code-cache.cjs').requireBundle(require('node:path').join(__dirname, 'worker.bundle.cjs'), flagged ? '${FLAGGED_VARIANT}' : null);
`);
// Every function of the two big bundles compiled ahead, each in a process of its own: one with no V8
// flag set, as a process loads them first, and the worker's again under Ferry's flags.
const CODE_CACHE = resolve(root, 'bin/code-cache.cjs');
for (const args of [
  [resolve(root, 'dist/src/guest/worker.bundle.cjs'), resolve(root, 'dist/src/cli/main.bundle.cjs')],
  ['--flags', ferryV8Flags({}, []), '--variant', FLAGGED_VARIANT, resolve(root, 'dist/src/guest/worker.bundle.cjs')],
]) {
  const made = spawnSync(process.execPath, [CODE_CACHE, ...args], { stdio: 'inherit' });
  if (made.status !== 0) throw new Error(`making the bundles' code caches failed (${made.status ?? made.signal})`);
}
