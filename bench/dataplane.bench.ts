// The native postcopy fault path (native/dataplane/) against bench/c/postcopy_ref.c, in the same
// run. A guest thread touches N pages that are holes on the destination, one after the other, and
// times each touch (the time it is blocked), exactly as the C reference does. Each fault goes
// destination fault thread -> REQUEST -> source process's answer thread -> PAGES -> UFFDIO_COPY,
// all native, AES-256-GCM on both frames. "bulk": the source also streams over its TLS-PSK
// session connection as fast as Node's TLS goes, and the destination's main thread decrypts and
// drops it (Ferry's bulk channel load; the C reference's bulk stream is plain TCP).
// Runs: FERRY_BENCH_DATAPLANE_RUNS (default 5; 1 with FERRY_BENCH_MIGRATION_QUICK=1).
import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { FaultPlane } from '../src/migration/dataplane/fault-plane.js';
import { dataplaneSecret } from '../src/migration/dataplane/keys.js';
import { takeSocketFd } from '../src/migration/dataplane/socket-fd.js';
import { serverTlsOptions } from '../src/migration/transport/security.js';
import { GuestThread } from '../test/fixtures/memory/guest.js';
import { destination, patternOf } from '../test/fixtures/dataplane/loopback.js';
import { median, percentile, type BenchRow } from './harness.js';

export const title = 'native postcopy fault path (fault thread + answer thread, AES-256-GCM, loopback) vs the C fault reference';

const QUICK = process.env['FERRY_BENCH_MIGRATION_QUICK'] === '1';
const RUNS = process.env['FERRY_BENCH_DATAPLANE_RUNS'] ? Math.max(1, Number(process.env['FERRY_BENCH_DATAPLANE_RUNS'])) : QUICK ? 1 : 5;
/** Same page count as migration.bench.ts's C reference runs. */
const PAGES = 20000;
const here = dirname(fileURLToPath(import.meta.url));

interface Figures {
  p50: number;
  p99: number;
  max?: number;
  /** The fault thread's own figure: request noted -> page placed (what Ferry's reports show). */
  threadP50?: number;
  faults?: number;
}

/** One run of the native path: the guest touches PAGES holes, each answered by the source process. */
async function nativeOnce(bulk: boolean): Promise<Figures> {
  const wasmPages = Math.ceil(PAGES / 16);
  const pending = Array.from({ length: PAGES }, (_, p) => p);
  const d = destination(wasmPages, pending);
  const psk = randomBytes(32);
  const sessionId = randomBytes(16);
  const tlsServer = tls.createServer({ ...serverTlsOptions({ kind: 'psk', key: psk }) });
  const dpServer = net.createServer({ pauseOnConnect: true }); // Node must never read the data plane's bytes
  tlsServer.listen(0, '127.0.0.1');
  dpServer.listen(0, '127.0.0.1');
  await Promise.all([once(tlsServer, 'listening'), once(dpServer, 'listening')]);
  const sessionP = once(tlsServer, 'secureConnection') as Promise<[tls.TLSSocket]>;
  const dpP = once(dpServer, 'connection') as Promise<[net.Socket]>;
  const child = spawn(process.execPath, [join(here, 'fixtures/dataplane-source.js'), String((tlsServer.address() as net.AddressInfo).port),
    String((dpServer.address() as net.AddressInfo).port), sessionId.toString('hex'), psk.toString('hex'), String(PAGES), ...(bulk ? ['--bulk'] : [])],
  { stdio: ['ignore', 'inherit', 'inherit'] });
  const exited = once(child, 'exit');
  const guest = new GuestThread(d.mem.memory, wasmPages);
  let plane: FaultPlane | null = null;
  let session: tls.TLSSocket | null = null;
  try {
    [session] = await sessionP;
    let bulkBytes = 0;
    session.on('data', (b: Buffer) => (bulkBytes += b.length)); // decrypted here, on the main thread, and dropped
    const [dpSock] = await dpP;
    plane = new FaultPlane({ uffd: d.uffd.fd, sock: takeSocketFd(dpSock), base: d.mem.base, pageCount: PAGES, states: d.states, requests: d.requests, secret: dataplaneSecret(session, sessionId) });
    if (bulk) while (bulkBytes < 64 << 20) await new Promise((r) => setTimeout(r, 10)); // the link is full before the first fault
    const failed = plane.ended.then((e) => { throw new Error(`fault thread ended: ${e}`); });
    const r = await Promise.race([guest.run<{ lat: Float64Array; sum: number }>({ op: 'touchTimed', addr: 0, pages: PAGES, stride: 4096 }), failed]);
    let expected = 0;
    for (let p = 0; p < PAGES; p++) expected += patternOf(p);
    if (r.sum !== expected) throw new Error(`wrong bytes: sum ${r.sum}, expected ${expected}`);
    const lat = Float64Array.from(r.lat).sort();
    const own = Float64Array.from(plane.latenciesSince(0).samples).sort();
    return { p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat[lat.length - 1]!, threadP50: percentile(own, 50), faults: plane.read().faults };
  } finally {
    plane?.stop();
    session?.destroy();
    tlsServer.close();
    dpServer.close();
    await exited;
    d.release();
    await guest.terminate();
  }
}

