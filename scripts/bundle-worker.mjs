// Bundles the guest's worker (dist/src/guest/worker.js and the ~30 modules it imports) into one
// file, dist/src/guest/worker.bundle.js. A fresh worker thread loads its ES modules one by one,
// and for the guest's thread that was ≈ 35 ms of every `ferry run`, `ferry restore` and unprepared
// restore's start (the thread is ready at ≈ 68 ms instead of ≈ 105 ms after the process starts).
// Run by `npm run build` after tsc; src/guest/spare-worker.ts (guestWorkerScript) uses the bundle only
// while it is no older than the compiled worker.js (tsc rewrites every output), so a tsc without this
// step is never served stale.
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

const root = fileURLToPath(new URL('..', import.meta.url));
await build({
  absWorkingDir: root,
  entryPoints: ['dist/src/guest/worker.js'],
  outfile: 'dist/src/guest/worker.bundle.js',
  bundle: true,
  format: 'esm',
  platform: 'node',
  target: 'node20',
  // The addons are found at run time (src/sys/native.ts walks up to build/Release).
  external: ['*.node'],
  logLevel: 'warning',
});
