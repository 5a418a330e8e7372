// The snapshot fault thread (native/dataplane/dp_file.c) on real userfaultfd: a Wasm guest on a
// worker faults on holes and the native thread fills them from layer files (page p at byte p*4096,
// the newest layer holding it wins) — through FaultServer's `files` option, as a lazy restore uses it.
// And an eager restore's load threads (dp_load.c) over the same files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory, HOST_PAGE_SIZE } from '../src/memory/guest-memory.js';
import { PageStateTable, PageState } from '../src/memory/page-state.js';
import { FaultServer, type PageFiles } from '../src/memory/fault-server.js';
import { dataplaneAddon } from '../src/sys/dataplane.js';
import { GuestThread } from './fixtures/memory/guest.js';
import { waitFor } from './fixtures/guest/helpers.js';

const PAGE = HOST_PAGE_SIZE;
/** The word layer `layer`'s copy of page p holds at its start (never 0). */
const word = (p: number, layer: number) => ((p * 2654435761 + 17 + layer * 7919) | 0) || 1;

/** A layer file holding `pages` (page p at byte p * PAGE; the rest a hole). */
function layerFile(path: string, layer: number, pages: number[]): void {
  const f = openSync(path, 'w');
  try {
    const page = Buffer.alloc(PAGE);
    for (const p of pages) {
      page.writeInt32LE(word(p, layer), 0);
      page.writeInt32LE(~word(p, layer), PAGE - 4);
      writeSync(f, page, 0, PAGE, p * PAGE);
    }
  } finally {
    closeSync(f);
  }
}

/** Two layers over 64 pages: the root holds 0..31, the diff holds 4..7 again and 40; the rest is zero. */
function chain(dir: string): { files: PageFiles; location: Int16Array; root: string } {
  const root = join(dir, 'root.bin');
  const diff = join(dir, 'diff.bin');
  layerFile(root, 0, Array.from({ length: 32 }, (_, p) => p));
  layerFile(diff, 1, [4, 5, 6, 7, 40]);
  const location = new Int16Array(new SharedArrayBuffer(64 * 2)).fill(-1);
  for (let p = 0; p < 32; p++) location[p] = 0;
  for (const p of [4, 5, 6, 7, 40]) location[p] = 1;
  return { files: { files: [root, diff], location: location.buffer as SharedArrayBuffer }, location, root };
}

/** A fresh memory whose pages the chain holds are pending holes, with a guest thread on it. */
async function lazyMemory(location: Int16Array): Promise<{ mem: GuestMemory; g: GuestThread; states: PageStateTable }> {
  const mem = GuestMemory.create(1, 1); // one wasm page: 16 host pages
  const g = new GuestThread(mem.memory, 1);
  await g.run({ op: 'load', addr: 0 });
  mem.dropPages([[0, mem.pageCount]]);
  const states = new PageStateTable(mem.maxPageCount);
  for (let p = 0; p < location.length && p < mem.maxPageCount; p++) if (location[p]! >= 0) states.markPending(p);
  return { mem, g, states };
}

/** The fallback a FaultServer would use were the native thread off; never used in these tests. */
const UNUSED_SOURCE = { kind: 'buffer', image: new SharedArrayBuffer(PAGE) } as const;

/**
 * The file thread marks pages received, counts them and records the fault's latency after the
 * UFFDIO_COPY (or UFFDIO_ZEROPAGE) that already woke the guest: a load can return before those land.
 * Waited for (an event, bounded), then asserted exactly.
 */
const settled = (what: string, pred: () => boolean): Promise<void> => waitFor(what, pred, 10_000);

