// Faults injected into native precopy's stream (the data plane connection before the commit, issue
// 14), through the FaultProxy between real ferry processes: one flipped bit and a connection cut in
// the middle of pass 0. Either must end the migration before the commit: `ferry migrate` exits 6,
// the source guest never stopped, the destination exits non-zero without running the guest (a
// flipped bit is refused, never placed). Then the same source moves for real through the proxy,
// natively, and the guest verifies every page on the destination.
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '../../src/api/client.js';
import { FerryProc, killAll, makeSandbox, startSource, useFileCache, type Sandbox } from '../fixtures/migration/ferry-procs.js';
import { SECURITIES, assertGuestMoved, migrateOutcome, startDestinationWith, startMigrate } from './harness.js';
import { nativeFaultsEnabled } from '../../src/migration/dataplane/connect.js';
import { FaultProxy } from './proxy.js';

useFileCache('faults');
process.env['FERRY_TRACE'] = 'phases';

const GUEST_MIB = 64;
const GUEST_ARGS = ['--mib', String(GUEST_MIB), '--rate', '2000', '--report-ms', '100', '--verify-file', '/work/verify'];
// Auto mode (the native data plane is offered where postcopy may happen); the stream uncapped.
const MIGRATE_ARGS = ['--verify'];
const MiB = 1024 * 1024;

for (const sec of SECURITIES) {
  // Where the data plane addon cannot load (or FERRY_NATIVE_FAULTS=0) there is no native stream to fault.
  describe(`native precopy under faults (${sec})`, { skip: !nativeFaultsEnabled() && 'the native data plane is not available here' }, () => {
    let sb: Sandbox;
    let src: FerryProc;
    const procs: FerryProc[] = [];
    before(async () => {
      sb = makeSandbox();
      src = await startSource(sb, 'memtouch.wasm', GUEST_ARGS, '512M', 3);
      procs.push(src);
    });
    after(() => {
      killAll(...procs);
      sb.cleanup();
    });

    const cases = [
      { name: 'one flipped bit in the data plane stream mid pass 0 (injected by the proxy) is refused, never placed', kind: 'corrupt' as const, at: 8 * MiB + 1234, dstSays: /native precopy: refused frame \d+: it failed authentication/ },
      { name: 'the data plane connection cut mid pass 0', kind: 'cut' as const, at: 12 * MiB, dstSays: /native precopy: |ended before the commit/ },
    ];
    for (const c of cases) {
      test(c.name, { timeout: 180_000 }, async () => {
        const { proc: dst, port } = await startDestinationWith(sb, sec);
        procs.push(dst);
        const proxy = await FaultProxy.start('127.0.0.1', port);
        try {
          proxy.inject({ kind: c.kind, connection: 'dataplane', direction: 'to-destination', at: { atByte: c.at } });
          const seqBefore = src.seqs().length;
          const mig = startMigrate(sb, proxy.port, sec, MIGRATE_ARGS);
          procs.push(mig);
          const out = await migrateOutcome(mig);
          assert.ok(proxy.injections().some((r) => r.kind === c.kind && r.channel === 'dataplane'), `the ${c.kind} never happened: ${proxy.describe().join('; ')}`);
          assert.equal(out.code, 6, `ferry migrate exit ${out.code} (want 6): ${JSON.stringify(out.json)}`);
          assert.ok(out.json['error'], 'the JSON names the error');
          assert.match(src.err, /native precopy thread started/, 'the pages went on the native path');
          // The source guest never stopped: running, and printing more.
          assert.equal((await new ApiClient(sb.sock).info()).state, 'running');
          await src.waitFor(new RegExp(`^SEQ ${seqBefore + 3} `, 'm'), 'more SEQ lines on the source', 30_000);
          assert.notEqual(await dst.exitWithin(30_000), 0, 'the destination exits non-zero');
          assert.match(dst.err, c.dstSays);
          assert.equal(dst.out, '', 'the destination never ran the guest');
        } finally {
          await proxy.close();
        }
      });
    }

    test('then the guest moves natively through the proxy, and verifies every page on the destination', { timeout: 180_000 }, async () => {
      const { proc: dst, port } = await startDestinationWith(sb, sec);
      procs.push(dst);
      const proxy = await FaultProxy.start('127.0.0.1', port);
      try {
        const mig = startMigrate(sb, proxy.port, sec, MIGRATE_ARGS);
        procs.push(mig);
        const out = await migrateOutcome(mig);
        assert.equal(out.code, 0, `ferry migrate failed: ${out.stderr.slice(-2000)}`);
        assert.equal(out.json['verified'], true);
        assert.ok(Number(out.json['bytesSent']) <= 2 * Number(out.json['memoryBytes']) * 1.005 + MiB, `bytesSent ${out.json['bytesSent']}`);
        // Every pass went natively, and the destination saw the precopy session closed before the commit.
        assert.match(src.err, /\(pass 0: \d+ pages in [\d.]+ ms, [\d.]+ MB so far, native\)/);
        assert.match(dst.err, /native precopy stream closed/);
        await assertGuestMoved(sb, src, dst, (GUEST_MIB * MiB) / 4096);
      } finally {
        await proxy.close();
      }
    });
  });
}
