// GET /metrics: the Prometheus text format's rules (HELP and TYPE for every family, names,
// counters ending in _total and never going down, cumulative histograms ending at +Inf with
// _count), checked strictly here and by parse-prometheus-text-format; the figures a real guest's
// host exposes after pauses and a snapshot; and a source's counters across a migration's end.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GuestMetrics, type MetricsInput } from '../src/api/metrics.js';
import type { GuestInfo, MigrationStatus } from '../src/api/types.js';
import { FerryProcess } from '../src/cli/ferry-process.js';
import { GUESTS, tmpDir, useSharedCache } from './fixtures/guest/helpers.js';
import { checkExposition, valueOf } from './fixtures/prometheus-format.js';

useSharedCache();

const info: GuestInfo = { state: 'running', module: { path: 'x.wasm', hash: 'ab' }, memoryBytes: 65536 * 4, maxMemoryBytes: 65536 * 16, uptimeMs: 1500, exitCode: null, pid: 1 };

function input(m: MigrationStatus | null, extra: Partial<MetricsInput> = {}): MetricsInput {
  return { info, residentPages: 12, migration: m, faultLatenciesUs: null, ...extra };
}

function assertValid(text: string) {
  const { problems, families } = checkExposition(text);
  assert.deepEqual(problems, [], text);
  return families;
}

test('the checks catch what breaks the format or the conventions', () => {
  const bad: [string, RegExp][] = [
    ['ferry_a_total 1\n', /not under its family/],
    ['# HELP ferry_a x\n# TYPE ferry_a counter\nferry_a 1\n', /must end in _total/],
    ['# HELP ferry_a_ms x\n# TYPE ferry_a_ms gauge\nferry_a_ms 1\n', /base units/],
    ['# TYPE ferry_a gauge\nferry_a 1\n', /no HELP/],
    ['# HELP ferry_a_total x\n# TYPE ferry_a_total counter\nferry_a_total -1\n', /negative/],
    ['# HELP ferry_h x\n# TYPE ferry_h histogram\nferry_h_bucket{le="1"} 2\nferry_h_bucket{le="+Inf"} 1\nferry_h_sum 1\nferry_h_count 1\n', /not cumulative/],
    ['# HELP ferry_h x\n# TYPE ferry_h histogram\nferry_h_bucket{le="1"} 1\nferry_h_sum 1\nferry_h_count 1\n', /le="\+Inf"/],
    ['# HELP ferry_a x\n# TYPE ferry_a gauge\nferry_a{k="1"} 1\nferry_a{k="1"} 2\n', /twice/],
    ['# HELP ferry_a x\n# TYPE ferry_a gauge\nferry_a 1', /newline/],
  ];
  for (const [text, want] of bad) {
    const { problems } = checkExposition(text);
    assert.ok(problems.some((p) => want.test(p)), `${JSON.stringify(text)}: expected a problem matching ${want}, got ${JSON.stringify(problems)}`);
  }
});

test('a source: counters grow through a migration and stay put at its end; pages by kind; downtime', () => {
  const gm = new GuestMetrics();
  const before = assertValid(gm.render(input(null), '9.9.9'));
  assert.equal(valueOf(before, 'ferry_migration_phase', { role: 'none', phase: 'none' }), 1);
  assert.equal(valueOf(before, 'ferry_build_info', { version: '9.9.9' }), 1);
  assert.equal(valueOf(before, 'ferry_guest_state', { state: 'running' }), 1);
  assert.equal(valueOf(before, 'ferry_guest_state', { state: 'paused' }), 0);
  assert.equal(valueOf(before, 'ferry_guest_uptime_seconds'), 1.5);
  assert.equal(valueOf(before, 'ferry_guest_resident_pages'), 12);
  assert.equal(before.has('ferry_migration_downtime_seconds'), false, 'no downtime before a migration');

  const live: MigrationStatus = {
    role: 'source', state: 'postcopy', bytesSent: 1000, bytesReceived: 50, dataPages: 7, zeroPages: 3, untouchedPages: 90,
    postcopy: { faults: 4, pagesRequested: 4, pagesPushed: 2, guestBlockedMs: 2.5, faultLatencyUs: { p50: 1, p99: 2, max: 3 }, durationMs: 9 },
  };
  gm.migrationStarted();
  const during = assertValid(gm.render(input(live), '1'));
  assert.equal(valueOf(during, 'ferry_migration_phase', { role: 'source', phase: 'postcopy' }), 1);
  assert.equal(valueOf(during, 'ferry_migration_phase', { role: 'source', phase: 'precopy' }), 0);
  assert.equal(valueOf(during, 'ferry_migration_sent_bytes_total'), 1000);
  assert.equal(valueOf(during, 'ferry_migration_sent_pages_total', { kind: 'untouched' }), 90);
  assert.equal(valueOf(during, 'ferry_postcopy_blocked_seconds_total'), 0.0025);

  const final = { ...live, state: 'completed', bytesSent: 1200 };
  gm.migrationEnded('completed', final, { downtimeMs: 12.5 });
  // The last status is still 'completed': its figures must not count twice.
  const after = assertValid(gm.render(input(final), '1'));
  assert.equal(valueOf(after, 'ferry_migration_sent_bytes_total'), 1200);
  assert.equal(valueOf(after, 'ferry_migrations_total', { result: 'completed' }), 1);
  assert.equal(valueOf(after, 'ferry_migration_downtime_seconds'), 0.0125);
  assert.equal(valueOf(after, 'ferry_postcopy_faults_total'), 4);

  // A second migration adds to the first.
  gm.migrationStarted();
  const second = assertValid(gm.render(input({ role: 'source', state: 'precopy', bytesSent: 10 }), '1'));
  assert.equal(valueOf(second, 'ferry_migration_sent_bytes_total'), 1210);
});

