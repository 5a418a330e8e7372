// Guest runtime benchmarks:
//  - instrumented (Ferry: safepoints + Asyncify, shared memory, guest worker) vs uninstrumented
//    speed of the compute and memtouch guests in the same run, warm and cold (see overhead()). The reference is the ORIGINAL
//    module instantiated directly on this process's main thread with Ferry's own WASI (`new Wasi`)
//    and the module's own (non-shared) memory — so the ratio is the cost of instrumentation and
//    shared memory, not of the WASI implementation;
//  - time from an in-process `pause()` until the guest is paused (stack unwound, capture posted,
//    promise resolved), on the compute guest, over 250 pauses;
//  - time to instrument a ~2 MiB and a ~20 MiB module (generated C compiled by clang at bench
//    time), cold (empty cache dir, beside a plain `wasm-opt --asyncify -O2` process on the same
//    module) and cached (ModuleCache.load again); FERRY_BENCH_SKIP_BIG=1 skips them.
// FERRY_BENCH_GUEST_RUNS sets how many runs of each side the overhead rows take (default 5).
import { execFileSync } from 'node:child_process';
import { openSync, closeSync, readFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { percentile, median, type BenchRow } from './harness.js';
import { buildBigModule } from './fixtures/big-module.js';
import { Guest } from '../src/guest/guest.js';
import { ModuleCache } from '../src/guest/module-cache.js';
import { Wasi, WasiExit, type WasiHooks } from '../src/wasi/wasi.js';

export const title = 'guest runtime: instrumentation overhead, pause latency, instrumentation time';

const GUESTS = fileURLToPath(new URL('../../guests/build/', import.meta.url));
const WASM_OPT = fileURLToPath(new URL('../../node_modules/binaryen/bin/wasm-opt', import.meta.url));
const noPause: WasiHooks = { pauseRequested: () => false, unwind: () => { throw new Error('unexpected unwind'); } };

/** Runs the original module's _start on this thread with Ferry's WASI; returns ms. */
function runReference(module: WebAssembly.Module, args: string[], devNull: number): number {
  const wasi = new Wasi({ args, env: {}, preopens: [], stdio: { stdin: 0, stdout: devNull, stderr: 2 } }, noPause);
  const instance = new WebAssembly.Instance(module, { wasi_snapshot_preview1: wasi.imports as WebAssembly.ModuleImports });
  wasi.setMemory(instance.exports['memory'] as WebAssembly.Memory);
  const t0 = performance.now();
  try {
    (instance.exports['_start'] as () => void)();
  } catch (err) {
    if (!(err instanceof WasiExit) || err.code !== 0) throw err;
  } finally {
    wasi.close();
  }
  return performance.now() - t0;
}

/** Runs the module as a Ferry guest (cached instrumentation); returns ms from started to exit. */
async function runGuest(source: Uint8Array, args: string[], devNull: number, cache: ModuleCache): Promise<number> {
  const guest = await Guest.start({ module: source, args, stdio: { stdout: devNull }, cache });
  const t0 = performance.now();
  const exit = await guest.exited;
  const ms = performance.now() - t0;
  if (exit.reason !== 'exit' || exit.code !== 0) throw new Error(`guest ${args[0]} ended ${JSON.stringify(exit)}`);
  return ms;
}

/**
 * V8 compiles a module with Liftoff first and moves a function to TurboFan code only when it is
 * next called: a guest's `main` that loops for its whole life never leaves Liftoff on its first
 * run. Modules compiled from the same bytes share their code (and their tier-up) while one of
 * them is alive. The reference module object lives across its runs, so from its second run on it
 * runs TurboFan code; the guest's is compiled again for every Guest. To compare like with like,
 * a module of the instrumented bytes is kept alive here too, and both sides are measured twice:
 * their first runs (cold, one sample each) and the median of `runs` later runs (warm).
 */
async function overhead(name: string, args: string[], runs: number, cache: ModuleCache, devNull: number): Promise<BenchRow[]> {
  const source = readFileSync(join(GUESTS, `${name}.wasm`));
  const module = new WebAssembly.Module(source);
  const loaded = await cache.load(source); // instrument outside the measurement
  const keepAlive = new WebAssembly.Module(loaded.binary as Uint8Array<ArrayBuffer>);
  const coldRef = runReference(module, args, devNull);
  const coldInst = await runGuest(source, args, devNull, cache);
  const inst: number[] = [];
  const ref: number[] = [];
  for (let i = 0; i < runs; i++) {
    // Alternate, so background load hits both sides alike.
    ref.push(runReference(module, args, devNull));
    inst.push(await runGuest(source, args, devNull, cache));
  }
  void keepAlive;
  const mi = median(inst);
  const mr = median(ref);
  const refName = 'original module, Ferry WASI, own memory';
  return [
    {
      name: `${name}-instrumented`,
      metric: `warm, median of ${runs}`,
      value: mi,
      unit: 'ms',
      reference: { name: refName, value: mr },
      target: '<= 1.25x ref',
      met: mi <= 1.25 * mr,
      extra: { args: args.slice(1), instrumentedMs: inst, referenceMs: ref },
    },
    {
      name: `${name}-instrumented`,
      metric: 'first run (cold)',
      value: coldInst,
      unit: 'ms',
      reference: { name: `${refName}, first run`, value: coldRef },
      extra: { args: args.slice(1) },
    },
  ];
}

async function pauseLatency(cache: ModuleCache, devNull: number): Promise<BenchRow[]> {
  const source = readFileSync(join(GUESTS, 'compute.wasm'));
  const guest = await Guest.start({ module: source, args: ['compute', '--iterations', '100000000'], stdio: { stdout: devNull }, cache });
  const samples: number[] = [];
  try {
    for (let i = 0; i < 250; i++) {
      await new Promise((r) => setTimeout(r, 2)); // let it run between pauses
      const t0 = performance.now();
      await guest.pause();
      samples.push((performance.now() - t0) * 1000);
      guest.resume();
    }
  } finally {
    await guest.stop();
  }
  const sorted = [...samples].sort((a, b) => a - b);
  const p99 = percentile(sorted, 99);
  return [
    { name: 'pause-to-paused', metric: 'p50', value: percentile(sorted, 50), unit: 'us', extra: { pauses: samples.length } },
    { name: 'pause-to-paused', metric: 'p99', value: p99, unit: 'us', target: '<= 1000 us', met: p99 <= 1000 },
    { name: 'pause-to-paused', metric: 'max', value: sorted[sorted.length - 1]!, unit: 'us' },
  ];
}

/**
 * Cold instrumentation of a generated module against plain `wasm-opt --asyncify -O2` (binaryen's
 * own CLI, a process) on the same module in the same run (issue 13: ≤ 1.5×), and the cached load.
 * `functions` sets the size (≈ 5 KiB of code each): 390 ≈ 2 MiB, 3900 ≈ 20 MiB.
 */
async function instrumentTime(label: string, functions: number): Promise<BenchRow[]> {
  const big = buildBigModule(functions);
  const source = readFileSync(big.path);
  const asyncified = `${big.path}.asyncify.wasm`;
  let t0 = performance.now();
  execFileSync(process.execPath, [WASM_OPT, big.path, '--asyncify', '-O2', '-o', asyncified], { stdio: 'ignore' });
  const asyncifyMs = performance.now() - t0;
  const cacheDir = mkdtempSync(join(tmpdir(), 'ferry-bench-cache-'));
  t0 = performance.now();
  const cold = await new ModuleCache(cacheDir).load(source);
  const coldMs = performance.now() - t0;
  if (cold.fromCache) throw new Error('cold load came from the cache');
  t0 = performance.now();
  // Another instance: one ModuleCache answers the same bytes loaded twice with the same promise.
  const warm = await new ModuleCache(cacheDir).load(source);
  const warmMs = performance.now() - t0;
  if (!warm.fromCache) throw new Error('second load was not a cache hit');
  const context = { moduleBytes: big.bytes, instrumentedBytes: cold.binary.length, asyncifiedBytes: readFileSync(asyncified).length };
  return [
    { name: `instrument-${label}`, metric: 'cold', value: coldMs / 1000, unit: 's', reference: { name: 'wasm-opt --asyncify -O2 process, same run', value: asyncifyMs / 1000 }, target: '<= 1.5x ref', met: coldMs <= 1.5 * asyncifyMs, extra: context },
    { name: `instrument-${label}`, metric: 'cached', value: warmMs, unit: 'ms', extra: context },
  ];
}

export async function run(): Promise<BenchRow[]> {
  const cache = new ModuleCache(mkdtempSync(join(tmpdir(), 'ferry-bench-cache-')));
  const devNull = openSync('/dev/null', 'w');
  try {
    const rows: BenchRow[] = [];
    const runs = Number(process.env['FERRY_BENCH_GUEST_RUNS'] ?? 5);
    rows.push(...await overhead('compute', ['compute', '--iterations', '400000'], runs, cache, devNull));
    rows.push(...await overhead('memtouch', ['memtouch', '--mib', '64', '--rounds', '64'], runs, cache, devNull));
    rows.push(...(await pauseLatency(cache, devNull)));
    // The instrumentation rows take minutes: FERRY_BENCH_SKIP_BIG=1 leaves them out.
    if (process.env['FERRY_BENCH_SKIP_BIG'] !== '1') {
      const functions = Number(process.env['FERRY_BENCH_BIG_FUNCTIONS'] ?? 3900);
      rows.push(...(await instrumentTime('2MiB', Math.round(functions / 10))));
      rows.push(...(await instrumentTime('20MiB', functions)));
    }
    return rows;
  } finally {
    closeSync(devNull);
  }
}
