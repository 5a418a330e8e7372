// Unit tests for the postcopy pieces that the end-to-end migrations cover only as a whole: the
// request ring (fault worker → urgent thread), page claims (bulk stream vs urgent thread on the
// source), and page placement on the destination (real userfaultfd on a real guest memory). The
// thread tests run real worker threads over real shared memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { RequestRing } from '../src/migration/receive/urgent/request-ring.js';
import { PageClaims } from '../src/migration/send/urgent/page-claims.js';
import { PagePlacer, createRequests } from '../src/migration/receive/page-placer.js';
import { GuestMemory, HOST_PAGE_SIZE } from '../src/memory/guest-memory.js';
import { PageState, PageStateTable } from '../src/memory/page-state.js';
import { registerReservation } from '../src/memory/uffd-registration.js';
import { PageDigest } from '../src/migration/verify/digest.js';
import { REGISTER_MODE, Userfaultfd } from '../src/sys/uffd.js';

const P = HOST_PAGE_SIZE;

/** Runs `body` (an ES module's text) on a worker thread with `data` as workerData; resolves with what it posts. */
function onThread<T>(body: string, data: unknown): Promise<T> {
  return new Promise((resolve, reject) => {
    const w = new Worker(new URL(`data:text/javascript,${encodeURIComponent(body)}`), { workerData: data });
    w.once('message', resolve);
    w.once('error', reject);
    w.once('exit', (code) => (code !== 0 ? reject(new Error(`worker exited ${code}`)) : undefined));
  });
}

const moduleUrl = (rel: string) => new URL(rel, import.meta.url).href;

test('RequestRing: entries come out in order with their times; a full ring refuses', () => {
  const ring = RequestRing.create(4);
  assert.equal(ring.capacity, 4);
  for (let i = 0; i < 4; i++) assert.equal(ring.push(i * 10, i + 1, 1000.5 + i), true);
  assert.equal(ring.push(99, 1, 0), false, 'a fifth entry does not fit');
  const seen: Array<[number, number, number]> = [];
  assert.equal(ring.drain((f, c, t) => seen.push([f, c, t])), 4);
  assert.deepEqual(seen, [[0, 1, 1000.5], [10, 2, 1001.5], [20, 3, 1002.5], [30, 4, 1003.5]]);
  assert.equal(ring.drain(() => assert.fail('nothing is left')), 0);
  // Around the end of the buffer many times: head and tail keep counting, slots are reused.
  const out: number[] = [];
  for (let i = 0; i < 50; i++) {
    assert.equal(ring.push(i, 1, i), true);
    if (i % 3 === 2) ring.drain((f) => out.push(f));
  }
  ring.drain((f) => out.push(f));
  assert.deepEqual(out, Array.from({ length: 50 }, (_, i) => i));
});

test('RequestRing: a producer thread and this consumer see every entry once, in order', async () => {
  const ring = RequestRing.create(64);
  const N = 20_000;
  const producer = onThread<number>(
    `import { workerData, parentPort } from 'node:worker_threads';
     const { RequestRing } = await import(workerData.mod);
     const ring = new RequestRing(workerData.buffer);
     let retries = 0;
     for (let i = 0; i < workerData.n; i++) while (!ring.push(i, i % 7 + 1, i + 0.25)) retries++;
     parentPort.postMessage(retries);`,
    { mod: moduleUrl('../src/migration/receive/urgent/request-ring.js'), buffer: ring.buffer, n: N },
  );
  let next = 0;
  let bad = 0;
  while (next < N) {
    ring.drain((first, count, time) => {
      if (first !== next || count !== (next % 7) + 1 || time !== next + 0.25) bad++;
      next++;
    });
    await new Promise((r) => setImmediate(r));
  }
  await producer;
  assert.equal(bad, 0, 'every entry intact and in order');
  assert.equal(next, N);
});