function cRefOnce(exe: string, bulk: boolean): Figures {
  const out = execFileSync(exe, [String(PAGES), ...(bulk ? ['--bulk'] : [])], { encoding: 'utf8' }).trim().split(/\s+/);
  if (out[3] !== 'ok') throw new Error(`postcopy_ref: wrong bytes (${out.join(' ')})`);
  return { p50: Number(out[0]), p99: Number(out[1]) };
}

export async function run(): Promise<BenchRow[]> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-dpref-'));
  const exe = join(dir, 'postcopy_ref');
  execFileSync('gcc', ['-O2', '-pthread', '-o', exe, join(here, '../../bench/c/postcopy_ref.c')]);
  const runs: Record<'idle' | 'bulk', { native: Figures[]; ref: Figures[] }> = { idle: { native: [], ref: [] }, bulk: { native: [], ref: [] } };
  try {
    for (let i = 0; i < RUNS; i++) {
      for (const mode of ['idle', 'bulk'] as const) {
        // Interleaved, so that both see the same machine (other work on it comes and goes).
        const n = await nativeOnce(mode === 'bulk');
        const c = cRefOnce(exe, mode === 'bulk');
        runs[mode].native.push(n);
        runs[mode].ref.push(c);
        process.stderr.write(`  run ${i + 1}/${RUNS} ${mode}: native p50 ${n.p50.toFixed(0)} p99 ${n.p99.toFixed(0)} max ${n.max?.toFixed(0)} (thread p50 ${n.threadP50?.toFixed(0)}) us; C ref p50 ${c.p50} p99 ${c.p99} us\n`);
      }
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const rows: BenchRow[] = [];
  for (const mode of ['idle', 'bulk'] as const) {
    const { native, ref } = runs[mode];
    const name = `fault-native-${mode === 'idle' ? 'idle-link' : 'bulk-streaming'}`;
    const p50 = median(native.map((f) => f.p50));
    const p99 = median(native.map((f) => f.p99));
    const refP50 = median(ref.map((f) => f.p50));
    const refP99 = median(ref.map((f) => f.p99));
    const how = `median of ${native.length}, ${PAGES} faults each`;
    rows.push(
      { name, metric: `fault p50 (${how})`, value: p50, unit: 'us', reference: { name: 'C postcopy_ref p50, same run', value: refP50 }, target: '<= 1.5x ref', met: p50 <= 1.5 * refP50, extra: { runs: native, cRefRuns: ref } },
      { name, metric: `fault p99 (${how})`, value: p99, unit: 'us', reference: { name: 'C postcopy_ref p99, same run', value: refP99 }, ...(mode === 'bulk' ? { target: '<= 1000 us', met: p99 <= 1000 } : {}) },
      { name, metric: 'fault thread p50 (request noted -> placed)', value: median(native.map((f) => f.threadP50 ?? NaN)), unit: 'us' },
    );
  }
  return rows;
}
