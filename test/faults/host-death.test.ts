// A host dying after the switchover — the failures no reconnection can repair. Each side must
// then behave safely: when the destination dies, the source says so, never resumes the guest
// (it may have run on the destination) and keeps it until the operator abandons it; when the
// source dies, the destination's guest blocks on its first missing page instead of reading a hole
// as zeros, and the destination reports the outage.
import { strict as assert } from 'node:assert';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { ApiClient } from '../../src/api/client.js';
import { killAll, makeSandbox, startDestination, startSource, useFileCache, type FerryProc, type Sandbox } from '../fixtures/migration/ferry-procs.js';
import { InjectionTally, migrateOutcome, startMigrate, waitForMigration } from './harness.js';

useFileCache('faults');

const GUEST_ARGS = ['--mib', '32', '--rate', '3000', '--random', '--report-ms', '100', '--verify-file', '/work/verify'];
// The 1 µs downtime target keeps a starved guest (few pages dirty after the pass) from ending as a
// stop-and-copy: the postcopy phase is what is tested.
const MIGRATE_ARGS = ['--mode', 'postcopy', '--downtime-target', '0.001', '--max-bandwidth', '8M', '--verify'];
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const tally = new InjectionTally('host deaths after the switchover');

describe('a host dies after the switchover (TLS-PSK)', () => {
  const procs: FerryProc[] = [];
  const sandboxes: Sandbox[] = [];
  after(() => {
    killAll(...procs);
    for (const sb of sandboxes) sb.cleanup();
  });

  test('destination killed mid postcopy: the source reports it, keeps the guest paused, and frees it on --abandon', async () => {
    const sb = makeSandbox();
    sandboxes.push(sb);
    const src = await startSource(sb, 'memtouch.wasm', GUEST_ARGS, '512M', 3);
    procs.push(src);
    const { proc: dst, port } = await startDestination(sb);
    procs.push(dst);
    tally.tried('kill');
    const mig = startMigrate(sb, port, 'tls-psk', MIGRATE_ARGS);
    procs.push(mig);
    await waitForMigration(sb.sock, (s) => s.state === 'postcopy', 'the postcopy phase');
    dst.kill();
    const paused = await waitForMigration(sb.sock, (s) => s.state === 'postcopy-paused', 'the source to notice the loss');
    assert.equal(paused['committed'], true);
    assert.match(String(paused['error']), /\S/, 'the source says what went wrong');
    assert.notEqual((await new ApiClient(sb.sock).info()).state, 'running', 'the source never resumes a guest that ran elsewhere');
    const seqs = src.seqs().length;
    await sleep(500);
    assert.equal(src.seqs().length, seqs, 'no guest output on the source after the commit');
    await new ApiClient(sb.sock).abandonMigration();
    const out = await migrateOutcome(mig);
    assert.equal(out.code, 6, `ferry migrate exit ${out.code}: ${JSON.stringify(out.json)}`);
    assert.match(JSON.stringify(out.json['error']), /abandon/i);
    tally.survived('kill'); // handled as designed: no split brain, guest freed on request
  });

  test('source killed mid postcopy: the destination guest blocks on a missing page, never reads it as zeros', async () => {
    const sb = makeSandbox();
    sandboxes.push(sb);
    const src = await startSource(sb, 'memtouch.wasm', GUEST_ARGS, '512M', 3);
    procs.push(src);
    const dstSock = join(sb.dir, 'dst.sock');
    const { proc: dst, port } = await startDestination(sb, ['--tls-psk', sb.keyFile, '--api-sock', dstSock]);
    procs.push(dst);
    tally.tried('kill');
    const mig = startMigrate(sb, port, 'tls-psk', MIGRATE_ARGS);
    procs.push(mig);
    await waitForMigration(sb.sock, (s) => s.state === 'postcopy', 'the postcopy phase');
    src.kill();
    const status = await waitForMigration(dstSock, (s) => s.state === 'postcopy-paused', 'the destination to notice the loss');
    assert.match(String(status['error']), /\S/);
    // Verification reads every page: with the source gone it must block on the first hole.
    writeFileSync(join(sb.dstWork, 'verify'), '');
    await sleep(2000);
    assert.doesNotMatch(dst.out, /^VERIFY /m, 'the guest did not read missing pages as zeros');
    assert.ok(dst.running, 'the destination waits for the source to come back');
    tally.survived('kill');
  });
});
