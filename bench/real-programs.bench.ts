// Real third-party WASI programs (guests/third-party/): what being migratable costs a user who
// runs a program nobody here wrote. For each program, in the same run, every figure beside its
// reference:
//  - whole-process wall time, median of FERRY_BENCH_REAL_RUNS (default 3) alternating runs, of
//      node:wasi      the original module under Node's own WASI (bench/fixtures/wasi-run.ts);
//      asyncify-only  the module after plain `wasm-opt --asyncify -O2` (binaryen npm package),
//                     under node:wasi: what Asyncify alone costs, as a yardstick;
//      ferry run      `ferry run` with a warm module cache (bin/ferry.js of this tree);
//      ferry before   the same with another tree's bin/ferry.js, if FERRY_BENCH_BASELINE names it
//                     (e.g. a checkout of the commit before a change; its cache is warmed first);
//    each run's stdout (a file) compared byte for byte with node:wasi's;
//  - cold instrumentation (a process that instruments into an empty cache) against a plain
//    `wasm-opt --asyncify -O2` process on the same module;
//  - pause → paused (in-process Guest, a pause every few ms through the whole run), p50/p99/max,
//    and the output after all those pauses compared byte for byte.
// FERRY_BENCH_REAL_SCALE scales the workloads (default 1); FERRY_BENCH_REAL_ONLY=sqlite3,bc picks programs.
// FERRY_BENCH_REAL_CACHE=DIR (and FERRY_BENCH_BASELINE_CACHE=DIR) use module caches that persist
// across runs and leave out the cold-instrumentation rows: for repeating the speed rows only.
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { median, percentile, type BenchRow } from './harness.js';
import { realPrograms, writeInputs, type RealProgram } from './fixtures/real-programs.js';
import { Guest } from '../src/guest/guest.js';
import { ModuleCache } from '../src/guest/module-cache.js';

export const title = 'real third-party programs: node:wasi vs ferry run vs Asyncify alone; instrumentation time; pause latency';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const WASI_RUN = fileURLToPath(new URL('./fixtures/wasi-run.js', import.meta.url));
const FERRY = join(ROOT, 'bin/ferry.js');
const WASM_OPT = join(ROOT, 'node_modules/binaryen/bin/wasm-opt');

const sha = (file: string): string => createHash('sha256').update(readFileSync(file)).digest('hex');

/** A run that a signal ended (not one that exited with a code). */
class KilledBySignal extends Error {}

/** Runs a process to completion; returns its wall time in ms (throws on a non-zero exit). */
function timed(cmd: string, args: string[], env: NodeJS.ProcessEnv = process.env): number {
  const t0 = performance.now();
  const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env, maxBuffer: 64 * 1024 * 1024 });
  const ms = performance.now() - t0;
  if (r.status !== 0) {
    const message = `${cmd} ${args.join(' ')} exited ${r.status} ${r.signal ?? ''}: ${r.stderr?.toString().slice(-2000)}`;
    throw r.signal ? new KilledBySignal(message) : new Error(message);
  }
  return ms;
}

/**
 * A reference side's run (node:wasi, with or without Asyncify): one that a signal kills is run once
 * more, and counted on the side. Node under node:wasi died of SIGABRT, with nothing on stderr, once
 * in about fifteen cmark runs (2026-12-08; the cause not found), which took the whole part down.
 * Ferry's own side is never retried.
 */
function timedReference(side: { retries: number }, cmd: string, args: string[]): number {
  try {
    return timed(cmd, args);
  } catch (err) {
    if (!(err instanceof KilledBySignal)) throw err;
    side.retries++;
    process.stderr.write(`   (a reference run was killed by a signal; run again: ${err.message.slice(0, 200)})\n`);
    return timed(cmd, args);
  }
}

