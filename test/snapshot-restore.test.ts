// Snapshots end to end: write a memtouch guest, restore it eagerly and lazily (in this process for
// the memory digest, in new `ferry restore` processes for its output), diff snapshots, sparse files.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Guest } from '../src/guest/guest.js';
import { keepGuestThreadReady, waitingGuestThread, startSpareWorker, takeSpareWorker } from '../src/guest/spare-worker.js';
import { GuestMemory, WASM_PAGE_SIZE } from '../src/memory/guest-memory.js';
import { scanResidency } from '../src/memory/residency.js';
import { digestMemory } from '../src/migration/verify/digest.js';
import { SnapshotSession, loadEagerly, loadSnapshot, openLazyMemory, restoreSnapshot } from '../src/snapshot/index.js';
import { MEMTOUCH, ferry, ferryDone, fileText, seqNumbers, until } from './snapshot-helpers.js';

let tmp: string;
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'ferry-snap-'));
});
after(() => rmSync(tmp, { recursive: true, force: true }));

/** Digest of a paused guest's memory; untouched pages count as zero without being read. */
function liveDigest(memory: WebAssembly.Memory, maxBytes: number): string {
  const mem = new GuestMemory(memory, maxBytes / WASM_PAGE_SIZE);
  const present = scanResidency(mem).present;
  return digestMemory(mem.view(), mem.pageCount, (p) => !present.has(p));
}

test('memory restored eagerly and lazily has the digest the guest had at snapshot time, full and diff', async () => {
  const out = openSync(join(tmp, 'inproc.out'), 'w');
  const guest = await Guest.start({
    module: readFileSync(MEMTOUCH),
    args: ['memtouch', '--mib', '16', '--report-ms', '20'],
    stdio: { stdout: out },
    maxMemoryBytes: 256 << 20,
  });
  await until('memtouch to report', () => seqNumbers(join(tmp, 'inproc.out')).length >= 3);
  const session = new SnapshotSession(guest);
  const full = join(tmp, 'inproc-full');
  const diff = join(tmp, 'inproc-diff');
  await guest.pause();
  const digestFull = liveDigest(guest.memory, guest.maxMemoryBytes);
  const r1 = await session.take({ to: full, resume: true });
  assert.equal(r1.kind, 'full');
  assert.equal(r1.guestAfter, 'resumed');
  await until('more writes', () => seqNumbers(join(tmp, 'inproc.out')).length >= 8);
  await guest.pause();
  const digestDiff = liveDigest(guest.memory, guest.maxMemoryBytes);
  assert.notEqual(digestDiff, digestFull, 'the guest wrote between the snapshots');
  const r2 = await session.take({ to: diff, diffFrom: full });
  assert.equal(r2.kind, 'diff');
  assert.equal(r2.guestAfter, 'stopped');
  assert.ok(r2.pagesWritten > 0 && r2.pagesWritten < r1.pagesWritten + 16, 'a diff holds only rewritten pages');
  closeSync(out);

  // The memory as restored, before any guest code runs on it (a started guest rewrites its stack).
  for (const [dir, want] of [[full, digestFull], [diff, digestDiff]] as const) {
    const chain = loadSnapshot(dir);
    const isZero = (p: number) => (chain.location[p] ?? -1) < 0;
    const fresh = () => GuestMemory.create(chain.memory.bytes / WASM_PAGE_SIZE, chain.memory.maxBytes / WASM_PAGE_SIZE);
    const eager = fresh();
    await loadEagerly(chain, eager.view());
    assert.equal(digestMemory(eager.view(), eager.pageCount, isZero), want, `eager load of ${dir}`);
    // Lazy, fault path only: this thread reads every page; each first touch is a userfaultfd fault
    // served from the files — by the native file thread (dp_file.c), and by the fault worker where
    // that is turned off; for the full snapshot the worker is a spare started ahead, as `ferry
    // restore --lazy` starts one then (spare-worker.ts).
    for (const servedBy of ['native', 'worker'] as const) {
      const before = process.env['FERRY_NATIVE_FAULTS'];
      if (servedBy === 'worker') process.env['FERRY_NATIVE_FAULTS'] = '0';
      try {
        if (servedBy === 'worker' && dir === full) startSpareWorker('fault');
        const viaFaults = await openLazyMemory(chain, fresh());
        if (servedBy === 'worker' && dir === full) assert.equal(takeSpareWorker('fault'), null, 'the fault server adopted the spare worker');
        try {
          assert.equal(viaFaults.server.servedBy, servedBy);
          assert.equal(digestMemory(viaFaults.memory.view(), viaFaults.memory.pageCount, isZero), want, `lazy (faults, ${servedBy}) of ${dir}`);
          assert.ok(viaFaults.faults > 0, 'pages came through faults');
        } finally {
          await viaFaults.stop();
        }
      } finally {
        if (before === undefined) delete process.env['FERRY_NATIVE_FAULTS'];
        else process.env['FERRY_NATIVE_FAULTS'] = before;
      }
    }
    // Lazy, background loader: every pending page placed, then the fault server stops.
    const viaLoader = await openLazyMemory(chain, fresh());
    const placed = await viaLoader.load();
    assert.ok(placed > 0 && placed <= chain.presentPages);
    assert.equal(digestMemory(viaLoader.memory.view(), viaLoader.memory.pageCount, isZero), want, `lazy (loader) of ${dir}`);
  }
  // And a guest restored in this process runs on from the diff (startPaused: nothing ran yet).
  const r = await restoreSnapshot(diff, { lazy: true, startPaused: true, stdio: { stdout: openSync('/dev/null', 'w') } });
  try {
    assert.equal(r.guest.status, 'paused');
    assert.equal((await r.loaded).mode, 'lazy');
  } finally {
    await r.guest.stop();
  }
  const chain = loadSnapshot(diff);
  assert.equal(chain.layers.length, 2);
  // The pages some layer holds, counted from the chunks (layers overlap): the same as page by page.
  assert.equal(chain.presentPages, chain.location.filter((l) => l >= 0).length);
  assert.ok(chain.presentPages > 0);
});

