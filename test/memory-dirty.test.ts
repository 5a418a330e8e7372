// DirtyTracker and scanResidency on real shared Wasm memories with a concurrent writer thread.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, writeSync, closeSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory, HOST_PAGE_SIZE } from '../src/memory/guest-memory.js';
import { DirtyTracker } from '../src/memory/dirty-tracker.js';
import { readFaultMapsZeroPage, scanResidency } from '../src/memory/residency.js';
import { forEachZeroRun, isZeroPage, zeroContentPages } from '../src/memory/zero-pages.js';
import { PageBitmap } from '../src/memory/page-bitmap.js';
import { Userfaultfd, REGISTER_MODE } from '../src/sys/uffd.js';
import { Pagemap, PAGE_IS } from '../src/sys/pagemap.js';
import { RegistrationBusyError } from '../src/memory/uffd-registration.js';
import { FaultServer } from '../src/memory/fault-server.js';
import { PageStateTable } from '../src/memory/page-state.js';
import { GuestThread } from './fixtures/memory/guest.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

/** A 4 MiB memory (16 MiB reserved), a guest thread on it and a tracker, ended after `body`. */
async function withTrackedGuest(body: (mem: GuestMemory, g: GuestThread, tracker: DirtyTracker) => Promise<void>): Promise<void> {
  const mem = GuestMemory.create(64, 256);
  const g = new GuestThread(mem.memory, 256);
  const tracker = new DirtyTracker(mem);
  try {
    await body(mem, g, tracker);
  } finally {
    tracker.stop();
    await g.terminate();
  }
}

test('collect() returns exactly the pages a concurrent writer wrote, over 50 rounds, and after growth', () => withTrackedGuest(async (mem, g, tracker) => {
  const r = rng(42);
  await g.run({ op: 'touch', addr: 0, pages: 16 }); // instantiate the guest before tracking starts
  tracker.start();
  assert.equal(tracker.collect().count(), 0, 'nothing written yet');
  for (let round = 0; round < 50; round++) {
    if (round === 25) await g.run({ op: 'grow', pages: 64 }); // 8 MiB: new pages are tracked too
    const pageCount = mem.pageCount;
    const written = new Set<number>();
    const k = 1 + Math.floor(r() * 200);
    for (let i = 0; i < k; i++) written.add(Math.floor(r() * pageCount));
    if (round >= 25) written.add(pageCount - 1); // a grown page
    const done = new SharedArrayBuffer(4);
    const flag = new Int32Array(done);
    const writing = g.run({ op: 'writePages', pages: [...written], value: round + 1, done });
    // Collect while the writer runs: the union of the collects must be exact.
    const seen = new PageBitmap(mem.maxPageCount);
    while (Atomics.load(flag, 0) === 0) tracker.collect(seen);
    await writing;
    tracker.collect(seen);
    assert.deepEqual(seen.toArray(), [...written].sort((a, b) => a - b), `round ${round}`);
  }
}));

test('peekRunsAside() (the walk on a native thread) gives exactly what peekRuns() gives, runs merged, and leaves the pages to the next collect', () => withTrackedGuest(async (mem, g, tracker) => {
  const r = rng(7);
  await g.run({ op: 'touch', addr: 0, pages: 16 });
  tracker.start();
  for (let round = 0; round < 10; round++) {
    const written = new Set<number>();
    for (let i = 0, k = 1 + Math.floor(r() * 300); i < k; i++) written.add(Math.floor(r() * mem.pageCount));
    for (let p = 100; p < 140; p++) written.add(p); // one long run
    await g.run({ op: 'writePages', pages: [...written], value: round + 1, done: new SharedArrayBuffer(4) });
    const walk = tracker.peekRunsAside();
    assert.ok(walk.onThread, 'the walk ran on the native thread (the data plane addon loads here)');
    const aside = walk.result();
    assert.deepEqual(aside, tracker.peekRuns(), `round ${round}`);
    assert.ok(aside.every(([a, b], i) => a < b && (i === 0 || aside[i - 1]![1] < a)), 'ordered, non-empty, adjacent runs merged');
    const pages = aside.flatMap(([a, b]) => Array.from({ length: b - a }, (_, i) => a + i));
    assert.deepEqual(pages, [...written].sort((a, b) => a - b));
    assert.deepEqual(tracker.collect().toArray(), pages, 'a peek re-protects nothing: the collect sees the same pages');
  }
}));