/** A process that instruments `wasm` into an empty cache under `cacheDir` (the cold path of `ferry run`). */
function instrumentProcess(ferryRoot: string, wasm: string, cacheDir: string, env: NodeJS.ProcessEnv = process.env): number {
  const script = `const { ModuleCache } = await import(${JSON.stringify(join(ferryRoot, 'dist/src/guest/module-cache.js'))});
const { readFileSync } = await import('node:fs');
const r = await new ModuleCache(${JSON.stringify(cacheDir)}).load(readFileSync(${JSON.stringify(wasm)}));
if (r.fromCache) { console.error('cache hit: not cold'); process.exit(1); }`;
  // A file, not `-e`: the instrumenting worker thread inherits the process's execArgv, and a worker
  // started from a file refuses `--input-type`.
  const file = join(cacheDir, '..', `instrument-${Date.now()}.mjs`);
  writeFileSync(file, script);
  return timed(process.execPath, [file], env);
}

interface Side {
  name: string;
  run: (out: string) => number;
  ms: number[];
  identical: boolean;
  /** Runs that a signal killed and were run again (reference sides only). */
  retries: number;
}

async function pauseLatency(p: RealProgram, work: string, out: string, expect: string): Promise<{ samples: number[]; identical: boolean }> {
  const fd = openSync(out, 'w');
  const cache = new ModuleCache(process.env['FERRY_CACHE_DIR']);
  const guest = await Guest.start({ module: readFileSync(p.wasm), args: p.args, stdio: { stdout: fd }, preopens: [{ guestPath: '/work', hostPath: work }], cache });
  const samples: number[] = [];
  let ended = false;
  void guest.exited.then(() => (ended = true));
  try {
    while (!ended) {
      await new Promise((r) => setTimeout(r, 3 + Math.random() * 7)); // pause at varied points
      if (ended) break;
      const t0 = performance.now();
      try {
        await guest.pause();
      } catch {
        break; // ended while the pause was pending
      }
      samples.push(performance.now() - t0);
      guest.resume();
    }
    const exit = await guest.exited;
    if (exit.reason !== 'exit' || exit.code !== 0) throw new Error(`${p.name} under pauses ended ${JSON.stringify(exit)}`);
  } finally {
    closeSync(fd);
  }
  return { samples, identical: sha(out) === expect };
}