test('PageClaims: a page is claimed once; two threads racing over the same pages split them exactly', async () => {
  const claims = new PageClaims(100);
  assert.equal(claims.claim(7), true);
  assert.equal(claims.claim(7), false);
  assert.equal(claims.isClaimed(7), true);
  assert.equal(claims.isClaimed(8), false);

  const pages = 1 << 16;
  const shared = new PageClaims(pages);
  const racer = `import { workerData, parentPort } from 'node:worker_threads';
     const { PageClaims } = await import(workerData.mod);
     const claims = new PageClaims(workerData.pages, workerData.buffer);
     const won = new Uint8Array(workerData.pages);
     // One racer walks up, the other down, so they meet and contend in the middle.
     for (let i = 0; i < workerData.pages; i++) { const p = workerData.up ? i : workerData.pages - 1 - i; if (claims.claim(p)) won[p] = 1; }
     parentPort.postMessage(won);`;
  const data = (up: boolean) => ({ mod: moduleUrl('../src/migration/send/urgent/page-claims.js'), pages, buffer: shared.buffer, up });
  const [a, b] = await Promise.all([onThread<Uint8Array>(racer, data(true)), onThread<Uint8Array>(racer, data(false))]);
  let both = 0;
  let neither = 0;
  for (let p = 0; p < pages; p++) {
    if (a[p] && b[p]) both++;
    if (!a[p] && !b[p]) neither++;
  }
  assert.equal(both, 0, 'no page claimed by both');
  assert.equal(neither, 0, 'every page claimed by one');
});

/** A registered guest memory of 16 pages with pages 0..7 pending, and a placer over it. */
function placerSetup(withDigest: boolean) {
  const mem = GuestMemory.create(1, 1); // 64 KiB: 16 host pages
  const uffd = Userfaultfd.open();
  const reg = registerReservation(uffd, mem, REGISTER_MODE.MISSING, 'the page placer test');
  const states = new PageStateTable(mem.maxPageCount);
  for (let p = 0; p < 8; p++) states.markPending(p);
  const digest = withDigest ? new PageDigest(mem.maxBytes) : null;
  const placer = new PagePlacer({
    uffd: uffd.fd,
    base: mem.base,
    states: states.shared(),
    requests: createRequests(mem.maxPageCount),
    digest: digest ? { maxBytes: mem.maxBytes, buffer: digest.buffer } : null,
  });
  return { mem, states, placer, digest, close: () => { reg.release(); uffd.close(); } };
}

function pagesOf(first: number, count: number, seed: number): Buffer {
  const b = Buffer.alloc(count * P);
  for (let i = 0; i < count; i++) b.fill((seed + first + i) & 0xff, i * P, (i + 1) * P);
  return b;
}

test('PagePlacer: places pending pages only, once, and their bytes land in guest memory', () => {
  const { mem, states, placer, close } = placerSetup(false);
  try {
    // Page 2 was already placed by the other channel (its bytes stay; this run's copy is dropped).
    const first = placer.place({ type: 'PAGES', offset: 2 * P, count: 1, kind: 'data', data: pagesOf(2, 1, 100) });
    assert.equal(first.placed, 1);
    const run = pagesOf(0, 4, 1);
    const r = placer.place({ type: 'PAGES', offset: 0, count: 4, kind: 'data', data: run });
    assert.equal(r.placed, 3, 'pages 0, 1 and 3: page 2 was not pending any more');
    for (let p = 0; p < 4; p++) assert.equal(states.get(p), PageState.RECEIVED);
    const view = mem.view();
    assert.equal(view[0 * P + 17], 1);
    assert.equal(view[1 * P + 4095], 2);
    assert.equal(view[2 * P], 102, 'the first copy of page 2 stands');
    assert.equal(view[3 * P + 9], 4);
    // The same run again (sent on both channels): nothing placed, nothing counted.
    assert.equal(placer.place({ type: 'PAGES', offset: 0, count: 4, kind: 'data', data: pagesOf(0, 4, 50) }).placed, 0);
    assert.equal(view[0], 1);
    assert.equal(states.counts3().pending, 4, 'pages 4..7 still pending');
  } finally {
    close();
  }
});

test('PagePlacer: a noted request is counted once and gives a latency when its page is placed', () => {
  const { placer, close } = placerSetup(false);
  try {
    const faultUs = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
    assert.equal(placer.noteRequest(5, faultUs), true);
    assert.equal(placer.noteRequest(5, faultUs), false, 'one request per page at a time');
    assert.equal(placer.noteRequest(6, faultUs), true);
    assert.equal(placer.waitingPages, 2);
    assert.deepEqual(placer.requestedPages(16), [5, 6]);
    const r = placer.place({ type: 'PAGES', offset: 5 * P, count: 1, kind: 'data', data: pagesOf(5, 1, 0) });
    assert.equal(r.placed, 1);
    assert.equal(r.latenciesUs.length, 1);
    assert.ok(r.latenciesUs[0]! >= 0);
    assert.equal(placer.waitingPages, 1);
    assert.deepEqual(placer.requestedPages(16), [6]);
    assert.equal(placer.noteRequest(5, faultUs), false, 'a placed page needs no request');
    assert.equal(placer.noteRequest(12, faultUs), false, 'nor does a known-zero one');
  } finally {
    close();
  }
});

