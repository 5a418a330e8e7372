// End-to-end precopy migration between real `ferry` processes on loopback (TLS 1.3 PSK): an idle
// guest with a large never-touched reserve, a guest rewriting memory at a moderate rate, a peer
// with the wrong key, and a destination killed mid-precopy. Assertions are on content (bytes,
// pages, digests, the guest's own VERIFY and SEQ lines, exit codes), never on timing.
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '../src/api/client.js';
import { checkSequence } from '../src/cli/commands/demo.js';
import { PHASE_MOVES } from '../src/migration/session/phases.js';
import {
  killAll,
  makeSandbox,
  runMigrate,
  startDestination,
  startSource,
  useFileCache,
  verifyGuest,
  type FerryProc,
  type Sandbox,
} from './fixtures/migration/ferry-procs.js';

const MiB = 1024 * 1024;
const PAGE = 4096;

useFileCache('migration-precopy');

/** Waits (up to a minute) until the source's migration is in precopy with more than `bytes` sent. */
async function waitForPrecopy(client: ApiClient, bytes: number): Promise<void> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const s = await client.migration().catch(() => null);
    if (s && s.state === 'precopy' && Number(s['bytesSent']) > bytes) return;
    if (Date.now() > deadline) throw new Error(`precopy never got going: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

describe('precopy migration, end to end', () => {
  let sb: Sandbox;
  const procs: FerryProc[] = [];
  before(() => {
    sb = makeSandbox();
  });
  after(() => {
    killAll(...procs);
    sb.cleanup();
  });
  const fresh = () => {
    killAll(...procs);
    sb.cleanup();
    sb = makeSandbox();
  };

  test('idle guest, 1 GiB memory with 256 MiB written and 64 MiB only read: only the written pages travel', async () => {
    fresh();
    const { proc: dst, port } = await startDestination(sb);
    procs.push(dst);
    // The pages only read are present on the source on every kernel (the zero page, or real pages of
    // zeros where the kernel maps those for read faults): they must cross as zero markers, not data.
    const src = await startSource(sb, 'memtouch.wasm', ['--mib', '256', '--reserve-mib', '768', '--read-mib', '64', '--idle', '--report-ms', '100', '--verify-file', '/work/verify'], '2G');
    procs.push(src);
    const { code, json: r, stderr } = await runMigrate(sb, port, ['--mode', 'precopy', '--verify']);
    assert.equal(code, 0, `migrate failed: ${stderr}`);
    assert.equal(r['mode'], 'precopy');
    assert.equal(r['converged'], true);
    assert.equal(r['verified'], true);
    assert.ok(Number(r['memoryBytes']) >= 1024 * MiB, `memoryBytes ${r['memoryBytes']}`);
    assert.ok(Number(r['bytesSent']) < 256 * MiB * 1.05, `bytesSent ${r['bytesSent']} ≥ 256 MiB + 5%`);
    assert.ok(Number(r['zeroPages']) >= (64 * MiB) / PAGE, `zeroPages ${r['zeroPages']}: the pages only read went as data`);
    assert.ok(Number(r['skippedNeverTouchedPages']) >= ((704 * MiB) / PAGE) * 0.95, `skippedNeverTouchedPages ${r['skippedNeverTouchedPages']}`);
    assert.equal(await src.exitWithin(30_000), 0, 'the source process exits 0 after the move');
    const verify = await verifyGuest(dst, sb.dstWork);
    assert.match(verify, /^VERIFY OK \d+$/);
    assert.equal(Number(verify.split(' ')[2]), (256 * MiB) / PAGE, 'every working-set page verified');
    assert.equal(await dst.exitWithin(60_000), 0);
    const seq = checkSequence(src.out, dst.out);
    assert.ok(seq.ok, seq.problem);
  });

  test('memtouch at a moderate rate: VERIFY OK on the destination, verified digest, unbroken SEQ', async () => {
    fresh();
    // The destination prints each phase it enters (FERRY_TRACE=phases, read at its start).
    process.env['FERRY_TRACE'] = 'phases';
    const starting = startDestination(sb);
    delete process.env['FERRY_TRACE'];
    const { proc: dst, port } = await starting;
    procs.push(dst);
    const src = await startSource(sb, 'memtouch.wasm', ['--mib', '128', '--rate', '2000', '--report-ms', '100', '--verify-file', '/work/verify'], '1G', 3);
    procs.push(src);
    const { code, json: r, stderr } = await runMigrate(sb, port, ['--mode', 'precopy', '--verify']);
    assert.equal(code, 0, `migrate failed: ${stderr}`);
    assert.equal(r['mode'], 'precopy');
    assert.equal(r['converged'], true);
    assert.equal(r['verified'], true);
    assert.ok(Number(r['precopyPasses']) >= 1);
    // Pass 0 carries the whole working set; later passes only rewritten pages.
    assert.ok(Number(r['pagesSent']) >= (128 * MiB) / PAGE, `pagesSent ${r['pagesSent']}`);
    assert.equal(await src.exitWithin(30_000), 0, 'the source process exits 0 after the move');
    await dst.waitFor(/^SEQ \d+ /m, 'a SEQ line from the destination', 60_000);
    const verify = await verifyGuest(dst, sb.dstWork);
    assert.match(verify, /^VERIFY OK /);
    assert.equal(await dst.exitWithin(60_000), 0);
    const seq = checkSequence(src.out, dst.out);
    assert.ok(seq.ok, `${seq.problem} (source ${seq.source}, destination ${seq.destination})`);
    assert.doesNotMatch(src.out, /^VERIFY/m, 'the source guest ran no more code after the move');
    // Phase lines and notes share the prefix; keep the phases (the table's names), once each in a row.
    const phases = [...dst.err.matchAll(/^ferry trace destination phase (\S+)/gm)].map((m) => m[1]!)
      .filter((p) => p in PHASE_MOVES).filter((p, i, a) => p !== a[i - 1]);
    assert.deepEqual(phases, ['handshake', 'precopy', 'switchover', 'verifying', 'completed'], 'a precopy destination never reports postcopy');
  });

  test('a peer with the wrong PSK is refused before any page moves; the source guest keeps running', async () => {
    fresh();
    // --max-refused 1: the destination gives up after this one refusal (by default it keeps waiting).
    const { proc: dst, port } = await startDestination(sb, ['--tls-psk', sb.keyFile, '--max-refused', '1']);
    procs.push(dst);
    const src = await startSource(sb, 'memtouch.wasm', ['--mib', '32', '--rate', '2000', '--report-ms', '100', '--verify-file', '/work/verify'], '256M');
    procs.push(src);
    const { code, json: r } = await runMigrate(sb, port, ['--mode', 'precopy', '--verify'], sb.wrongKeyFile);
    assert.equal(code, 6, `migrate exit code ${code}: ${JSON.stringify(r)}`);
    const err = r['error'] as { code: string; message: string } | undefined;
    assert.ok(err, 'the JSON names the error');
    assert.match(err.message, /TLS|handshake|refused|key|closed|reset/i);
    const info = await new ApiClient(sb.sock).info();
    assert.equal(info.state, 'running');
    // The guest goes on: new SEQ lines after the refusal.
    const seen = src.seqs().length;
    await src.waitFor(new RegExp(`^SEQ ${seen + 2} `, 'm'), 'more SEQ lines on the source', 30_000);
    assert.equal(dst.out, '', 'the destination never ran a guest');
    const verify = await verifyGuest(src, sb.srcWork);
    assert.match(verify, /^VERIFY OK /);
    assert.equal(await src.exitWithin(30_000), 0);
    src.seqs().forEach((n, i) => assert.equal(n, i + 1, 'the source SEQ runs on without a gap'));
    // The destination logs the refusal and, with --max-refused 1, gives up: exit 6.
    const dstCode = await dst.exitWithin(30_000);
    assert.equal(dstCode, 6, 'the destination exits 6 (--max-refused)');
    assert.match(dst.err, /^ferry: refused 127\.0\.0\.1:\d+ \([^)]*\): .*(TLS|handshake|key)/im, 'the destination says why');
    assert.match(dst.err, /gave up after 1 refused peer/);
  });

  test('destination killed mid-precopy: migrate fails, the source guest keeps running and verifies', async () => {
    fresh();
    const { proc: dst, port } = await startDestination(sb);
    procs.push(dst);
    const src = await startSource(sb, 'memtouch.wasm', ['--mib', '64', '--rate', '2000', '--report-ms', '100', '--verify-file', '/work/verify'], '256M');
    procs.push(src);
    // 64 MiB at 8 MB/s: pass 0 alone takes ~8 s, so the kill lands inside precopy.
    const migrating = runMigrate(sb, port, ['--mode', 'precopy', '--verify', '--max-bandwidth', '8M']);
    const client = new ApiClient(sb.sock);
    await waitForPrecopy(client, 4 * MiB);
    dst.kill();
    const { code, json: r } = await migrating;
    assert.equal(code, 6, `migrate exit code ${code}: ${JSON.stringify(r)}`);
    assert.ok(r['error'], 'the JSON names the error');
    assert.notEqual(await dst.exited, 0);
    assert.equal(dst.out, '', 'the destination never ran a guest');
    const info = await client.info();
    assert.equal(info.state, 'running');
    const seen = src.seqs().length;
    await src.waitFor(new RegExp(`^SEQ ${seen + 2} `, 'm'), 'more SEQ lines on the source', 30_000);
    const verify = await verifyGuest(src, sb.srcWork);
    assert.match(verify, /^VERIFY OK /);
    assert.equal(await src.exitWithin(30_000), 0);
    const seqs = src.seqs();
    seqs.forEach((n, i) => assert.equal(n, i + 1, 'the source SEQ runs on without a gap'));
  });
  test('a guest that exits mid-precopy ends the migration at once: error "guest", the destination runs nothing', async () => {
    fresh();
    const { proc: dst, port } = await startDestination(sb);
    procs.push(dst);
    const src = await startSource(sb, 'memtouch.wasm', ['--mib', '64', '--rate', '2000', '--report-ms', '100', '--verify-file', '/work/verify'], '256M');
    procs.push(src);
    // 64 MiB at 8 MB/s, rewritten at about that rate: precopy runs far longer than the guest does
    // once it is told to verify (memtouch exits 0 after its VERIFY line).
    const migrating = runMigrate(sb, port, ['--mode', 'precopy', '--max-bandwidth', '8M'], sb.keyFile, 120_000);
    await waitForPrecopy(new ApiClient(sb.sock), 4 * MiB);
    assert.match(await verifyGuest(src, sb.srcWork), /^VERIFY OK /);
    const { code, json: r } = await migrating;
    assert.equal(code, 6, `migrate exit code ${code}: ${JSON.stringify(r)}`);
    const error = r['error'] as { code?: string; message?: string } | undefined;
    assert.equal(error?.code, 'guest', `the error names the guest's end: ${JSON.stringify(r)}`);
    assert.match(error?.message ?? '', /exited with code 0 before the switchover/);
    assert.equal(await src.exitWithin(30_000), 0, 'the source process exits with its guest\'s code');
    assert.notEqual(await dst.exitWithin(30_000), 0, 'the destination gives up the stream that ended before COMMIT');
    assert.equal(dst.out, '', 'the destination never ran a guest');
  });
});