test('peekWrittenAround(at): the pages written below `at` and from it on, each counted once, left to the next collect', () => withTrackedGuest(async (mem, g, tracker) => {
  await g.run({ op: 'touch', addr: 0, pages: 16 });
  tracker.start();
  const written = [2, 3, 50, 99, 100, 101, 400, mem.pageCount - 1];
  await g.run({ op: 'writePages', pages: written, value: 1, done: new SharedArrayBuffer(4) });
  for (const at of [0, 3, 100, 101, mem.pageCount]) {
    const below = written.filter((p) => p < at).length;
    assert.deepEqual(tracker.peekWrittenAround(at), { below, from: written.length - below }, `at ${at}`);
  }
  assert.deepEqual(tracker.collect().toArray(), written, 'nothing was reset');
  assert.deepEqual(tracker.peekWrittenAround(100), { below: 0, from: 0 });
}));

test('armWalk(): a walk started before the writes sees them all at peekRunsAside; one armed before a growth is replaced; one never woken ends with stop()', () => withTrackedGuest(async (mem, g, tracker) => {
  await g.run({ op: 'touch', addr: 0, pages: 16 });
  tracker.start();
  for (let round = 0; round < 5; round++) {
    tracker.armWalk(); // as a switchover does before the pause: the writes below come after it
    const written = [3 + round, 200, 201, 202, 900 - round];
    await g.run({ op: 'writePages', pages: written, value: round + 1, done: new SharedArrayBuffer(4) });
    const walk = tracker.peekRunsAside();
    assert.ok(walk.onThread);
    assert.deepEqual(walk.result(), tracker.peekRuns(), `round ${round}`);
    tracker.collect();
  }
  // Armed, then the guest grows and writes in the new pages: the armed walk's range is too
  // short, so peekRunsAside walks the memory as it is now.
  tracker.armWalk();
  const before = mem.pageCount;
  mem.memory.grow(4);
  await g.run({ op: 'writePages', pages: [5, before + 3], value: 9, done: new SharedArrayBuffer(4) });
  const grown = tracker.peekRunsAside().result();
  assert.deepEqual(grown, tracker.peekRuns());
  assert.ok(grown.some(([a, b]) => a <= before + 3 && before + 3 < b), 'a page past the armed range is seen');
  tracker.armWalk(); // never woken: stop() ends it (a hang here would time the test out)
}));

test('a write by the kernel (fs.readSync into guest memory) is collected', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-dirty-'));
  const mem = GuestMemory.create(4, 4);
  const g = new GuestThread(mem.memory, 4);
  const tracker = new DirtyTracker(mem);
  try {
    const path = join(dir, 'data');
    const f = openSync(path, 'w');
    writeSync(f, Buffer.alloc(3 * HOST_PAGE_SIZE, 7));
    closeSync(f);
    const fd = openSync(path, 'r');
    await g.run({ op: 'load', addr: 0 });
    tracker.start();
    // pages 10, 11, 12 (an unaligned start: 10.5 .. 13 → pages 10..12)
    const n = await g.run<number>({ op: 'readSync', fd, offset: 10 * HOST_PAGE_SIZE + 2048, length: 2 * HOST_PAGE_SIZE + 2048, position: 0 });
    closeSync(fd);
    assert.equal(n, 2 * HOST_PAGE_SIZE + 2048);
    assert.deepEqual(tracker.collect().toArray(), [10, 11, 12]);
    assert.deepEqual(tracker.collect().toArray(), []);
  } finally {
    tracker.stop();
    await g.terminate();
    rmSync(dir, { recursive: true });
  }
});