test('keepGuestThreadReady: each restore adopts the guest thread booted ahead, the next boots once its guest runs, and the restored guest runs on', async () => {
  const outPath = join(tmp, 'ready.out');
  const out = openSync(outPath, 'w');
  const guest = await Guest.start({ module: readFileSync(MEMTOUCH), args: ['memtouch', '--mib', '8', '--report-ms', '20'], stdio: { stdout: out }, maxMemoryBytes: 64 << 20 });
  await until('memtouch to report', () => seqNumbers(outPath).length >= 3);
  const dir = join(tmp, 'ready-snap');
  await new SnapshotSession(guest).take({ to: dir });
  closeSync(out);
  const lastSeq = seqNumbers(outPath).at(-1)!;
  /** The thread a guest runs on (private to Guest: for this test only). */
  const threadOf = (g: Guest) => (g as unknown as { worker: { threadId: number } }).worker.threadId;
  takeSpareWorker()?.terminate(); // whatever an earlier test left: this one counts its own
  void keepGuestThreadReady(true);
  let waiting = waitingGuestThread();
  let ended = false;
  try {
    assert.notEqual(waiting, null, 'turning it on boots one');
    for (let i = 0; i < 2; i++) {
      const restoredOut = join(tmp, `ready-${i}.out`);
      const fd = openSync(restoredOut, 'w');
      const r = await restoreSnapshot(dir, { lazy: true, stdio: { stdout: fd } });
      try {
        assert.equal(threadOf(r.guest), waiting, `restore ${i}: the guest runs on the thread that was waiting`);
        await until(`restore ${i} to report`, () => seqNumbers(restoredOut).length >= 2);
        assert.equal(seqNumbers(restoredOut)[0], lastSeq + 1, `restore ${i}: SEQ continues from the snapshot`);
        // Its guest runs: the next thread was booted.
        await until(`restore ${i}: the next thread`, () => waitingGuestThread() !== null);
        waiting = waitingGuestThread();
        assert.notEqual(waiting, threadOf(r.guest));
      } finally {
        await r.guest.stop();
        closeSync(fd);
      }
    }
  } finally {
    ended = await keepGuestThreadReady(false);
  }
  assert.equal(ended, true, 'turned off, it ended the thread it kept waiting');
  assert.equal(waitingGuestThread(), null);
  const devNull = openSync('/dev/null', 'w');
  const r = await restoreSnapshot(dir, { lazy: true, stdio: { stdout: devNull } });
  try {
    assert.notEqual(threadOf(r.guest), waiting, 'the next restore starts a thread of its own');
    await r.guest.pause(); // its 'started' came before: a refill would have been started by now
    assert.equal(waitingGuestThread(), null, 'and none is booted after it');
  } finally {
    await r.guest.stop();
    closeSync(devNull);
  }
});