test('a Wasm guest faults on holes filled by the native file thread: the newest layer wins, holes are zero, fault-around reads ahead', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-dpfile-'));
  try {
    const { files, location } = chain(dir);
    const { mem, g, states } = await lazyMemory(location);
    const server = await FaultServer.start(mem, states, UNUSED_SOURCE, { files, faultAround: 2 });
    try {
      assert.equal(server.servedBy, 'native');
      assert.equal(await g.run({ op: 'load', addr: 1 * PAGE }), word(1, 0), 'a root page');
      await settled('page 2 (read ahead) to be marked received', () => states.get(2) === PageState.RECEIVED);
      assert.equal(states.get(2), PageState.RECEIVED, 'fault-around read the next pending page too');
      assert.equal(await g.run({ op: 'load', addr: 5 * PAGE }), word(5, 1), 'a page the diff holds again: the diff wins');
      assert.equal(await g.run({ op: 'load', addr: 5 * PAGE + PAGE - 4 }), ~word(5, 1), 'the last word of it');
      await g.run({ op: 'store', addr: 9 * PAGE + 8, value: 77 }); // a write fault on a pending page
      assert.equal(await g.run({ op: 'load', addr: 9 * PAGE }), word(9, 0), 'the rest of the written page came from the file');
      assert.equal(await g.run({ op: 'load', addr: 9 * PAGE + 8 }), 77);
      await settled('the pages of three faults to be counted', () => server.stats().pagesPlaced >= 6);
      const s = server.stats();
      assert.equal(s.requests, 3, 'one read per fault on a pending page');
      assert.equal(s.pagesPlaced, 6, 'each with one page read ahead');
      // the whole first wasm page: every pending page right, every other page zero
      let expect = 0;
      for (let p = 0; p < 16; p++) expect = (expect + (p === 9 ? word(9, 0) : location[p]! < 0 ? 0 : word(p, location[p]!))) | 0;
      assert.equal(await g.run({ op: 'touch', addr: 0, pages: 16 }), expect);
      await settled('every fault of the touch to be counted', () => {
        const st = server.stats();
        return st.pagesPlaced >= 16 && st.latencySamples >= st.requests + st.zeroFills;
      });
      const end = server.stats();
      assert.equal(end.pagesPlaced, 16, 'every page of the first 16 the chain holds was read once');
      assert.equal(end.latencySamples, end.requests + end.zeroFills, 'one latency sample per fault served');
      const lat = server.latenciesUs();
      assert.ok(lat.length > 0 && lat.every((x) => x > 0 && x < 60e6), 'latencies are durations in µs, not clock readings');
    } finally {
      await server.stop();
      await g.terminate();
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('a syscall into a hole (fs.readSync by the guest thread) and three threads on one page are served by the native file thread', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-dpfile-'));
  try {
    const { files, location } = chain(dir);
    const { mem, g, states } = await lazyMemory(location);
    const others = [new GuestThread(mem.memory, 1), new GuestThread(mem.memory, 1)];
    const server = await FaultServer.start(mem, states, UNUSED_SOURCE, { files });
    try {
      for (const o of others) await o.run({ op: 'load', addr: 0 }); // started (page 0 placed by the first)
      const input = join(dir, 'in');
      writeFileSync(input, Buffer.alloc(1000, 0x5a));
      const fd = openSync(input, 'r');
      try {
        // 1000 bytes into the middle of pending page 3: the kernel faults on the guest's behalf
        assert.equal(await g.run({ op: 'readSync', fd, offset: 3 * PAGE + 100, length: 1000, position: 0 }), 1000);
      } finally {
        closeSync(fd);
      }
      assert.equal(await g.run({ op: 'load', addr: 3 * PAGE }), word(3, 0), 'bytes before the read: from the file');
      assert.equal(await g.run({ op: 'load', addr: 3 * PAGE + 100 }), 0x5a5a5a5a, 'bytes of the read');
      // three threads load page 12 at once: all see the file's bytes, and it is placed once
      // (pages 0 and 3 counted first: their counts can land after the loads that faulted on them returned)
      await settled('pages 0 and 3 to be counted', () => states.get(3) === PageState.RECEIVED && server.stats().pagesPlaced >= 2);
      const before = server.stats().pagesPlaced;
      const values = await Promise.all([g, ...others].map((t) => t.run<number>({ op: 'load', addr: 12 * PAGE })));
      assert.deepEqual(values, [word(12, 0), word(12, 0), word(12, 0)]);
      await settled('page 12 to be marked received and counted', () => states.get(12) === PageState.RECEIVED && server.stats().pagesPlaced > before);
      assert.equal(states.get(12), PageState.RECEIVED);
      assert.equal(server.stats().pagesPlaced - before, 1, 'page 12 placed once for three threads');
    } finally {
      await server.stop();
      await Promise.all([g, ...others].map((t) => t.terminate()));
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('a layer file that ends early fails the native file thread; stop() wakes the blocked guest and reports why', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-dpfile-'));
  try {
    const { files, location, root } = chain(dir);
    writeFileSync(root, Buffer.alloc(2 * PAGE)); // the root now ends after page 1 (injected: a truncated file)
    const { mem, g, states } = await lazyMemory(location);
    const server = await FaultServer.start(mem, states, UNUSED_SOURCE, { files });
    let stopped = false;
    try {
      assert.equal(await g.run({ op: 'load', addr: PAGE }), 0, 'page 1 is in what is left (zeros)');
      const blocked = g.run<number>({ op: 'load', addr: 10 * PAGE }); // past the end: the thread fails, the guest waits
      await waitFor('the fault thread to fail', () => server.error !== null, 30_000); // a bound against a hang, not a timing assertion
      assert.match(String(server.error), /layer 0 ends at byte 40960, inside page 10/);
      await assert.rejects(server.stop(), /fault thread failed: .*ends at byte 40960/);
      stopped = true;
      assert.equal(await blocked, 0, 'unregistered: the blocked load goes on and sees an empty page');
    } finally {
      if (!stopped) await server.stop().catch(() => undefined);
      await g.terminate();
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('the native file thread refuses bad options before it starts', () => {
  const dp = dataplaneAddon();
  // A layer descriptor that is open whatever this process's stdin is: each case below must fail on
  // its own option, not on the layer.
  const layer = openSync('/dev/null', 'r');
  try {
    const base = {
      uffd: 0, base: 0, faultAround: 1, raisePriority: false, states: new Uint8Array(4), stateCounts: new Int32Array(3),
      stats: new Float64Array(8), latencies: new Float64Array(4), layerFds: new Int32Array([layer]), location: new Int16Array(4),
    };
    const none = () => undefined;
    assert.throws(() => dp.startFileFaults({ ...base, layerFds: new Int32Array([1 << 29]) }, none), /layerFds\[0\] .* is not an open descriptor/);
    assert.throws(() => dp.startFileFaults({ ...base, layerFds: new Int32Array(65).fill(layer) }, none), /at most 64 layers/);
    assert.throws(() => dp.startFileFaults({ ...base, base: 100 }, none), /page-aligned/);
    assert.throws(() => dp.startFileFaults({ ...base, faultAround: 0 }, none), /faultAround/);
    assert.throws(() => dp.startFileFaults({ ...base, stats: new Float64Array(2) }, none), /stats has 2 elements/);
  } finally {
    closeSync(layer);
  }
});

test("the load threads place each page from its newest layer, check every chunk (sha256, or the fast check when given), and report a short file", async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-dpload-'));
  try {
    const { files, location } = chain(dir);
    const sha = (path: string, page: number, count: number) => createHash('sha256').update(readFileSync(path).subarray(page * PAGE, (page + count) * PAGE)).digest();
    // Chunks: the root's pages 0-31 in two chunks, the diff's 4-7 and 40 (41 pages of memory here).
    const chunks = [[0, 0, 16], [0, 16, 16], [1, 4, 4], [1, 40, 1]] as const;
    const load = (memory: Uint8Array, shas: Buffer[], threads = 2, crcs?: Buffer[]) => new Promise<string | null>((resolve) => {
      const fds = files.files.map((f) => openSync(f, 'r'));
      try {
        const dp = dataplaneAddon();
        const handle = dp.startLoad({
          memory, location, layerFds: Int32Array.from(fds), threads,
          chunkLayer: Uint32Array.from(chunks, (c) => c[0]), chunkPage: Uint32Array.from(chunks, (c) => c[1]),
          chunkCount: Uint32Array.from(chunks, (c) => c[2]), chunkSha256: new Uint8Array(Buffer.concat(shas)),
          ...(crcs ? { chunkCrc: new Uint8Array(Buffer.concat(crcs)) } : {}),
        }, (error) => { dp.stop(handle); resolve(error); });
      } finally {
        fds.forEach((fd) => closeSync(fd));
      }
    });
    const good = chunks.map(([l, p, n]) => sha(files.files[l]!, p, n));
    const dp = dataplaneAddon();
    const crcs = chunks.map(([l, p, n]) => dp.chunkCheck(readFileSync(files.files[l]!).subarray(p * PAGE, (p + n) * PAGE)));
    const placedAsLocated = (mem: Uint8Array) => {
      const words = new Int32Array(mem.buffer);
      for (let p = 0; p < 48; p++) assert.equal(words[p * 1024], location[p]! < 0 ? 0 : word(p, location[p]!), `page ${p}`);
    };
    const mem = new Uint8Array(new SharedArrayBuffer(48 * PAGE));
    assert.equal(await load(mem, good), null);
    placedAsLocated(mem);
    // The fast checks instead of the sha256s (which are then not looked at: zeros here).
    const memCrc = new Uint8Array(new SharedArrayBuffer(48 * PAGE));
    assert.equal(await load(memCrc, good.map(() => Buffer.alloc(32)), 2, crcs), null);
    placedAsLocated(memCrc);
    // An entry of zeros: that chunk's sha256 is checked instead.
    const crcsBut1 = crcs.map((c, i) => (i === 1 ? Buffer.alloc(16) : c));
    const shasBut1 = good.map((s, i) => (i === 1 ? s : Buffer.alloc(32)));
    assert.equal(await load(new Uint8Array(new SharedArrayBuffer(48 * PAGE)), shasBut1, 2, crcsBut1), null);
    const badSha1 = shasBut1.map((s, i) => (i === 1 ? Buffer.alloc(32) : s));
    assert.equal(await load(new Uint8Array(new SharedArrayBuffer(48 * PAGE)), badSha1, 1, crcsBut1), 'checksum layer 0 page 16 count 16');
    // A check that does not hold fails the load and names the chunk. Chunk 1 is all the root's own
    // (read straight into memory, which the caller then never runs); chunk 0 shares pages 4-7 with
    // the diff, so it is read aside, and a damaged one copies nothing.
    for (const useCrc of [false, true]) {
      const bad = (useCrc ? crcs : good).map((b) => Buffer.from(b));
      bad[1]![3]! ^= 1;
      const run = (b: Buffer[]) => load(new Uint8Array(new SharedArrayBuffer(48 * PAGE)), useCrc ? good : b, 1, useCrc ? b : undefined);
      assert.equal(await run(bad), 'checksum layer 0 page 16 count 16');
      const bad0 = (useCrc ? crcs : good).map((b) => Buffer.from(b));
      bad0[0]![0]! ^= 1;
      const mem0 = new Uint8Array(new SharedArrayBuffer(48 * PAGE));
      assert.equal(await load(mem0, useCrc ? good : bad0, 1, useCrc ? bad0 : undefined), 'checksum layer 0 page 0 count 16');
      assert.ok(new Int32Array(mem0.buffer, 0, 16 * 1024).every((x) => x === 0), 'nothing of a damaged chunk read aside reached memory');
    }
    const fd = openSync(files.files[0]!, 'r');
    try {
      assert.throws(() => dp.startLoad({ memory: mem, location, layerFds: Int32Array.of(fd), threads: 1, chunkLayer: new Uint32Array(1), chunkPage: new Uint32Array(1),
        chunkCount: new Uint32Array(1), chunkSha256: new Uint8Array(32), chunkCrc: new Uint8Array(8) }, () => undefined), /chunkCrc has 8 elements/);
    } finally {
      closeSync(fd);
    }
    // A file shorter than its chunks say (either of its chunks may be the one found short first).
    writeFileSync(files.files[1]!, Buffer.alloc(5 * PAGE));
    assert.match(String(await load(new Uint8Array(new SharedArrayBuffer(48 * PAGE)), good)), /^truncated layer 1 byte (20480|163840)$/);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

/** CRC-32C (Castagnoli, reflected, initial and final 0xffffffff), bit by bit: the reference. */
function crc32c(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return (c ^ 0xffffffff) >>> 0;
}

test("chunkCheck is CRC-32C of each quarter of the bytes, lane 0 first, little-endian", () => {
  const dp = dataplaneAddon();
  assert.equal(crc32c(Buffer.from('123456789')), 0xe3069283, 'the reference gives the published check value');
  for (const len of [0, 3, 4096, 16 * 4096 + 5, 256 * 4096]) {
    const bytes = Buffer.alloc(len);
    for (let i = 0; i < len; i++) bytes[i] = (i * 131 + (i >> 9)) & 0xff;
    const q = Math.floor(len / 4);
    const want = Buffer.alloc(16);
    for (let k = 0; k < 4; k++) want.writeUInt32LE(crc32c(bytes.subarray(k * q, k === 3 ? len : (k + 1) * q)), k * 4);
    assert.deepEqual(dp.chunkCheck(bytes), want, `${len} bytes`);
    if (len > 0) {
      bytes[len - 1]! ^= 0x10;
      assert.notDeepEqual(dp.chunkCheck(bytes), want, `a flipped bit in ${len} bytes changes the check`);
    }
  }
  assert.throws(() => dp.chunkCheck(new Uint16Array(4) as unknown as Uint8Array), /chunkCheck\(Uint8Array\)/);
});