test('a destination: received bytes and pages, the fault latency histogram, refused peers when its status has them', () => {
  const gm = new GuestMetrics();
  const m: MigrationStatus = { role: 'destination', state: 'postcopy', bytesSent: 10, bytesReceived: 5000, pagesReceived: 40, refusedPeers: 2, postcopy: { faults: 3, pagesRequested: 3, pagesPushed: 1, guestBlockedMs: 1 } };
  const fams = assertValid(gm.render(input(m, { faultLatenciesUs: [80, 150, 3000] }), '1'));
  assert.equal(valueOf(fams, 'ferry_migration_received_bytes_total'), 5000);
  assert.equal(valueOf(fams, 'ferry_migration_received_pages_total'), 40);
  assert.equal(valueOf(fams, 'ferry_migration_refused_peers_total'), 2);
  const h = 'ferry_postcopy_fault_latency_seconds';
  assert.equal(valueOf(fams, h, {}, `${h}_count`), 3);
  assert.equal(valueOf(fams, h, { le: '0.0001' }, `${h}_bucket`), 1);
  assert.equal(valueOf(fams, h, { le: '0.0002' }, `${h}_bucket`), 2);
  assert.equal(valueOf(fams, h, { le: '0.005' }, `${h}_bucket`), 3);
  assert.ok(Math.abs(valueOf(fams, h, {}, `${h}_sum`)! - 0.00323) < 1e-12);
});

function get(socketPath: string, p: string): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path: p, method: 'GET', agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

test('GET /metrics on a running guest: state, memory, resident pages, pauses and their histogram, snapshots', async () => {
  const dir = tmpDir('metrics');
  const sock = path.join(dir, 'g.sock');
  const guest = new FerryProcess('guest', ['run', path.join(GUESTS, 'memtouch.wasm'), '--api-sock', sock, '--', '--mib', '4', '--idle', '--report-ms', '200', '--seconds', '600']);
  const ferry = async (...args: string[]) => {
    const p = new FerryProcess(args[0]!, args);
    const code = await p.exitWithin(60_000);
    assert.equal(code, 0, p.err);
  };
  try {
    await guest.waitFor(/^SEQ 1 /m, 'the guest', 120_000);
    for (let i = 0; i < 2; i++) {
      await ferry('pause', '--api-sock', sock);
      await ferry('resume', '--api-sock', sock);
    }
    await ferry('snapshot', '--api-sock', sock, '--to', path.join(dir, 'snap'), '--resume');
    const r = await get(sock, '/metrics');
    assert.equal(r.status, 200);
    assert.match(r.type, /^text\/plain; version=0\.0\.4/);
    const fams = assertValid(r.body);
    assert.equal(valueOf(fams, 'ferry_guest_state', { state: 'running' }), 1);
    // Three pauses: two asked for, one for the snapshot.
    assert.equal(valueOf(fams, 'ferry_guest_pauses_total'), 3);
    assert.equal(valueOf(fams, 'ferry_guest_pause_latency_seconds', {}, 'ferry_guest_pause_latency_seconds_count'), 3);
    assert.equal(valueOf(fams, 'ferry_snapshots_total', { kind: 'full' }), 1);
    assert.equal(valueOf(fams, 'ferry_snapshots_total', { kind: 'diff' }), 0);
    const memBytes = valueOf(fams, 'ferry_guest_memory_bytes')!;
    const resident = valueOf(fams, 'ferry_guest_resident_pages')!;
    assert.ok(memBytes >= 4 * 1048576, `memory ${memBytes}`);
    // memtouch wrote its 4 MiB: at least those pages are in RAM, and never more than the memory.
    assert.ok(resident >= 1024 && resident <= memBytes / 4096, `resident ${resident} of ${memBytes / 4096}`);
    assert.equal(valueOf(fams, 'ferry_migration_phase', { role: 'none', phase: 'none' }), 1);
    // The API's other answers stay JSON; /metrics refuses other methods like every route.
    const put = await new Promise<number>((resolve, reject) => {
      const req = request({ socketPath: sock, path: '/metrics', method: 'PUT', agent: false }, (res) => (res.resume(), resolve(res.statusCode ?? 0)));
      req.on('error', reject);
      req.end();
    });
    assert.equal(put, 405);
  } finally {
    guest.kill();
    await guest.exited;
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