test('PagePlacer: the verify digest records the bytes placed', () => {
  const { placer, digest, close } = placerSetup(true);
  try {
    const bytes = pagesOf(0, 8, 33);
    placer.place({ type: 'PAGES', offset: 0, count: 8, kind: 'data', data: bytes });
    const expected = new PageDigest(65536);
    expected.set(0, bytes, 8);
    assert.equal(digest!.digestHex(8), expected.digestHex(8));
    const other = new PageDigest(65536);
    other.set(0, pagesOf(0, 8, 34), 8);
    assert.notEqual(digest!.digestHex(8), other.digestHex(8), 'the digest depends on the bytes');
  } finally {
    close();
  }
});

test('PostcopySource: pushes every pending page once, after the urgent answers and from the last request on', async () => {
  const { listen, connect, newSessionId } = await import('../src/migration/transport/index.js');
  const { UrgentChannel } = await import('../src/migration/send/urgent/channel.js');
  const { PostcopySource } = await import('../src/migration/send/postcopy-source.js');
  const { MemoryPageReader } = await import('../src/migration/send/page-provider.js');
  const { PageBitmap } = await import('../src/memory/page-bitmap.js');
  const { MIN_POSTCOPY_BUFFER } = await import('../src/migration/session/bulk-buffers.js');

  // The source's memory: 4 wasm pages = 64 host pages, each filled with its own number.
  const memory = new WebAssembly.Memory({ initial: 4, maximum: 4, shared: true });
  const pageCount = 64;
  const view = new Uint8Array(memory.buffer);
  for (let p = 0; p < pageCount; p++) view.fill(p + 1, p * P, (p + 1) * P);
  // Pending: every page but 0..3 (sent with the state) and 40..47 (the destination holds them).
  const pending = new PageBitmap(pageCount).addRange(4, 40).addRange(48, pageCount);

  const security = { kind: 'insecure' as const };
  const l = await listen({ host: '127.0.0.1', port: 0, security });
  const sessionId = newSessionId();
  const common = { host: '127.0.0.1', port: l.port, security, sessionId };
  const bulk = await connect({ ...common, channel: 'bulk' });
  const urgent = await UrgentChannel.open({ ...common, pages: { kind: 'memory', memory }, maxPages: pageCount });
  const dst = await l.acceptSession();
  const dstUrgent = dst.urgent as import('../src/migration/transport/index.js').FramedChannel;
  try {
    const got = new Map<number, { channel: 'bulk' | 'urgent'; byte: number }>();
    let twice = 0;
    const note = (channel: 'bulk' | 'urgent', msg: { offset: number; count: number; data: Buffer | null }) => {
      for (let i = 0; i < msg.count; i++) {
        const p = msg.offset / P + i;
        if (got.has(p)) twice++;
        got.set(p, { channel, byte: msg.data![i * P + 100]! });
      }
    };
    const pc = new PostcopySource(new MemoryPageReader(memory), pending, pageCount, bulk, urgent, MIN_POSTCOPY_BUFFER);
    // A fault on the destination asks for 20..23; the answer comes on the urgent channel.
    await dstUrgent.sendMessage({ type: 'PAGE_REQUEST', offset: 20 * P, count: 4 });
    const answer = await dstUrgent.expect('PAGES', 10_000);
    note('urgent', answer);
    assert.deepEqual([answer.offset / P, answer.count], [20, 4]);

    await pc.run();
    let firstBulk = -1;
    while ([...got.keys()].length < pending.count()) {
      const msg = await dst.bulk.expect('PAGES', 10_000);
      if (firstBulk < 0) firstBulk = msg.offset / P;
      note('bulk', msg);
    }
    assert.equal(firstBulk, 24, 'the bulk stream goes on just after the requested pages');
    assert.equal(twice, 0, 'no page crossed twice');
    assert.deepEqual([...got.keys()].sort((a, b) => a - b), pending.toArray(), 'exactly the pending pages crossed');
    for (const [p, g] of got) assert.equal(g.byte, p + 1, `page ${p} carries its own bytes`);
    assert.equal(pc.sentByStream.urgent, 4);
    assert.equal(pc.sentByStream.bulk, pending.count() - 4);
    assert.equal(pc.pagesSent, pending.count());
  } finally {
    bulk.destroy();
    urgent.destroy();
    dst.bulk.destroy();
    dstUrgent.destroy();
    await l.close();
  }
});
