// Faults in the closing exchange of a postcopy move (the destination's FAULT_STATS, DIGEST and DONE,
// then the source's DONE), through the FaultProxy between real ferry processes. Once the
// destination holds every page the migration has completed, whatever the connections do next:
// neither side may then report a failure, or wait out its whole recovery timeout for a peer that
// has nothing left to give (docs/failures.md, "After every page arrived").
import { strict as assert } from 'node:assert';
import { after, test } from 'node:test';
import { FerryProc, killAll, makeSandbox, startDestination, startSource, useFileCache, type Sandbox } from '../fixtures/migration/ferry-procs.js';
import { assertGuestMoved, migrateOutcome, startMigrate, waitForMigration } from './harness.js';
import { FaultProxy } from './proxy.js';
import { encodeMessage } from '../../src/migration/wire/index.js';

useFileCache('faults');

const GUEST_MIB = 32;
const GUEST_PAGES = (GUEST_MIB * 1024 * 1024) / 4096;
const GUEST_ARGS = ['--mib', String(GUEST_MIB), '--rate', '3000', '--random', '--report-ms', '100', '--verify-file', '/work/verify'];
// The 1 µs downtime target keeps a starved guest (few pages dirty after the pass) from ending as a
// stop-and-copy: the postcopy phase is what is tested.
const MIGRATE_ARGS = ['--mode', 'postcopy', '--downtime-target', '0.001', '--max-bandwidth', '12M', '--verify'];
/** The destination's recovery timeout here: short, so that giving up on the source is seen in seconds. */
const DESTINATION_RECOVER_S = 4;

/** FAULT_STATS on the wire (fixed size: every field is a u64, CRC or not): what the source gets before the stall. */
const FAULT_STATS_BYTES = encodeMessage({
  type: 'FAULT_STATS', faults: 0, pagesRequested: 0, pagesPushed: 0, latencyUs: { p50: 0, p99: 0, max: 0 }, guestBlockedUs: 0, durationMs: 0,
}).reduce((n, b) => n + b.length, 0);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const procs: FerryProc[] = [];
const sandboxes: Sandbox[] = [];
after(() => {
  killAll(...procs);
  for (const sb of sandboxes) sb.cleanup();
});

/**
 * A memtouch source, a destination with `destFlags` and a FaultProxy in front of it; runs `body`,
 * and when it fails adds the injections and what each side printed.
 */
async function closingCase(destFlags: string[], body: (c: { sb: Sandbox; src: FerryProc; dst: FerryProc; proxy: FaultProxy }) => Promise<void>): Promise<void> {
  const sb = makeSandbox();
  sandboxes.push(sb);
  const src = await startSource(sb, 'memtouch.wasm', GUEST_ARGS, '512M', 3);
  procs.push(src);
  const { proc: dst, port } = await startDestination(sb, ['--insecure', ...destFlags]);
  procs.push(dst);
  const proxy = await FaultProxy.start('127.0.0.1', port);
  try {
    await body({ sb, src, dst, proxy });
  } catch (err) {
    (err as Error).message += `\n--- injections ---\n${proxy.describe().join('\n')}\n--- source stderr ---\n${src.err.slice(-2000)}\n--- destination stderr ---\n${dst.err.slice(-2500)}`;
    throw err;
  } finally {
    await proxy.close();
    killAll(src, dst);
  }
}

test("the source's acknowledgement of DONE never reaches the destination: both sides complete, neither fails", () =>
  closingCase(['--recover-timeout', String(DESTINATION_RECOVER_S)], async ({ sb, src, dst, proxy }) => {
    const mig = startMigrate(sb, proxy.port, 'insecure', MIGRATE_ARGS);
    procs.push(mig);
    await waitForMigration(sb.sock, (s) => s.state === 'postcopy', 'the postcopy phase');
    // Injected fault: the destination's closing messages reach the source 1.5 s late per chunk,
    // which leaves time to hold back, for ever, what the source sends after them (its DONE).
    proxy.inject({ kind: 'delay', connection: 'bulk', direction: 'to-source', delayMs: 1500 });
    await waitForMigration(sb.sock, (s) => s.state === 'verifying', 'the source to wait for the closing messages');
    proxy.inject({ kind: 'stall', connection: 'bulk', direction: 'to-destination', stallMs: Infinity });
    const out = await migrateOutcome(mig, 60_000);
    assert.equal(out.code, 0, `ferry migrate exit ${out.code}: ${JSON.stringify(out.json)}\n${out.stderr.slice(-1500)}`);
    assert.equal(out.json['verified'], true, 'the DIGEST came: memory digests match');
    // The source is done (its connections closed): the destination never gets the acknowledgement,
    // waits its recovery timeout for a source that does not come back, and completes anyway.
    await dst.waitFor(/ferry: migration completed; every page was placed and DONE sent, but the source's acknowledgement never came/, 'the destination to complete without the acknowledgement', (DESTINATION_RECOVER_S + 60) * 1000, 'err');
    assert.doesNotMatch(dst.err, /migration did not complete/);
    assert.ok(proxy.injections().some((r) => r.kind === 'stall'), `the stall never happened: ${proxy.describe().join('; ')}`);
    await assertGuestMoved(sb, src, dst, GUEST_PAGES);
  }),
);

test('the destination dies after FAULT_STATS reached the source: the source completes within its closing bound, not its recovery timeout', () =>
  closingCase([], async ({ sb, src, dst, proxy }) => {
    // A recovery timeout longer than the closing bound (30 s): without the bound the source would
    // retry the dead destination for all of it and then fail.
    const mig = startMigrate(sb, proxy.port, 'insecure', [...MIGRATE_ARGS, '--recover-timeout', '45']);
    procs.push(mig);
    await waitForMigration(sb.sock, (s) => s.state === 'postcopy', 'the postcopy phase');
    // Injected faults: the closing messages are delayed (time to aim the next fault), FAULT_STATS
    // passes, DIGEST and DONE are held back for ever, then the destination process is killed.
    proxy.inject({ kind: 'delay', connection: 'bulk', direction: 'to-source', delayMs: 1500 });
    await waitForMigration(sb.sock, (s) => s.state === 'verifying', 'the source to wait for the closing messages');
    proxy.inject({ kind: 'stall', connection: 'bulk', direction: 'to-source', at: { afterBytes: FAULT_STATS_BYTES }, stallMs: Infinity });
    const deadline = Date.now() + 30_000;
    while (!proxy.injections().some((r) => r.kind === 'stall')) {
      assert.ok(Date.now() < deadline, `FAULT_STATS never passed: ${proxy.describe().join('; ')}`);
      await sleep(20);
    }
    await sleep(1000); // the source reads FAULT_STATS (a margin: a busy machine may take longer than a few ms)
    dst.child.kill('SIGKILL');
    const out = await migrateOutcome(mig, 90_000);
    assert.equal(out.code, 0, `ferry migrate exit ${out.code}: ${JSON.stringify(out.json)}\n${out.stderr.slice(-1500)}`);
    assert.match(String(out.json['closingLost']), /the destination holds every page \(FAULT_STATS came\), but its closing DIGEST and DONE did not/);
    assert.equal(out.json['verified'], null, 'the DIGEST never came: nothing was verified');
    assert.equal(await src.exitWithin(30_000), 0, 'the source process exits 0: its guest moved');
  }),
);