test('stop() really unregisters: the range can be registered again (MISSING) and tracking restarted', () => {
  const mem = GuestMemory.create(1, 2);
  const t = new DirtyTracker(mem);
  t.start();
  assert.throws(() => t.start(), /already started/);
  const other = Userfaultfd.open();
  try {
    assert.throws(() => other.register(mem.base, mem.maxBytes, REGISTER_MODE.MISSING), /EBUSY/);
    t.stop();
    t.stop();
    other.register(mem.base, mem.maxBytes, REGISTER_MODE.MISSING);
    other.unregister(mem.base, mem.maxBytes);
  } finally {
    other.close();
  }
  t.start();
  mem.view()[5 * HOST_PAGE_SIZE] = 1;
  assert.deepEqual(t.collect().toArray(), [5]);
  t.stop();
  assert.throws(() => t.collect(), /not started/);
});

test('scanResidency reports exactly the touched pages; read-only pages are told apart on either kind of kernel', async () => {
  const mem = GuestMemory.create(16, 16);
  const g = new GuestThread(mem.memory, 16);
  try {
    await g.run({ op: 'load', addr: 0 }); // instantiate
    mem.dropPages([[0, mem.pageCount]]);
    const written = [3, 4, 100, 255];
    const readOnly = [7, 200];
    for (const p of written) await g.run({ op: 'store', addr: p * HOST_PAGE_SIZE + 12, value: p + 1 });
    for (const p of readOnly) await g.run({ op: 'load', addr: p * HOST_PAGE_SIZE });
    const res = scanResidency(mem);
    // Every kernel: a page read is present, so nothing the guest touched is lost.
    assert.deepEqual(res.present.toArray(), [...written, ...readOnly].sort((a, b) => a - b));
    assert.equal(res.swapped.count(), 0);
    // Where a read maps the shared zero page, PAGEMAP_SCAN names the read-only pages (PFNZERO);
    // where it maps a real page of zeros, it cannot, and their content does.
    const zeroPageKernel = readFaultMapsZeroPage();
    assert.deepEqual(res.zero.toArray(), zeroPageKernel ? readOnly : []);
    const byContent = zeroContentPages(res.present.clone().subtract(res.zero), mem.view());
    assert.deepEqual(byContent.toArray(), zeroPageKernel ? [] : readOnly);
    // Either way, the pages to send as data are exactly the written ones.
    assert.deepEqual(res.present.clone().subtract(res.zero).subtract(byContent).toArray(), written);
    // scanning (and reading present pages) touched nothing new
    assert.deepEqual(scanResidency(mem).present.toArray(), res.present.toArray());
  } finally {
    await g.terminate();
  }
});

test('scanResidency while the guest grows its memory: bitmaps and the range walked agree (growth injected between reads)', () => {
  const mem = GuestMemory.create(16, 64);
  new Uint8Array(mem.memory.buffer)[5 * HOST_PAGE_SIZE] = 1;
  // Stands in for a guest thread that runs memory.grow while the source scans: each read of the
  // size grows the real memory by one Wasm page right after it. A scan that reads the size twice
  // sizes its bitmaps from one read and walks the range of another (CI failure of stop 28: ERANGE).
  const growing = new Proxy(mem, {
    get(target, key, receiver) {
      if (key === 'sizeBytes') {
        const size = target.memory.buffer.byteLength;
        target.memory.grow(1);
        return size;
      }
      const v = Reflect.get(target, key, receiver) as unknown;
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(target) : v;
    },
  });
  const before = mem.pageCount;
  const res = scanResidency(growing);
  assert.equal(res.present.size, before);
  assert.deepEqual(res.present.subtract(res.zero).toArray(), [5]);
  assert.ok(mem.pageCount > before, 'the injected growth happened');
});

test('zero-content runs: alternating zero and data pages, a page with one non-zero byte at its end', () => {
  const PAGES = 9;
  const bytes = new Uint8Array(new SharedArrayBuffer(PAGES * HOST_PAGE_SIZE));
  for (const p of [1, 2, 5]) bytes[p * HOST_PAGE_SIZE + 7] = 1;
  bytes[8 * HOST_PAGE_SIZE - 1] = 9; // last byte of page 7: past the quick check of the first bytes
  const runs: [number, number, boolean][] = [];
  forEachZeroRun(bytes, 0, PAGES, (s, e, z) => runs.push([s, e, z]));
  assert.deepEqual(runs, [[0, 1, true], [1, 3, false], [3, 5, true], [5, 6, false], [6, 7, true], [7, 8, false], [8, 9, true]]);
  const sub: [number, number, boolean][] = [];
  forEachZeroRun(bytes, 2 * HOST_PAGE_SIZE, 2, (s, e, z) => sub.push([s, e, z]));
  assert.deepEqual(sub, [[0, 1, false], [1, 2, true]], 'runs relative to the offset');
  assert.equal(isZeroPage(bytes, 6 * HOST_PAGE_SIZE), true);
  assert.equal(isZeroPage(bytes, 7 * HOST_PAGE_SIZE), false);
});

