// Control commands as a script sees them: the wall time of a whole `ferry status|pause|resume|
// stop|snapshot|migrate --cancel` process, from spawn to exit, beside bare `node -e ''` measured in
// the same rounds (each round runs every command once, in turn, so load on the machine falls on all
// of them alike). Two sets: against a live guest (`ferry run --api-sock`; status, pause, resume and
// migrate --cancel, which answers "no migration") and against a socket nobody listens on (every
// command: start-up, connect, refusal, exit). Target: ≤ 1.5× node -e ''.
// FERRY_BENCH_CLI_RUNS sets the rounds (default 15).
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { FerryProcess } from '../src/cli/ferry-process.js';
import { median, type BenchRow } from './harness.js';

export const title = "control commands: whole-process time vs bare node -e '' (same rounds)";

const FERRY = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
const MEMTOUCH = fileURLToPath(new URL('../../guests/build/memtouch.wasm', import.meta.url));
const TARGET = 1.5;

/** Wall time of one process, spawn to exit, in ms; throws if its exit code is not `expect`. */
function timeProcess(args: string[], expect: number | null): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = process.hrtime.bigint();
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    child.stderr.setEncoding('utf8').on('data', (d: string) => (err += d));
    child.on('error', reject);
    child.on('exit', (code) => {
      const ms = Number(process.hrtime.bigint() - t0) / 1e6;
      if (expect !== null && code !== expect) reject(new Error(`${args.join(' ')}: exit ${code}, expected ${expect}: ${err}`));
      else resolve(ms);
    });
  });
}

export async function run(): Promise<BenchRow[]> {
  const rounds = Number(process.env['FERRY_BENCH_CLI_RUNS'] ?? 15);
  const tmp = mkdtempSync(join(tmpdir(), 'ferry-bench-cli-'));
  const sock = join(tmp, 'guest.sock');
  const missing = join(tmp, 'nobody.sock');
  const guest = new FerryProcess('guest', ['run', MEMTOUCH, '--api-sock', sock, '--', '--mib', '8', '--idle', '--report-ms', '1000', '--seconds', '3600']);
  try {
    await guest.waitFor(/^SEQ 1 /m, 'the guest', 120_000);
    const node = ['-e', ''];
    const cases: { name: string; args: string[]; expect: number | null }[] = [
      { name: 'live status', args: [FERRY, 'status', '--api-sock', sock, '--json'], expect: 0 },
      { name: 'live pause', args: [FERRY, 'pause', '--api-sock', sock], expect: 0 },
      { name: 'live resume', args: [FERRY, 'resume', '--api-sock', sock], expect: 0 },
      { name: 'live migrate --cancel', args: [FERRY, 'migrate', '--api-sock', sock, '--cancel'], expect: null },
      { name: 'no-socket status', args: [FERRY, 'status', '--api-sock', missing], expect: 1 },
      { name: 'no-socket pause', args: [FERRY, 'pause', '--api-sock', missing], expect: 1 },
      { name: 'no-socket resume', args: [FERRY, 'resume', '--api-sock', missing], expect: 1 },
      { name: 'no-socket stop', args: [FERRY, 'stop', '--api-sock', missing], expect: 1 },
      { name: 'no-socket snapshot', args: [FERRY, 'snapshot', '--api-sock', missing, '--to', join(tmp, 'snap')], expect: null },
      { name: 'no-socket migrate --cancel', args: [FERRY, 'migrate', '--api-sock', missing, '--cancel'], expect: null },
      { name: 'ferry --version', args: [FERRY, '--version'], expect: 0 },
    ];
    const ref: number[] = [];
    const times = new Map<string, number[]>(cases.map((c) => [c.name, []]));
    // One warm-up round: the first process after a build reads cold files.
    spawnSync(process.execPath, node);
    for (const c of cases) await timeProcess(c.args, c.expect);
    for (let r = 0; r < rounds; r++) {
      ref.push(await timeProcess(node, 0));
      for (const c of cases) times.get(c.name)!.push(await timeProcess(c.args, c.expect));
    }
    const refMs = median(ref);
    const reference = { name: "node -e ''", value: refMs, unit: 'ms' };
    return cases.map((c) => {
      const v = median(times.get(c.name)!);
      return {
        name: c.name,
        metric: `median of ${rounds}`,
        value: v,
        unit: 'ms',
        reference,
        target: `<= ${TARGET}x node`,
        met: v <= TARGET * refMs,
        extra: { runsMs: times.get(c.name)!.map((x) => Math.round(x * 10) / 10), referenceRunsMs: ref.map((x) => Math.round(x * 10) / 10) },
      };
    });
  } finally {
    guest.kill();
    await guest.exited;
    rmSync(tmp, { recursive: true, force: true });
  }
}
