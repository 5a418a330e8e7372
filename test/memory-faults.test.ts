// FaultServer on real userfaultfd: a Wasm guest on a worker thread faults on holes and resumes with the
// right bytes; kernel faults (fs.readSync into a hole); several threads on one page; growth; place().
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { openSync, writeSync, closeSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GuestMemory, HOST_PAGE_SIZE } from '../src/memory/guest-memory.js';
import { PageStateTable, PageState } from '../src/memory/page-state.js';
import { FaultServer } from '../src/memory/fault-server.js';
import { eventfd, eventfdSignal, close, EFD_NONBLOCK, EFD_CLOEXEC } from '../src/sys/fd.js';
import { GuestThread } from './fixtures/memory/guest.js';

const PAGE = HOST_PAGE_SIZE;
/** The word a test image holds at the start of page p (never 0). */
const word = (p: number) => (p * 2654435761 + 17) | 0 || 1;

function image(pages: number): SharedArrayBuffer {
  const sab = new SharedArrayBuffer(pages * PAGE);
  const v = new Int32Array(sab);
  for (let p = 0; p < pages; p++) { v[p * 1024] = word(p); v[p * 1024 + 1023] = ~word(p); }
  return sab;
}

/** A destination memory: guest instantiated, then every page dropped; `pending` pages marked pending. */
async function destination(initial: number, maximum: number, pending: number[]): Promise<{ mem: GuestMemory; g: GuestThread; states: PageStateTable }> {
  const mem = GuestMemory.create(initial, maximum);
  const g = new GuestThread(mem.memory, maximum);
  await g.run({ op: 'load', addr: 0 });
  mem.dropPages([[0, mem.pageCount]]);
  const states = new PageStateTable(mem.maxPageCount);
  for (const p of pending) states.markPending(p);
  return { mem, g, states };
}

async function waitFor(cond: () => boolean, what: string): Promise<void> {
  // Not a timing assertion: waits for an event that must happen, with a generous bound against hangs.
  const deadline = Date.now() + 30_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 2));
  }
}

test('a Wasm guest on a worker reads and writes holes and resumes with the source bytes; known-zero stays local', async () => {
  const pending = Array.from({ length: 64 }, (_, i) => i * 2); // even pages of the first 128 are on the source
  const { mem, g, states } = await destination(8, 16, pending);
  const server = await FaultServer.start(mem, states, { kind: 'buffer', image: image(128) });
  try {
    for (const p of [0, 2, 126]) assert.equal(await g.run({ op: 'load', addr: p * PAGE }), word(p));
    assert.equal(await g.run({ op: 'load', addr: 4 * PAGE + 4092 }), ~word(4), 'last word of a page');
    assert.equal(await g.run({ op: 'load', addr: 3 * PAGE }), 0, 'known-zero page');
    await g.run({ op: 'store', addr: 8 * PAGE + 40, value: 5 }); // write fault on a pending page
    assert.equal(await g.run({ op: 'load', addr: 8 * PAGE }), word(8), 'the rest of the page came from the source');
    assert.equal(await g.run({ op: 'load', addr: 8 * PAGE + 40 }), 5);
    const s = server.stats();
    assert.equal(s.requests, 5, 'one request per pending page touched');
    assert.equal(s.zeroFills, 1);
    assert.equal(states.get(2), PageState.RECEIVED);
    assert.equal(states.get(3), PageState.KNOWN_ZERO);
    // the whole sum over 128 pages: every pending page right, every known-zero page zero
    let expect = 0;
    for (let p = 0; p < 128; p++) if (p % 2 === 0) expect = (expect + (p === 8 ? word(8) : word(p))) | 0;
    assert.equal(await g.run({ op: 'touch', addr: 0, pages: 128 }), expect);
    const end = server.stats();
    assert.equal(end.requests, 64);
    assert.equal(end.zeroFills, 64, 'every odd page below 128 was filled locally once');
    assert.equal(end.pagesPlaced, 64, 'every even page below 128 came from the source once');
    // One latency sample per fault served: each local zero fill and each page a request brought.
    const lat = server.latenciesUs();
    assert.equal(lat.length, end.zeroFills + end.pagesPlaced);
    // Each sample is the time from the event read to the page placed: it took some time, and it
    // is not a clock reading (an absolute CLOCK_MONOTONIC value in µs is far above a minute).
    assert.ok(lat.every((x) => x > 0 && x < 60e6), `latencies out of range: ${[...lat].filter((x) => !(x > 0 && x < 60e6)).slice(0, 5).join(', ')}`);
  } finally {
    await server.stop();
    await g.terminate();
  }
});