test('one userfaultfd registration per memory: the second holder is refused by name, and may register once the first lets go', async () => {
  const mem = GuestMemory.create(1, 2);
  const tracker = new DirtyTracker(mem);
  tracker.start();
  try {
    const states = new PageStateTable(mem.maxPageCount);
    await assert.rejects(FaultServer.start(mem, states, { kind: 'buffer', image: new SharedArrayBuffer(HOST_PAGE_SIZE) }),
      (e: unknown) => e instanceof RegistrationBusyError && e.holder === 'dirty tracker' && /fault server cannot register it too/.test(e.message));
    assert.throws(() => new DirtyTracker(mem).start(), (e: unknown) => e instanceof RegistrationBusyError);
    tracker.stop();
    const server = await FaultServer.start(mem, states, { kind: 'buffer', image: new SharedArrayBuffer(HOST_PAGE_SIZE) });
    assert.throws(() => new DirtyTracker(mem).start(), (e: unknown) => e instanceof RegistrationBusyError && e.holder === 'fault server');
    await server.stop();
    tracker.start(); // free again
  } finally {
    tracker.stop();
  }
});

/** Whether this kernel gives transparent huge pages to memory advised MADV_HUGEPAGE. */
function thpAvailable(): boolean {
  try {
    return !/\[never\]/.test(readFileSync('/sys/kernel/mm/transparent_hugepage/enabled', 'utf8'));
  } catch {
    return false;
  }
}

test('prefault makes exactly its runs resident (huge pages where a 2 MiB block lies inside), and dirty tracking over them stays per 4 KiB page', () => {
  const mem = GuestMemory.create(256, 256); // 16 MiB: several whole 2 MiB blocks
  const tracker = new DirtyTracker(mem);
  try {
    const runs: Array<[number, number]> = [
      [3, 9], // small: 4 KiB pages only
      [700, 3100], // about 9.4 MiB: holds whole 2 MiB blocks, with partial ends
    ];
    const expected = new PageBitmap(mem.maxPageCount);
    for (const [s, e] of runs) expected.addRange(s, e);
    mem.prefault(runs, { populate: false });
    assert.equal(scanResidency(mem).present.count(), 0, 'advice only: nothing resident');
    assert.equal(mem.prefault(runs), expected.count() * HOST_PAGE_SIZE, 'every run populated');
    assert.deepEqual(scanResidency(mem).present.toArray(), expected.toArray(), 'resident: the runs, and nothing else');
    if (thpAvailable()) {
      const huge = new PageBitmap(mem.pageCount);
      const pm = new Pagemap();
      try {
        pm.scanToBitmaps(mem.base, mem.base + mem.sizeBytes, { categoryAnyofMask: PAGE_IS.HUGE, returnMask: PAGE_IS.HUGE }, [{ words: huge.words, categories: PAGE_IS.HUGE }]);
      } finally {
        pm.close();
      }
      assert.ok(huge.count() >= 512, `the whole 2 MiB blocks are huge pages (${huge.count()} pages are)`);
      assert.ok(huge.toArray().every((p) => p >= 700 && p < 3100), 'only inside a run');
    }
    assert.ok(mem.view().subarray(3 * HOST_PAGE_SIZE, 3100 * HOST_PAGE_SIZE).every((b) => b === 0), 'populated pages read as zeros');
    assert.throws(() => mem.prefault([[4000, 4097]]), RangeError);

    tracker.start();
    const v = mem.view();
    const written = [4, 701, 1024, 1500, 2047, 3099];
    for (const p of written) v[p * HOST_PAGE_SIZE + 5] = 1;
    assert.deepEqual(tracker.collect().toArray(), written, 'a write into a huge page is reported as its one 4 KiB page');
  } finally {
    tracker.stop();
  }
});
