// End-to-end postcopy between real `ferry` processes on loopback (TLS 1.3 PSK): a guest that
// rewrites 1 GiB as fast as it can defeats precopy on a capped stream (exit 3, guest
// keeps running) and then moves with postcopy; auto mode picks postcopy by itself; a pass 0 that
// such a guest makes futile is cut short; a WASI fd_read into a hole on the destination
// (the kernel faulting inside read()) is served. Assertions are on content, never on timing.
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '../src/api/client.js';
import { checkSequence } from '../src/cli/commands/demo.js';
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
/** Working set rewritten at full speed (the issue asks for 1 GiB; it fits this test's budget). */
const BUSY_MIB = 1024;
const busyArgs = ['--mib', String(BUSY_MIB), '--rate', '0', '--report-ms', '100', '--verify-file', '/work/verify'];

useFileCache('migration-postcopy');

interface PostcopyFigures {
  pagesRequested: number;
  pagesPushed: number;
  faults: number;
  faultLatencyUs: { p50: number; p99: number; max: number };
  guestBlockedMs: number;
}

describe('postcopy migration, end to end', () => {
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
  /**
   * After a move: the source exits 0; the destination's guest goes on counting, checks its own
   * memory (`verify` matches its line) and exits 0; the SEQ lines run on without a gap or a repeat.
   */
  const movedIntact = async (src: FerryProc, dst: FerryProc, verify: RegExp) => {
    assert.equal(await src.exitWithin(30_000), 0, 'the source process exits 0 after the move');
    await dst.waitFor(/^SEQ \d+ /m, 'a SEQ line from the destination', 60_000);
    assert.match(await verifyGuest(dst, sb.dstWork), verify);
    assert.equal(await dst.exitWithin(60_000), 0);
    const seq = checkSequence(src.out, dst.out);
    assert.ok(seq.ok, `${seq.problem} (source ${seq.source}, destination ${seq.destination})`);
  };

  test(`${BUSY_MIB} MiB rewritten at full speed: capped precopy does not converge, postcopy moves it intact`, async () => {
    fresh();
    const src = await startSource(sb, 'memtouch.wasm', busyArgs, '2G', 3);
    procs.push(src);

    // 1. Precopy alone cannot catch a guest that rewrites its memory at full speed when the stream
    //    is capped: exit 3, converged false, and the guest goes on here. The cap is what makes this
    //    certain. Uncapped, the native stream is fast enough to converge for this guest. Even with a
    //    1 µs target, a pass of a few milliseconds can find nothing dirty when the guest's thread
    //    was off the CPU for that window (CI saw exactly that: converged after 14 passes). With a
    //    cap, every pass after the first lasts seconds, and no busy guest stays idle that long.
    //    The cap holds on the native precopy stream too (its own token bucket): this is the native path.
    const first = await startDestination(sb);
    procs.push(first.proc);
    const pre = await runMigrate(sb, first.port, [
      '--mode', 'precopy', '--max-bandwidth', '512M', '--precopy-timeout', '3', '--downtime-target', '0.001', '--verify',
    ]);
    assert.equal(pre.code, 3, `precopy exit code ${pre.code}: ${JSON.stringify(pre.json)}`);
    assert.equal(pre.json['converged'], false);
    assert.equal((await new ApiClient(sb.sock).info()).state, 'running');
    const seen = src.seqs().length;
    await src.waitFor(new RegExp(`^SEQ ${seen + 2} `, 'm'), 'more SEQ lines on the source after the failed precopy', 30_000);
    assert.notEqual(await first.proc.exitWithin(60_000), 0, 'the abandoned destination exits non-zero');
    assert.equal(first.proc.out, '', 'the abandoned destination never ran the guest');

    // 2. Postcopy: one precopy pass, then the guest runs on the destination with holes.
    const second = await startDestination(sb);
    procs.push(second.proc);
    //    The 1 µs target and the cap, as in step 1: the first pass lasts about 2 s and even one page
    //    left dirty misses the target, so a starved guest cannot make this a stop-and-copy.
    const { code, json: r, stderr } = await runMigrate(sb, second.port, ['--mode', 'postcopy', '--verify', '--downtime-target', '0.001', '--max-bandwidth', '512M']);
    assert.equal(code, 0, `postcopy failed: ${stderr}`);
    assert.equal(r['mode'], 'postcopy');
    assert.equal(r['verified'], true);
    const memoryBytes = Number(r['memoryBytes']);
    assert.ok(memoryBytes >= BUSY_MIB * MiB);
    assert.ok(Number(r['bytesSent']) <= 2 * memoryBytes * 1.005 + MiB, `bytesSent ${r['bytesSent']} > 2 × ${memoryBytes} × 1.005 + 1 MiB`);
    const pc = r['postcopy'] as PostcopyFigures | undefined;
    assert.ok(pc, 'the report has postcopy figures');
    assert.ok(pc.pagesPushed + pc.pagesRequested > 0, 'pages moved after the switchover');
    assert.equal(await src.exitWithin(30_000), 0, 'the source process exits 0 after the move');

    await second.proc.waitFor(/^SEQ \d+ /m, 'a SEQ line from the destination', 60_000);
    const verify = await verifyGuest(second.proc, sb.dstWork);
    assert.equal(verify, `VERIFY OK ${(BUSY_MIB * MiB) / 4096}`);
    assert.equal(await second.proc.exitWithin(60_000), 0);
    const seq = checkSequence(src.out, second.proc.out);
    assert.ok(seq.ok, `${seq.problem} (source ${seq.source}, destination ${seq.destination})`);
  });

  test('auto mode picks postcopy by itself for a guest precopy cannot catch', async () => {
    fresh();
    const src = await startSource(sb, 'memtouch.wasm', busyArgs, '2G', 3);
    procs.push(src);
    const { proc: dst, port } = await startDestination(sb);
    procs.push(dst);
    // The 1 µs target keeps stop-and-copy off the table after the first pass (about a second of a
    // busy guest), so auto must choose postcopy; at the default target a starved guest could let
    // precopy converge. The cap makes that pass last (about 2 s) on any machine, and keeps even one
    // dirty page above the target however fast the stream is.
    const { code, json: r, stderr } = await runMigrate(sb, port, ['--mode', 'auto', '--downtime-target', '0.001', '--verify', '--max-bandwidth', '512M']);
    assert.equal(code, 0, `auto failed: ${stderr}`);
    assert.equal(r['mode'], 'postcopy');
    assert.equal(r['converged'], false);
    assert.equal(r['verified'], true);
    assert.ok(Number(r['bytesSent']) <= 2 * Number(r['memoryBytes']) * 1.005 + MiB, `bytesSent ${r['bytesSent']}`);
    await movedIntact(src, dst, /^VERIFY OK /);
  });

  test('a guest that rewrites what pass 0 sends faster than it goes: the pass is cut short, and what it left out crosses once, by postcopy, intact', async () => {
    fresh();
    const mib = 64;
    const src = await startSource(sb, 'memtouch.wasm', ['--mib', String(mib), '--rate', '0', '--report-ms', '100', '--verify-file', '/work/verify'], '256M', 3);
    procs.push(src);
    const { proc: dst, port } = await startDestination(sb);
    procs.push(dst);
    // At 16 MB/s pass 0 would take about 4 s; the guest rewrites its 64 MiB many times a second,
    // so by the time the pass has covered a sixteenth of the memory (the least it is judged on)
    // most of what it sent is written again, and it is judged again every 50 ms after that.
    const { code, json: r, stderr } = await runMigrate(sb, port, ['--mode', 'postcopy', '--verify', '--max-bandwidth', '16M', '--downtime-target', '0.001']);
    assert.equal(code, 0, `postcopy failed: ${stderr}`);
    assert.equal(r['mode'], 'postcopy');
    assert.equal(r['verified'], true, 'the digests of all memory match');
    const cut = r['precopyCut'] as { atPage: number; leftOutPages: number } | undefined;
    assert.ok(cut, `pass 0 was cut short: ${JSON.stringify(r)}`);
    const pages = Number(r['memoryBytes']) / 4096;
    assert.ok(cut.atPage > 0 && cut.atPage < pages && cut.leftOutPages > 0, JSON.stringify(cut));
    assert.ok(Number(r['bytesSent']) <= 2 * Number(r['memoryBytes']) * 1.005 + MiB, `bytesSent ${r['bytesSent']}`);
    await movedIntact(src, dst, new RegExp(`^VERIFY OK ${(mib * MiB) / 4096}$`));
  });

  test('fd_read into a hole on the destination is served (the kernel faults inside read())', async () => {
    fresh();
    // Both hosts see the same directory: the open blob.bin is reopened by path on the destination.
    const shared: Sandbox = { ...sb, dstWork: sb.srcWork };
    const src = await startSource(shared, 'fileio.wasm', ['--dir', '/work', '--read-into', '64', '--rounds', '1000000', '--interval-ms', '0'], '512M', 0);
    procs.push(src);
    await src.waitFor(/^READ OK 3$/m, 'three rounds read on the source', 240_000);
    const { proc: dst, port } = await startDestination(shared);
    procs.push(dst);
    // Postcopy, not a stop-and-copy: `--mode postcopy` still stops and copies when the rest fits the
    // downtime target, as QEMU does, and CI once saw pass 0 land in a round's verify loop (nothing
    // dirty, so precopy). The cap makes pass 0 (the 64 MiB buffer) last about two seconds, which
    // spans many read rounds, and makes the background stream slower than the guest's reads, so
    // the destination's read() overtakes it and faults on holes.
    const { code, json: r, stderr } = await runMigrate(shared, port, ['--mode', 'postcopy', '--verify', '--max-bandwidth', '32M', '--downtime-target', '0.001']);
    assert.equal(code, 0, `postcopy failed: ${stderr}`);
    assert.equal(r['mode'], 'postcopy');
    assert.equal(r['verified'], true);
    assert.equal(await src.exitWithin(30_000), 0);
    // Rounds go on after the switchover, every one checked byte by byte by the guest itself.
    await dst.waitFor(/^READ OK \d+$(?:[\s\S]*^READ OK \d+$){2}/m, 'three READ OK lines from the destination', 120_000);
    dst.kill();
    await dst.exited;
    assert.doesNotMatch(src.out + dst.out, /READ FAIL/);
    const rounds = (out: string) => [...out.matchAll(/^READ OK (\d+)$/gm)].map((m) => Number(m[1]));
    const all = [...rounds(src.out), ...rounds(dst.out)];
    all.forEach((n, i) => assert.equal(n, i + 1, 'rounds continue across the move without a gap or a repeat'));
    const pc = r['postcopy'] as PostcopyFigures | undefined;
    assert.ok(pc, 'the report has postcopy figures');
    assert.ok(pc.faults > 0, `the destination faulted on holes: ${JSON.stringify(pc)}`);
    process.stderr.write(`# fileio postcopy: ${JSON.stringify(pc)}\n`);
  });
});