test('a syscall into a hole (fs.readSync by the guest thread) is served and completes with the right bytes', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-faults-'));
  const { mem, g, states } = await destination(4, 4, [20, 21, 22]);
  const server = await FaultServer.start(mem, states, { kind: 'buffer', image: image(64) });
  try {
    const path = join(dir, 'in');
    const f = openSync(path, 'w');
    writeSync(f, Buffer.alloc(1000, 0x5a));
    closeSync(f);
    const fd = openSync(path, 'r');
    // 1000 bytes into the middle of pending page 21: the kernel faults on the guest's behalf
    assert.equal(await g.run({ op: 'readSync', fd, offset: 21 * PAGE + 100, length: 1000, position: 0 }), 1000);
    closeSync(fd);
    assert.equal(await g.run({ op: 'load', addr: 21 * PAGE }), word(21), 'bytes before the read: from the source');
    assert.equal(await g.run({ op: 'load', addr: 21 * PAGE + 100 }), 0x5a5a5a5a, 'bytes of the read');
    assert.equal(await g.run({ op: 'load', addr: 21 * PAGE + 4092 }), ~word(21));
    assert.equal(server.stats().requests, 1);
  } finally {
    await server.stop();
    await g.terminate();
    rmSync(dir, { recursive: true });
  }
});

test('several threads faulting on one page: all resume with the right bytes, one request', async () => {
  const gate = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const { mem, g, states } = await destination(1, 1, [9]);
  const others = [new GuestThread(mem.memory, 1), new GuestThread(mem.memory, 1)];
  const img = image(16);
  const server = await FaultServer.start(mem, states, {
    kind: 'module', module: new URL('./fixtures/memory/gated-source.js', import.meta.url).href, options: { image: img, gateFd: gate },
  });
  try {
    for (const o of others) await o.run({ op: 'load', addr: 0 }); // page 0 is known-zero: served locally
    const before = server.stats();
    const loads = [g, ...others].map((t) => t.run<number>({ op: 'load', addr: 9 * PAGE + 4 }));
    await waitFor(() => server.stats().faults - before.faults === 3, 'three faults on page 9');
    assert.equal(server.stats().requests - before.requests, 1, 'one request while three threads wait');
    assert.equal(server.stats().deduped - before.deduped, 2);
    eventfdSignal(gate);
    const values = await Promise.all(loads);
    assert.deepEqual(values, [0, 0, 0].map(() => new Int32Array(img)[9 * 1024 + 1]));
    assert.equal(await g.run({ op: 'load', addr: 9 * PAGE }), word(9));
  } finally {
    eventfdSignal(gate);
    await server.stop();
    await Promise.all([g, ...others].map((t) => t.terminate()));
    close(gate);
  }
});

test('memory.grow while serving: grown pages fault as known-zero, or from the source when pending', async () => {
  const { mem, g, states } = await destination(1, 8, [16 + 3]); // page 19 lies beyond the current 16 pages
  const server = await FaultServer.start(mem, states, { kind: 'buffer', image: image(64) });
  try {
    assert.equal(await g.run({ op: 'grow', pages: 2 }), 1);
    assert.equal(mem.pageCount, 48);
    assert.equal(await g.run({ op: 'load', addr: 19 * PAGE }), word(19));
    assert.equal(await g.run({ op: 'load', addr: 40 * PAGE }), 0);
    await g.run({ op: 'store', addr: 41 * PAGE, value: 3 });
    assert.equal(await g.run({ op: 'load', addr: 41 * PAGE }), 3);
    const s = server.stats();
    assert.equal(s.requests, 1);
    assert.equal(s.zeroFills, 2);
  } finally {
    await server.stop();
    await g.terminate();
  }
});

