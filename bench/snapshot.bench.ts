// Snapshot benchmarks, each figure beside a reference measured in the same run:
//  - snapshot write throughput (fsync included) vs a plain sequential write+fsync of as many bytes;
//  - eager load (every held page read and checked into a fresh memory) vs a plain read of the same
//    files, and the same load without GuestMemory.prefault;
//  - restore to running, in-process (restoreSnapshot → the guest's worker runs), eager and lazy, vs
//    Guest.restore alone over a memory that already holds the pages (the runtime's own floor); and
//    the same with the workers started ahead (prepareRestore, then start() is timed);
//  - from the start of a `ferry restore` process to the guest's first output line, eager and lazy,
//    vs the same process starting and exiting (`ferry --help`);
//  - time for a restored guest to finish a fixed piece of work (memtouch rewriting its pages), lazy vs eager.
// Sizes: FERRY_BENCH_SNAPSHOT_MIB (default "256,1024"; add 3968 for a ~4 GiB guest). The page cache is
// warm (the snapshot was just written), as on a host restoring what it saved; the module is cached.
import { closeSync, fsyncSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, writeSync, existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Guest } from '../src/guest/guest.js';
import { keepGuestThreadReady } from '../src/guest/spare-worker.js';
import { GuestMemory, WASM_PAGE_SIZE } from '../src/memory/guest-memory.js';
import { SnapshotSession, loadEagerly, loadSnapshot, prepareRestore, restoreSnapshot } from '../src/snapshot/index.js';
import { PAGE_SIZE } from '../src/snapshot/format.js';
import { median, type BenchRow } from './harness.js';

export const title = 'snapshots: write throughput, restore to running (eager/lazy, in-process and CLI), work after restore';

const FERRY = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const MEMTOUCH = fileURLToPath(new URL('../../guests/build/memtouch.wasm', import.meta.url));
const REPEAT = 3;

function sizes(): number[] {
  return (process.env['FERRY_BENCH_SNAPSHOT_MIB'] ?? '256,1024').split(',').map((s) => Number(s.trim())).filter((n) => n > 0);
}

function label(mib: number): string {
  return mib >= 1024 ? `${(mib / 1024).toFixed(mib % 1024 ? 1 : 0)}G` : `${mib}M`;
}

async function until(test: () => boolean, deadlineMs = 120_000, stepMs = 5): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!test()) {
    if (Date.now() > end) throw new Error('snapshot bench: timed out');
    await new Promise((r) => setTimeout(r, stepMs));
  }
}

function hasSeq(path: string): boolean {
  return existsSync(path) && /^SEQ \d+/m.test(readFileSync(path, 'utf8'));
}

/** A memtouch guest of `mib` MiB, filled, with `args`; returns once it printed its first SEQ. */
async function filledGuest(tmp: string, name: string, mib: number, args: string[], line = /^SEQ \d+/m): Promise<Guest> {
  const out = join(tmp, `${name}.out`);
  const guest = await Guest.start({
    module: readFileSync(MEMTOUCH),
    args: ['memtouch', '--mib', String(mib), ...args],
    stdio: { stdout: openSync(out, 'w') },
  });
  await until(() => existsSync(out) && line.test(readFileSync(out, 'utf8')), 120_000, 1);
  return guest;
}

/** Reference for write throughput: sequential 1 MiB writes of `bytes` from a buffer, then fsync. */
function plainWriteMBps(path: string, bytes: number): number {
  const buf = Buffer.alloc(1 << 20, 7);
  const t0 = performance.now();
  const fd = openSync(path, 'w');
  for (let off = 0; off < bytes; off += buf.length) writeSync(fd, buf, 0, Math.min(buf.length, bytes - off), off);
  fsyncSync(fd);
  closeSync(fd);
  const ms = performance.now() - t0;
  rmSync(path);
  return bytes / 1e6 / (ms / 1000);
}

/**
 * Milliseconds to read `paths` whole, 4 MiB per read. `into` 'reused': one buffer read into again
 * and again, the read's own cost. 'fresh': one fresh buffer of each file's size, its pages
 * allocated as the reads fill them — what a plain program pays to bring the same bytes into memory
 * it has not touched yet (the page cache's copy plus the allocation of every page), as a restore must.
 */
