// Bundles two module graphs into one file each, after tsc (`npm run build`):
//  - the guest's worker (dist/src/guest/worker.js and the ~30 modules it imports) into
//    dist/src/guest/worker.bundle.js. A fresh worker thread loads its ES modules one by one, and
//    for the guest's thread that was ≈ 35 ms of every `ferry run`, `ferry restore` and unprepared
//    restore's start (the thread is ready at ≈ 68 ms instead of ≈ 105 ms after the process starts).
//  - the CLI (dist/src/cli/main.js, its commands and what they import, commander included) into
//    dist/src/cli/main.bundle.js, which bin/ferry.js loads: the modules of `ferry restore` and the
//    snapshot layer one by one took 40-55 ms of the main thread, the bundle 25 ms (a benchmark
//    running beside both).
// Each bundle is used only while it is no older than the module it was made from
// (src/guest/spare-worker.ts, bundleIfFresh): tsc rewrites every output, so a tsc without this step
// is never served stale.
import { build } from 'esbuild';
import { readFile } from 'node:fs/promises';
import { dirname, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
const common = {
  absWorkingDir: root,
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // The addons are found at run time (src/sys/native.ts walks up to build/Release).
  external: ['*.node'],
  logLevel: 'warning',
};

await build({ ...common, entryPoints: ['dist/src/guest/worker.js'], outfile: 'dist/src/guest/worker.bundle.js' });

const CLI_OUT = 'dist/src/cli/main.bundle.js';
const cliDir = resolve(root, dirname(CLI_OUT));
/** A path from the CLI bundle's folder to `file`, as an import specifier. */
const fromBundle = (file) => {
  const r = relative(cliDir, file).split(sep).join('/');
  return r.startsWith('.') ? r : `./${r}`;
};
// What stays outside the CLI bundle, imported from its own file: the spare threads' registry, which
// bin/ferry.js fills before the bundle loads (one copy in each would never meet).
const SHARED = ['dist/src/guest/spare-worker.js', 'dist/src/sys/spare-threads.js'].map((f) => resolve(root, f));
const cliPlugin = {
  name: 'ferry-cli',
  setup(b) {
    b.onResolve({ filter: /^\.\.?\// }, (args) => {
      const file = resolve(args.resolveDir, args.path);
      return SHARED.includes(file) ? { path: fromBundle(file), external: true } : undefined;
    });
    // Modules find their workers, addons and data files relative to their own file: each keeps its
    // own URL inside the bundle.
    b.onLoad({ filter: /[\\/]dist[\\/]src[\\/].*\.js$/ }, async (args) => {
      const text = await readFile(args.path, 'utf8');
      if (!text.includes('import.meta.url')) return undefined;
      const own = `new URL(${JSON.stringify(fromBundle(args.path))}, import.meta.url).href`;
      return { contents: text.replaceAll('import.meta.url', own), loader: 'js', resolveDir: dirname(args.path) };
    });
  },
};
await build({
  ...common,
  entryPoints: ['dist/src/cli/main.js'],
  outfile: CLI_OUT,
  plugins: [cliPlugin],
  // commander is CommonJS: its require() of node's modules needs a real require.
  banner: { js: "import { createRequire as ferryCreateRequire } from 'node:module'; const require = ferryCreateRequire(import.meta.url);" },
});
