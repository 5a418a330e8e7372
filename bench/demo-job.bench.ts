// The job to beat: a busy guest moved live, as `ferry demo` runs it (1 GiB memtouch rewriting its
// memory at full speed, two local hosts, TLS 1.3 PSK, auto mode, --verify), against QEMU 7.2's
// figures for the same job on this machine kind (a 2 GiB guest rewriting 1 GiB, postcopy, plain
// loopback TCP; measured once, not in this run: QEMU is not installed here). Medians of
// FERRY_BENCH_DEMO_RUNS (default 3) whole `ferry demo --json` processes.
// Downtime is given both ways: Ferry's own figure runs from the pause until the destination says
// the guest runs there; QEMU's (postcopy_start) ends when the switchover has been sent, so Ferry's
// `switchoverSentMs` is the like-for-like one.
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { median, type BenchRow } from './harness.js';

export const title = 'the demo job (busy 1 GiB guest moved live) beside QEMU 7.2 on the same job';

const FERRY = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const RUNS = Number(process.env['FERRY_BENCH_DEMO_RUNS'] ?? 3);
/** QEMU 7.2, this machine kind, 2 GiB guest rewriting 1 GiB, postcopy (medians of 3). */
const QEMU = { totalMs: 7400, downtimeMs: 2, blockedMs: 177, longestStallMs: 83 };

interface DemoRun {
  totalMs: number;
  downtimeMs: number;
  switchoverSentMs: number;
  blockedMs: number;
  longestStallMs: number;
  mode: string;
}

function demoOnce(): DemoRun {
  const r = spawnSync(process.execPath, [FERRY, 'demo', '--json'], { encoding: 'utf8', maxBuffer: 16 << 20, timeout: 600_000 });
  const failed = () => new Error(`ferry demo failed (exit ${r.status}${r.error ? `, ${r.error.message}` : ''}): ${r.stdout?.slice(-500)} ${r.stderr?.slice(-1500)}`);
  if (r.status !== 0) throw failed();
  let out: { ok?: boolean; report?: Record<string, unknown> };
  try {
    out = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as typeof out;
  } catch {
    throw failed();
  }
  if (!out.ok || !out.report || typeof out.report['switchoverSentMs'] !== 'number') throw failed();
  const rep = out.report;
  const pc = rep['postcopy'] as { guestBlockedMs: number; faultLatencyUs: { max: number } } | undefined;
  return {
    totalMs: Number(rep['totalMs']),
    downtimeMs: Number(rep['downtimeMs']),
    switchoverSentMs: Number(rep['switchoverSentMs']),
    blockedMs: pc?.guestBlockedMs ?? 0,
    longestStallMs: (pc?.faultLatencyUs.max ?? 0) / 1000,
    mode: String(rep['mode']),
  };
}

export async function run(): Promise<BenchRow[]> {
  const runs: DemoRun[] = [];
  for (let i = 0; i < RUNS; i++) {
    runs.push(demoOnce());
    process.stderr.write(`   demo ${i + 1}/${RUNS}: ${JSON.stringify(runs[i])}\n`);
  }
  const how = `median of ${RUNS}`;
  /** One row: the median of `figure` over the runs, beside QEMU's figure for the same job (`qemuName` says which). */
  const row = (name: string, metric: string, figure: (r: DemoRun) => number, qemu: number, target: string, limit: number, qemuName = 'QEMU 7.2, same job (not this run)'): BenchRow => {
    const value = median(runs.map(figure));
    return { name, metric: `${how}${metric}`, value, unit: 'ms', reference: { name: qemuName, value: qemu }, target, met: value <= limit };
  };
  return [
    { ...row('total', '', (r) => r.totalMs, QEMU.totalMs, '<= 4000 ms', 4000), extra: { runs } },
    row('downtime-switchover-sent', ": pause → switchover sent (QEMU's measure)", (r) => r.switchoverSentMs, QEMU.downtimeMs, '<= 2 ms', 2),
    // QEMU counts only to the switchover sent: its figure stands here as the nearest it has, not a like-for-like one.
    row('downtime-to-running', ': pause → running on the destination', (r) => r.downtimeMs, QEMU.downtimeMs, '<= 2 ms', 2, 'QEMU 7.2 pause → switchover sent (its only downtime figure; not this run)'),
    row('guest-blocked', ': total', (r) => r.blockedMs, QEMU.blockedMs, '<= 177 ms (aim 50)', 177),
    row('longest-stall', ': longest single fault', (r) => r.longestStallMs, QEMU.longestStallMs, '<= 10 ms', 10),
  ];
}