export async function run(): Promise<BenchRow[]> {
  const runs = Number(process.env['FERRY_BENCH_REAL_RUNS'] ?? 3);
  const scale = Number(process.env['FERRY_BENCH_REAL_SCALE'] ?? 1);
  const only = process.env['FERRY_BENCH_REAL_ONLY']?.split(',');
  const baseline = process.env['FERRY_BENCH_BASELINE'];
  const root = mkdtempSync(join(tmpdir(), 'ferry-bench-real-'));
  const keepCaches = process.env['FERRY_BENCH_REAL_CACHE'];
  const cacheDir = keepCaches ?? join(root, 'cache');
  const baseCache = process.env['FERRY_BENCH_BASELINE_CACHE'] ?? join(root, 'cache-baseline');
  const ferryEnv = { ...process.env, FERRY_CACHE_DIR: cacheDir };
  // Experimental instrumentation settings of this run (FERRY_LOOP_RESUME) are not the baseline's:
  // with FERRY_BENCH_BASELINE naming this very tree, the baseline is its default instrumentation.
  const baseEnv = { ...process.env, FERRY_CACHE_DIR: baseCache, FERRY_LOOP_RESUME: '' };
  process.env['FERRY_CACHE_DIR'] = cacheDir; // the in-process pause run shares the warm cache
  const rows: BenchRow[] = [];
  try {
    for (const p of realPrograms(scale)) {
      if (only && !only.includes(p.name)) continue;
      const dir = join(root, p.name);
      const work = join(dir, 'work');
      writeInputs(p, work);
      process.stderr.write(`   ${p.name}: ${p.describe}\n`);

      // Instrumentation, cold: this tree's against plain Asyncify (whose output is also the
      // asyncify-only module), in separate processes.
      const asyncified = join(dir, `${p.name}.asyncify.wasm`);
      const asyncifyMs = timed(process.execPath, [WASM_OPT, p.wasm, '--asyncify', '-O2', '-o', asyncified]);
      let instrumentMs: number | null = null;
      let baseInstrumentMs: number | null = null;
      if (!keepCaches) {
        instrumentMs = instrumentProcess(ROOT, p.wasm, cacheDir);
        if (baseline) baseInstrumentMs = instrumentProcess(baseline, p.wasm, baseCache, baseEnv); // its own settings: the cache it warms is the one its runs use
      }

      const guestArgs = p.args.slice(1); // ferry run puts the module's name in argv[0]
      const referenceSide = (name: string, wasm: string): Side => {
        const side: Side = { name, run: (out) => timedReference(side, process.execPath, ['--no-warnings', WASI_RUN, wasm, work, out, ...p.args]), ms: [], identical: true, retries: 0 };
        return side;
      };
      const sides: Side[] = [
        referenceSide('node:wasi', p.wasm),
        referenceSide('asyncify-only', asyncified),
        { name: 'ferry run', run: (out) => timed(process.execPath, [FERRY, 'run', p.wasm, '--dir', `${work}:/work`, '--stdin', '/dev/null', '--stdout', out, '--', ...guestArgs], ferryEnv), ms: [], identical: true, retries: 0 },
      ];
      if (baseline) {
        sides.push({ name: 'ferry before', run: (out) => timed(process.execPath, [join(baseline, 'bin/ferry.js'), 'run', p.wasm, '--dir', `${work}:/work`, '--stdin', '/dev/null', '--stdout', out, '--', ...guestArgs], baseEnv), ms: [], identical: true, retries: 0 });
      }
      // A warm-up run of the original (not counted) gives the reference output.
      const refOut = join(dir, 'out-reference');
      sides[0]!.run(refOut);
      const expect = sha(refOut);
      rmSync(refOut);
      for (let i = 0; i < runs; i++) {
        // Rotate the order, so background load hits every side alike.
        for (let k = 0; k < sides.length; k++) {
          const s = sides[(k + i) % sides.length]!;
          const out = join(dir, `out-${s.name.replace(/[^a-z]/g, '')}-${i}`);
          s.ms.push(s.run(out));
          if (sha(out) !== expect) s.identical = false;
          rmSync(out, { force: true });
        }
      }
      const ref = median(sides[0]!.ms);
      const target = p.kind === 'database' || p.kind === 'interpreter' ? 1.5 : 1.25;
      for (const s of sides.slice(1)) {
        const m = median(s.ms);
        rows.push({
          name: `${p.name}/${s.name.replace(' ', '-')}`,
          metric: `whole process, median of ${runs}`,
          value: m,
          unit: 'ms',
          reference: { name: 'node:wasi, same run', value: ref },
          ...(s.name === 'ferry run' ? { target: `<= ${target}x ref`, met: m <= target * ref } : {}),
          extra: { ms: s.ms, referenceMs: sides[0]!.ms, outputIdentical: s.identical, kind: p.kind, workload: p.describe, retries: s.retries, referenceRetries: sides[0]!.retries },
        });
        if (!s.identical) throw new Error(`${p.name}: ${s.name} output differs from node:wasi's`);
      }
      if (instrumentMs !== null) rows.push({
        name: `${p.name}/instrument-cold`,
        metric: 'process, empty cache',
        value: instrumentMs / 1000,
        unit: 's',
        reference: { name: 'wasm-opt --asyncify -O2 process', value: asyncifyMs / 1000 },
        target: '<= 1.5x ref',
        met: instrumentMs <= 1.5 * asyncifyMs,
        extra: { moduleBytes: readFileSync(p.wasm).length, ...(baseInstrumentMs !== null ? { baselineInstrumentS: baseInstrumentMs / 1000 } : {}) },
      });
      const paused = await pauseLatency(p, work, join(dir, 'out-paused'), expect);
      const sorted = [...paused.samples].sort((a, b) => a - b);
      const p99 = percentile(sorted, 99);
      rows.push({
        name: `${p.name}/pause-to-paused`,
        metric: `p99 of ${sorted.length}`,
        value: p99,
        unit: 'ms',
        target: '<= 20 ms',
        met: p99 <= 20 && paused.identical,
        extra: { p50: percentile(sorted, 50), max: sorted[sorted.length - 1], pauses: sorted.length, outputIdenticalAfterPauses: paused.identical },
      });
      if (!paused.identical) throw new Error(`${p.name}: output after ${sorted.length} pauses differs from node:wasi's`);
      rmSync(dir, { recursive: true, force: true });
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
  return rows;
}