test('ferry snapshot + ferry restore (eager from a diff, lazy from its parent) continue the SEQ sequence and VERIFY OK', async () => {
  const work = join(tmp, 'work');
  rmSync(work, { recursive: true, force: true });
  const { mkdirSync } = await import('node:fs');
  mkdirSync(work);
  const sock = join(tmp, 'run.sock');
  const runOut = join(tmp, 'run.out');
  const run = ferry(['run', MEMTOUCH, '--api-sock', sock, '--dir', `${work}:/work`, '--stdout', runOut, '--max-memory', '256M',
    '--', '--mib', '16', '--report-ms', '20', '--verify-file', '/work/verify']);
  await until('run to report', () => seqNumbers(runOut).length >= 3);
  const full = join(tmp, 'cli-full');
  const diff = join(tmp, 'cli-diff');
  // The full snapshot's state lies between the last SEQ printed before the command and the last one
  // printed by the time it answered (the guest prints nothing while paused): bounds, not timing.
  const beforeFull = seqNumbers(runOut).at(-1)!;
  const s1 = await ferryDone(['snapshot', '--api-sock', sock, '--to', full, '--resume', '--json']);
  assert.equal(s1.code, 0, s1.stderr);
  assert.equal(JSON.parse(s1.stdout).guestAfter, 'resumed');
  const afterFull = seqNumbers(runOut).at(-1)!;
  const atFull = seqNumbers(runOut).length;
  await until('more SEQ', () => seqNumbers(runOut).length >= atFull + 5);
  const s2 = await ferryDone(['snapshot', '--api-sock', sock, '--to', diff, '--diff-from', full]);
  assert.equal(s2.code, 0, s2.stderr);
  assert.equal(await run.exit, 0, `a guest saved and stopped by a snapshot exits 0: ${run.stderr()}`);
  const ranSeq = seqNumbers(runOut);
  const lastSeq = ranSeq[ranSeq.length - 1]!;

  for (const [name, dir, lazy] of [['eager-diff', diff, false], ['lazy-full', full, true]] as const) {
    rmSync(join(work, 'verify'), { force: true });
    const outPath = join(tmp, `${name}.out`);
    const args = ['restore', dir, '--dir', `${work}:/work`, '--stdout', outPath];
    if (lazy) args.push('--lazy');
    const r = ferry(args);
    await until(`${name} to report`, () => seqNumbers(outPath).length >= 3);
    writeFileSync(join(work, 'verify'), '');
    const code = await r.exit;
    assert.equal(code, 0, `${name}: ${r.stderr()}`);
    const seq = seqNumbers(outPath);
    for (let i = 1; i < seq.length; i++) assert.equal(seq[i], seq[i - 1]! + 1, `${name}: SEQ without a gap`);
    if (dir === diff) assert.equal(seq[0], lastSeq + 1, 'the diff restores the latest state: SEQ continues where the run stopped');
    else assert.ok(seq[0]! >= beforeFull + 1 && seq[0]! <= afterFull + 1 && seq[0]! < lastSeq, `the full snapshot restores the earlier state (first SEQ ${seq[0]}, SEQ ${beforeFull}..${afterFull} around the snapshot)`);
    assert.match(fileText(outPath), /VERIFY OK \d+/);
  }
});

test('restore refuses a guest whose preopen is not mapped, and --env', async () => {
  const full = join(tmp, 'cli-full');
  const r = await ferryDone(['restore', full]);
  assert.equal(r.code, 6);
  assert.match(r.stderr, /preopened "\/work".*--dir HOST:\/work/);
  const e = await ferryDone(['restore', full, '--env', 'A=B']);
  assert.equal(e.code, 2);
  assert.match(e.stderr, /--env is refused/);
});

test('a 4 GiB-max guest with 256 MiB touched makes a sparse memory file of about 256 MiB', async () => {
  const outPath = join(tmp, 'big.out');
  const guest = await Guest.start({
    module: readFileSync(MEMTOUCH),
    args: ['memtouch', '--mib', '256', '--reserve-mib', '512', '--idle', '--report-ms', '50'],
    stdio: { stdout: openSync(outPath, 'w') },
  });
  assert.equal(guest.maxMemoryBytes, 4 * 1024 ** 3);
  await until('the fill to finish', () => seqNumbers(outPath).length >= 1);
  const dir = join(tmp, 'big');
  const r = await new SnapshotSession(guest).take({ to: dir });
  const st = statSync(join(dir, 'memory.bin'));
  assert.ok(st.size > 768 << 20, `the file spans the memory (${st.size} bytes)`);
  const allocated = st.blocks * 512;
  assert.ok(allocated >= 256 << 20, `allocated ${allocated} bytes holds the touched pages`);
  assert.ok(allocated <= 300 << 20, `allocated ${allocated} bytes: never-touched pages must be holes`);
  assert.ok(r.bytesWritten <= 260 << 20);
});