function plainReadMs(paths: string[], into: 'reused' | 'fresh'): number {
  const reused = into === 'reused' ? Buffer.allocUnsafe(4 << 20) : null;
  const t0 = performance.now();
  for (const path of paths) {
    const size = statSync(path).size;
    const buf = reused ?? Buffer.allocUnsafeSlow(size);
    const fd = openSync(path, 'r');
    try {
      for (let off = 0; off < size; ) {
        const n = readSync(fd, buf, reused ? 0 : off, Math.min(4 << 20, size - off), off);
        if (n <= 0) break;
        off += n;
      }
    } finally {
      closeSync(fd);
    }
  }
  return performance.now() - t0;
}

/** Milliseconds from spawning `node ferry args` until `ready()` holds (then the process is ended). */
async function processTime(args: string[], ready: (() => boolean) | null): Promise<number> {
  const t0 = performance.now();
  const child = spawn(process.execPath, [FERRY, ...args], { stdio: 'ignore' });
  const exited = new Promise<void>((r) => child.on('exit', () => r()));
  if (ready) {
    await until(ready, 120_000, 1);
    const ms = performance.now() - t0;
    child.kill('SIGTERM');
    await exited;
    return ms;
  }
  await exited;
  return performance.now() - t0;
}

export async function run(): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const tmp = mkdtempSync(join(tmpdir(), 'ferry-bench-snap-'));
  const devNull = openSync('/dev/null', 'w');
  try {
    for (const mib of sizes()) {
      const L = label(mib);
      // ---- write throughput ----
      const idle = await filledGuest(tmp, `idle-${L}`, mib, ['--idle', '--report-ms', '2']);
      const dir = join(tmp, `idle-${L}`);
      // REPEAT snapshots of the same guest, each beside a plain write of as many bytes, medians of
      // both: the first write of a size into memory the machine never handed out before (its page
      // cache) is slower on a virtual machine whichever writes it (2026-12-07: a snapshot of 256 MiB
      // 717, 398, 249 ms in one process), so one run measured the host more than the writer.
      const writes: Array<{ ms: number; pages: number; pausedMs: number }> = [];
      const refs: number[] = [];
      let bytes = 0;
      for (let i = 0; i < REPEAT; i++) {
        const to = i === REPEAT - 1 ? dir : join(tmp, `idle-${L}-w${i}`);
        const w = await new SnapshotSession(idle).take({ to, resume: i < REPEAT - 1 });
        if (to !== dir) rmSync(to, { recursive: true, force: true });
        writes.push({ ms: w.writeMs, pages: w.pagesWritten, pausedMs: w.pausedMs });
        bytes = w.bytesWritten;
        refs.push(plainWriteMBps(join(tmp, 'plain.bin'), w.bytesWritten));
      }
      const writeMBps = bytes / 1e6 / (median(writes.map((w) => w.ms)) / 1000);
      const refMBps = median(refs);
      rows.push({
        name: `write-${L}`, metric: `throughput (fsync incl.; median of ${REPEAT})`, value: Math.round(writeMBps), unit: 'MB/s',
        reference: { name: 'plain write+fsync, same runs', value: Math.round(refMBps) }, target: '>= 0.8x the plain write', met: writeMBps >= 0.8 * refMBps,
        extra: { writes, plainMBps: refs.map(Math.round) },
      });

      // ---- restore to running, in-process ----
      const chain = loadSnapshot(dir);
      const floor: number[] = [];
      for (let i = 0; i < REPEAT; i++) {
        const mem = GuestMemory.create(chain.memory.bytes / WASM_PAGE_SIZE, chain.memory.maxBytes / WASM_PAGE_SIZE);
        await loadEagerly(chain, mem.view());
        const t0 = performance.now();
        const g = await Guest.restore({ module: chain.moduleSource, state: chain.state, memory: mem.memory, stdio: { stdout: devNull } });
        floor.push(performance.now() - t0);
        await g.stop();
        mem.dropPages([[0, mem.pageCount]]);
      }
      // ---- eager load: every held page read and checked into a fresh memory ----
      // Beside a plain read of the same files (the read's own limit) and the same load without the
      // bulk page allocation (each page faulted in by the read, as before GuestMemory.prefault).
      const loads: { prefault: number[]; faulted: number[]; plain: number[]; fresh: number[] } = { prefault: [], faulted: [], plain: [], fresh: [] };
      for (let i = 0; i < REPEAT; i++) {
        for (const mode of ['prefault', 'faulted'] as const) {
          const mem = GuestMemory.create(chain.memory.bytes / WASM_PAGE_SIZE, chain.memory.maxBytes / WASM_PAGE_SIZE);
          const t0 = performance.now();
          await loadEagerly(chain, mode === 'prefault' ? mem : mem.view());
          loads[mode].push(performance.now() - t0);
          mem.dropPages([[0, mem.pageCount]]);
        }
        loads.plain.push(plainReadMs(chain.layers.map((l) => l.memoryPath), 'reused'));
        loads.fresh.push(plainReadMs(chain.layers.map((l) => l.memoryPath), 'fresh'));
      }
      const heldMB = (chain.presentPages * PAGE_SIZE) / 1e6;
      const loadMBps = heldMB / (median(loads.prefault) / 1000);
      const plainMBps = (chain.layers.reduce((n, l) => n + statSync(l.memoryPath).size, 0) / 1e6) / (median(loads.plain) / 1000);
      rows.push({
        name: `eager-load-${L}`, metric: 'read + check into fresh memory (median)', value: Math.round(loadMBps), unit: 'MB/s',
        reference: { name: 'plain read of the same files', value: Math.round(plainMBps) }, target: '>= 0.8x the plain read', met: loadMBps >= 0.8 * plainMBps,
        extra: { ms: loads.prefault.map(round), withoutPrefaultMs: loads.faulted.map(round), plainReadMs: loads.plain.map(round) },
      });
      // The same load beside a plain read into fresh memory: the reused buffer above allocates
      // nothing, while a restore must allocate every page, and on these machines that is the dear
      // part (1 GiB of 4 KiB pages touched: 0.7-1.4 s).
      const freshMBps = (chain.layers.reduce((n, l) => n + statSync(l.memoryPath).size, 0) / 1e6) / (median(loads.fresh) / 1000);
      rows.push({
        name: `eager-load-vs-fresh-read-${L}`, metric: 'read + check into fresh memory (median)', value: Math.round(loadMBps), unit: 'MB/s',
        reference: { name: 'plain read into a fresh buffer', value: Math.round(freshMBps) }, target: '>= 0.8x the plain read', met: loadMBps >= 0.8 * freshMBps,
        extra: { freshReadMs: loads.fresh.map(round) },
      });

      for (const lazy of [false, true]) {
        const times: number[] = [];
        let loadMs = 0;
        for (let i = 0; i < REPEAT; i++) {
          const r = await restoreSnapshot(dir, { lazy, stdio: { stdout: devNull } });
          times.push(r.restoreMs);
          loadMs = (await r.loaded).loadMs;
          await r.guest.stop();
          r.memory.dropPages([[0, r.memory.pageCount]]);
        }
        rows.push({
          name: `restore-${lazy ? 'lazy' : 'eager'}-${L}`, metric: 'in-process to running (median)', value: round(median(times)), unit: 'ms',
          reference: { name: 'Guest.restore over loaded memory', value: round(median(floor)) },
          ...(lazy ? { target: '<= 20 ms', met: median(times) <= 20 } : {}),
          extra: { runs: times.map(round), allPagesInMs: loadMs },
        });
      }

      // Unprepared again, in a process that keeps a guest thread booted ahead (keepGuestThreadReady):
      // a host that restores guest after guest, here 0.3 s apart (a thread boots in about 0.1 s).
      {
        const times: number[] = [];
        void keepGuestThreadReady(true);
        try {
          for (let i = 0; i < REPEAT; i++) {
            await new Promise((r) => setTimeout(r, 300));
            const r = await restoreSnapshot(dir, { lazy: true, stdio: { stdout: devNull } });
            times.push(r.restoreMs);
            await r.loaded;
            await r.guest.stop();
            r.memory.dropPages([[0, r.memory.pageCount]]);
          }
        } finally {
          await keepGuestThreadReady(false);
        }
        rows.push({
          name: `restore-lazy-ready-thread-${L}`, metric: 'in-process to running, a guest thread kept booted (median)', value: round(median(times)), unit: 'ms',
          reference: { name: 'Guest.restore over loaded memory', value: round(median(floor)) },
          target: '<= 20 ms', met: median(times) <= 20,
          // Like every restore after the floor's, it finds the module compiled and warmed by an earlier guest (compiled-modules.ts).
          extra: { runs: times.map(round), moduleCompiledBefore: true },
        });
      }

      // With the workers started ahead (prepareRestore), the call that runs the guest.
      for (const lazy of [false, true]) {
        const times: number[] = [];
        for (let i = 0; i < REPEAT; i++) {
          const p = await prepareRestore(dir, { lazy, stdio: { stdout: devNull } });
          const r = await p.start();
          times.push(r.restoreMs);
          await r.loaded;
          await r.guest.stop();
          r.memory.dropPages([[0, r.memory.pageCount]]);
        }
        rows.push({
          name: `restore-${lazy ? 'lazy' : 'eager'}-prepared-${L}`, metric: 'start() to running, workers ready (median)', value: round(median(times)), unit: 'ms',
          reference: { name: 'Guest.restore over loaded memory', value: round(median(floor)) },
          ...(lazy ? { target: '<= 20 ms', met: median(times) <= 20 } : {}),
          extra: { runs: times.map(round) },
        });
      }

      // ---- restore to first output line, ferry restore process ----
      const helpRuns: number[] = [];
      for (let i = 0; i < REPEAT; i++) helpRuns.push(await processTime(['--help'], null));
      const help = median(helpRuns);
      for (const lazy of [false, true]) {
        const t: number[] = [];
        for (let i = 0; i < REPEAT; i++) {
          const out = join(tmp, `cli-${L}-${lazy}-${i}.out`);
          t.push(await processTime(['restore', dir, '--stdout', out, ...(lazy ? ['--lazy'] : [])], () => hasSeq(out)));
        }
        rows.push({
          name: `cli-restore-${lazy ? 'lazy' : 'eager'}-${L}`, metric: 'process start to first line (median)', value: round(median(t)), unit: 'ms',
          reference: { name: 'ferry --help process', value: round(help) }, extra: { runs: t.map(round), reportMs: 2 },
        });
      }

      // ---- a fixed piece of work after restore: the rest of memtouch's fill, then 4 rewrites of every page ----
      const busy = await filledGuest(tmp, `work-${L}`, mib, ['--rounds', '4', '--report-ms', '100000'], /^START /m);
      const workDir = join(tmp, `work-${L}`);
      await new SnapshotSession(busy).take({ to: workDir });
      const work: Record<string, number> = {};
      let faults = 0;
      for (const lazy of [false, true]) {
        const t0 = performance.now();
        const r = await restoreSnapshot(workDir, { lazy, stdio: { stdout: devNull } });
        const exit = await r.guest.exited;
        work[lazy ? 'lazy' : 'eager'] = performance.now() - t0;
        const rep = await r.loaded;
        if (lazy) faults = rep.faults ?? 0;
        if (exit.code !== 0) throw new Error(`snapshot bench: restored work guest ended ${exit.reason} ${exit.code}`);
        r.memory.dropPages([[0, r.memory.pageCount]]);
      }
      rows.push({
        name: `work-after-lazy-${L}`, metric: 'restore + rest of fill + 4 rewrites of every page', value: round(work['lazy']!), unit: 'ms',
        reference: { name: 'same after eager restore', value: round(work['eager']!) }, extra: { faults },
      });
      rmSync(dir, { recursive: true, force: true });
      rmSync(workDir, { recursive: true, force: true });
    }
  } finally {
    closeSync(devNull);
    rmSync(tmp, { recursive: true, force: true });
  }
  return rows;
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