test('place() fills pending pages from the caller thread; the guest then takes no request for them', async () => {
  const { mem, g, states } = await destination(1, 1, [1, 2, 3, 4]);
  const img = image(16);
  const server = await FaultServer.start(mem, states, { kind: 'buffer', image: img });
  try {
    const bulk = new Uint8Array(img, 2 * PAGE, 2 * PAGE);
    assert.equal(server.place(2, bulk, 0, 2), 2);
    assert.equal(server.place(2, bulk, 0, 1), 0, 'already received: skipped');
    assert.throws(() => server.place(7, bulk, 0, 1), /known-zero/);
    assert.equal(await g.run({ op: 'load', addr: 2 * PAGE }), word(2));
    assert.equal(await g.run({ op: 'load', addr: 3 * PAGE }), word(3));
    assert.equal(server.stats().requests, 0);
    assert.equal(await g.run({ op: 'load', addr: 4 * PAGE }), word(4));
    assert.equal(server.stats().requests, 1);
    assert.deepEqual(states.counts3(), { knownZero: 12, pending: 1, received: 3 });
  } finally {
    await server.stop();
    await g.terminate();
  }
});

test('FilePageSource: contiguous and sparse (pageOffsets) files', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-file-'));
  const path = join(dir, 'pages');
  const img = image(8);
  const f = openSync(path, 'w');
  writeSync(f, Buffer.alloc(PAGE)); // a header page: page i lives at offset PAGE + i*PAGE
  writeSync(f, new Uint8Array(img));
  closeSync(f);
  try {
    {
      const { mem, g, states } = await destination(1, 1, [1, 5, 6]);
      const server = await FaultServer.start(mem, states, { kind: 'file', path, offset: PAGE }, { faultAround: 2 });
      try {
        assert.equal(await g.run({ op: 'load', addr: 5 * PAGE }), word(5));
        assert.equal(states.get(6), PageState.RECEIVED, 'fault-around brought the next pending page');
        assert.equal(await g.run({ op: 'load', addr: 6 * PAGE + 4092 }), ~word(6));
        assert.equal(await g.run({ op: 'load', addr: PAGE }), word(1));
        assert.equal(server.stats().requests, 2);
      } finally {
        await server.stop();
        await g.terminate();
      }
    }
    {
      const offsets = new Float64Array(new SharedArrayBuffer(16 * 8)).fill(-1);
      offsets[10] = PAGE + 3 * PAGE; // page 10 of the guest is page 3 of the image
      const { mem, g, states } = await destination(1, 1, [10, 11]);
      const server = await FaultServer.start(mem, states, { kind: 'file', path, pageOffsets: offsets.buffer as SharedArrayBuffer });
      try {
        assert.equal(await g.run({ op: 'load', addr: 10 * PAGE }), word(3));
        assert.equal(await g.run({ op: 'load', addr: 11 * PAGE }), 0, 'absent from the file: zeros');
      } finally {
        await server.stop();
        await g.terminate();
      }
    }
  } finally {
    rmSync(dir, { recursive: true });
  }
});

test('bad FaultServer input is refused before anything is registered', async () => {
  const mem = GuestMemory.create(1, 2);
  await assert.rejects(FaultServer.start(mem, new PageStateTable(5), { kind: 'buffer', image: image(1) }), /page-state table has 5 pages/);
  await assert.rejects(FaultServer.start(mem, new PageStateTable(mem.maxPageCount), { kind: 'buffer', image: image(1) }, { faultAround: 0 }), /faultAround/);
  await assert.rejects(
    FaultServer.start(mem, new PageStateTable(mem.maxPageCount), { kind: 'module', module: 'node:path', exportName: 'nope' }),
    /no function nope/,
  );
  // and the range is free again afterwards
  const s = await FaultServer.start(mem, new PageStateTable(mem.maxPageCount), { kind: 'buffer', image: image(1) });
  await s.stop();
});
