// serve-snapshot with the live source's sender: the destination's fault latency while this
// process's main thread is busy half of the time (a 5 ms block every 10 ms), beside the same
// serve with the main thread idle, measured in the same run. Urgent requests are answered by the
// urgent channel's own thread (send/urgent/answer-thread.ts) from the snapshot's files, so a busy
// main thread must not show in the destination's fault latency. (Before 2026-12-05 serve.ts
// answered them on the main thread: each fault could wait out a whole block.)
// The guest: memtouch over FERRY_BENCH_SERVE_MIB MiB (default 128) writing random pages at 3000/s,
// so on the destination most writes fault on pages still pending. Destination: `ferry run
// --incoming --insecure` on loopback, ended once the serve completes.
import { mkdtempSync, openSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Guest } from '../src/guest/guest.js';
import { SnapshotSession } from '../src/snapshot/index.js';
import { serveSnapshot, type ServeSnapshotReport } from '../src/snapshot/serve.js';
import { median, type BenchRow } from './harness.js';

export const title = 'serve-snapshot: destination fault latency with this main thread busy vs idle';

const FERRY = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const MEMTOUCH = fileURLToPath(new URL('../../guests/build/memtouch.wasm', import.meta.url));
const REPEAT = 3;
const BLOCK_MS = 5;
const EVERY_MS = 10;

async function until(what: string, test: () => boolean, deadlineMs = 120_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!test()) {
    if (Date.now() > end) throw new Error(`serve-snapshot bench: timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** One serve into a fresh `ferry run --incoming`; with `busy`, this thread blocks BLOCK_MS every EVERY_MS meanwhile. */
async function serveOnce(snap: string, busy: boolean): Promise<ServeSnapshotReport> {
  const dest = spawn(process.execPath, [FERRY, 'run', '--incoming', '127.0.0.1:0', '--insecure', '--stdout', '/dev/null'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  dest.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  let timer: NodeJS.Timeout | null = null;
  try {
    let port = 0;
    await until('the destination to listen', () => {
      const m = /waiting for a migration on [^\s]+:(\d+)/.exec(stderr);
      if (m) port = Number(m[1]);
      return port > 0;
    });
    if (busy) {
      timer = setInterval(() => {
        const end = performance.now() + BLOCK_MS;
        while (performance.now() < end); // the main thread is busy (encrypting, a GC, another request...)
      }, EVERY_MS);
    }
    return await serveSnapshot(snap, { host: '127.0.0.1', port, security: { kind: 'insecure' } });
  } finally {
    if (timer) clearInterval(timer);
    dest.kill('SIGKILL');
  }
}

export async function run(): Promise<BenchRow[]> {
  const mib = Number(process.env['FERRY_BENCH_SERVE_MIB'] ?? '128');
  const tmp = mkdtempSync(join(tmpdir(), 'ferry-bench-serve-'));
  try {
    const out = join(tmp, 'src.out');
    const guest = await Guest.start({
      module: readFileSync(MEMTOUCH),
      args: ['memtouch', '--mib', String(mib), '--random', '--rate', '3000', '--report-ms', '50'],
      stdio: { stdout: openSync(out, 'w') },
      maxMemoryBytes: 1 << 30,
    });
    await until('memtouch to fill its memory', () => existsSync(out) && (readFileSync(out, 'utf8').match(/^SEQ \d+/gm)?.length ?? 0) >= 2);
    const snap = join(tmp, 'snap');
    await new SnapshotSession(guest).take({ to: snap });
    const runs: Record<'idle' | 'busy', ServeSnapshotReport[]> = { idle: [], busy: [] };
    for (let i = 0; i < REPEAT; i++) {
      for (const k of ['idle', 'busy'] as const) runs[k].push(await serveOnce(snap, k === 'busy'));
    }
    const fig = (k: 'idle' | 'busy', f: (r: ServeSnapshotReport) => number) => median(runs[k].map(f));
    const p50 = (r: ServeSnapshotReport) => r.postcopy.faultLatencyUs.p50;
    const p99 = (r: ServeSnapshotReport) => r.postcopy.faultLatencyUs.p99;
    const extra = (k: 'idle' | 'busy') => ({
      faults: runs[k].map((r) => r.postcopy.faults),
      p50: runs[k].map(p50),
      p99: runs[k].map(p99),
      totalMs: runs[k].map((r) => r.totalMs),
      pagesRequested: runs[k].map((r) => r.pagesRequested),
    });
    const label = `${mib}M`;
    return [
      {
        name: `fault-p50-busy-main-${label}`, metric: 'destination fault latency p50 (median of runs)', value: fig('busy', p50), unit: 'us',
        reference: { name: 'same, main thread idle', value: fig('idle', p50) }, target: '<= 1.5x ref', met: fig('busy', p50) <= 1.5 * fig('idle', p50),
        extra: { busy: extra('busy'), idle: extra('idle'), blockMs: BLOCK_MS, everyMs: EVERY_MS },
      },
      {
        name: `fault-p99-busy-main-${label}`, metric: 'destination fault latency p99 (median of runs)', value: fig('busy', p99), unit: 'us',
        reference: { name: 'same, main thread idle', value: fig('idle', p99) }, target: `< ${BLOCK_MS} ms (a block)`, met: fig('busy', p99) < BLOCK_MS * 1000,
      },
      {
        name: `total-busy-main-${label}`, metric: 'serve total (median)', value: fig('busy', (r) => r.totalMs), unit: 'ms',
        reference: { name: 'same, main thread idle', value: fig('idle', (r) => r.totalMs) },
      },
    ];
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
}
