// Native precopy (native/dataplane/dp_precopy.c) driven from TypeScript: the source's pass sender and
// the destination's receiver, each facing the other or the TypeScript implementation of the framing
// (src/migration/dataplane/frames.ts, channel "precopy") as a controlled or hostile peer. Real
// userfaultfd on a real guest memory, real loopback TCP; every wait is for an event.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { PrecopyReceiver, PrecopySender } from '../src/migration/dataplane/precopy-plane.js';
import { DataplaneFrame, DataplanePeer } from '../src/migration/dataplane/frames.js';
import { takeSocketFd } from '../src/migration/dataplane/socket-fd.js';
import { DataplaneRole } from '../src/sys/dataplane.js';
import { UFFD_FEATURE } from '../src/sys/uffd.js';
import { waitFor } from './fixtures/guest/helpers.js';
import { PageState } from '../src/memory/page-state.js';
import { PageBitmap } from '../src/memory/page-bitmap.js';
import { PageDigest, pageHash } from '../src/migration/verify/digest.js';
import { PAGE, assertRefusedAndClosed, destination, loopbackPair, patternOf, sourceImage, type Destination, type Refusal, type SourceImage } from './fixtures/dataplane/loopback.js';

const WASM_PAGES = 4; // 64 host pages
const PAGES = WASM_PAGES * 16;

function receiverFor(d: Destination, sock: number, secret: Uint8Array, pageCount = PAGES, digest?: PageDigest, movePool = false): PrecopyReceiver {
  const shared = d.states.shared();
  return new PrecopyReceiver({
    sock, secret, uffd: d.uffd.fd, base: d.mem.base, states: new Uint8Array(shared.states, 0, shared.pageCount),
    stateCounts: new Int32Array(shared.counts, 0, 3), pageCount, ...(digest ? { digest: new Uint32Array(digest.buffer) } : {}), movePool,
  });
}

/** A native receiver facing a TypeScript peer playing the source. */
async function receiverFacingPeer(d: Destination, pageCount = PAGES, digest?: PageDigest): Promise<{ recv: PrecopyReceiver; peer: DataplanePeer }> {
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const recv = receiverFor(d, takeSocketFd(b), secret, pageCount, digest);
  const peer = await DataplanePeer.open(a, secret, DataplaneRole.CONNECTOR, 'precopy');
  return { recv, peer };
}

const run = (first: number, count: number) => {
  const b = Buffer.alloc(8);
  b.writeUInt32BE(first, 0);
  b.writeUInt32BE(count, 4);
  return b;
};

const wordAt = (d: Destination, p: number) => new DataView(d.mem.view().buffer).getInt32(p * PAGE, true);

for (const movePool of [false, true]) {
test(`sender to receiver: two passes place every page (holes by ${movePool ? 'UFFDIO_MOVE from the pool made ahead' : 'UFFDIO_COPY'}, received pages overwritten), zero pages become known-zero, and CLOSE ends both`, async () => {
  const d = destination(WASM_PAGES, Array.from({ length: PAGES }, (_, p) => p), movePool ? UFFD_FEATURE.MOVE : 0);
  const src = sourceImage(PAGES);
  // Pages 10..19 read as zero in the source: they must go as ZERO, not as bytes.
  src.memory.fill(0, 10 * PAGE, 20 * PAGE);
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const digest = new PageDigest(PAGES * PAGE);
  const recv = receiverFor(d, takeSocketFd(b), secret, PAGES, digest, movePool);
  const send = new PrecopySender({ sock: takeSocketFd(a), secret, memory: () => src.memory, maxPages: PAGES });
  try {
    if (movePool) await waitFor('the pool to be made', () => recv.read().poolReady === PAGES, 10_000);
    // Pass 0: pages 0..39 as data, the rest (40..63) as never touched (ZERO).
    await send.sendPass(0, new PageBitmap(PAGES).addRange(0, 40), PAGES, true);
    await recv.passPlaced(0);
    for (const p of [0, 9, 20, 39]) {
      assert.equal(d.states.get(p), PageState.RECEIVED, `page ${p}`);
      assert.equal(wordAt(d, p), patternOf(p));
    }
    for (const p of [10, 19, 40, 63]) assert.equal(d.states.get(p), PageState.KNOWN_ZERO, `page ${p}`);
    assert.deepEqual(send.read().dataPages, 30);
    assert.deepEqual(send.read().zeroPages, 34);
    // Pass 1: the guest rewrote page 5 (present: overwritten in place) and page 50 (a hole: copied), and zeroed page 7.
    new DataView(src.memory.buffer).setInt32(5 * PAGE, 0x5eed, true);
    new DataView(src.memory.buffer).setInt32(50 * PAGE, 0x5050, true);
    src.memory.fill(0, 7 * PAGE, 8 * PAGE);
    await send.sendPass(1, PageBitmap.fromPages(PAGES, [5, 7, 50]), PAGES, false);
    await recv.passPlaced(1);
    assert.equal(wordAt(d, 5), 0x5eed);
    assert.equal(wordAt(d, 50), 0x5050);
    assert.equal(d.states.get(50), PageState.RECEIVED);
    assert.ok(d.mem.view().subarray(7 * PAGE, 8 * PAGE).every((x) => x === 0), 'page 7 zeroed in place');
    // --verify: the receiver recorded the newest bytes' hash of every page, zero pages included.
    const hashes = new Uint32Array(digest.buffer);
    for (const p of [5, 7, 10, 50]) {
      const h = pageHash(src.memory.subarray(p * PAGE, (p + 1) * PAGE));
      assert.deepEqual([hashes[2 * p], hashes[2 * p + 1]], h, `digest of page ${p}`);
    }
    assert.equal(recv.read().dataPages + recv.read().zeroPages, PAGES + 3);
    // The holes: 30 of pass 0 and page 50 of pass 1.
    assert.equal(recv.read().pagesMoved, movePool ? 31 : 0);
    await Promise.all([send.close(), recv.closed()]);
  } finally {
    send.stop();
    recv.stop();
    d.release();
  }
});
}

test('a PAGES frame with one flipped bit is refused, never placed (injected fault: the peer flips it)', async () => {
  const d = destination(WASM_PAGES, [2, 3]);
  const { recv, peer } = await receiverFacingPeer(d);
  try {
    const frame = peer.seal(DataplaneFrame.PAGES, DataplanePeer.pagesBody(2, Buffer.alloc(2 * PAGE, 0x41)));
    frame[8 + 8 + 100]! ^= 0x04; // one bit of the first page's ciphertext
    peer.sock.write(frame);
    assert.match((await recv.ended) ?? '', /failed authentication/);
    assert.equal(d.states.get(2), PageState.PENDING);
    assert.equal(d.states.get(3), PageState.PENDING);
    assert.equal(recv.read().dataPages, 0);
    assert.match(recv.stop() ?? '', /failed authentication/);
    await assert.rejects(recv.passPlaced(0), /failed authentication/);
  } finally {
    recv.stop();
    d.release();
    peer.sock.destroy();
  }
});

test('a connection torn in the middle of a pass ends the receiver with that reason; what arrived whole stays placed, the rest pending', async () => {
  const d = destination(WASM_PAGES, [1, 2]);
  const { recv, peer } = await receiverFacingPeer(d);
  try {
    peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(1, Buffer.alloc(PAGE, 0x11)));
    const frame = peer.seal(DataplaneFrame.PAGES, DataplanePeer.pagesBody(2, Buffer.alloc(PAGE, 0x22)));
    peer.sock.end(frame.subarray(0, 1000)); // half a frame, then the end of the stream
    assert.match((await recv.ended) ?? '', /ended|closed/i);
    assert.equal(d.states.get(1), PageState.RECEIVED);
    assert.equal(d.states.get(2), PageState.PENDING);
    await assert.rejects(recv.passPlaced(0));
  } finally {
    recv.stop();
    d.release();
    peer.sock.destroy();
  }
});

test('a sender whose destination goes away mid-pass fails the pass with the reason', async () => {
  const pages = 8192; // 32 MiB: more than the kernel's socket buffers hold, so the pass is still being written
  const src = sourceImage(pages);
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const send = new PrecopySender({ sock: takeSocketFd(a), secret, memory: () => src.memory, maxPages: pages });
  const peer = await DataplanePeer.open(b, secret, DataplaneRole.ACCEPTOR, 'precopy');
  try {
    const pass = send.sendPass(0, new PageBitmap(pages).addRange(0, pages), pages, false);
    const first = await peer.next();
    assert.equal(first?.type, DataplaneFrame.PAGES);
    peer.sock.destroy(); // the destination is gone
    await assert.rejects(pass, /native precopy/);
  } finally {
    send.stop();
  }
});

test('pages beyond the memory wait for its growth (GROW on the bulk channel) and are then placed; outside the reservation they are refused', async () => {
  const d = destination(WASM_PAGES, Array.from({ length: PAGES }, (_, p) => p));
  const { recv, peer } = await receiverFacingPeer(d, 16);
  try {
    peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(20, Buffer.alloc(PAGE, 0x20)));
    peer.send(DataplaneFrame.MARK, run(0, 0));
    // Not placed while the memory is 16 pages; placed (and the MARK after it) once it grows.
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(d.states.get(20), PageState.PENDING);
    recv.setPageCount(32);
    await recv.passPlaced(0);
    assert.equal(d.states.get(20), PageState.RECEIVED);
    assert.equal(d.mem.view()[20 * PAGE], 0x20);
    peer.send(DataplaneFrame.ZERO, run(PAGES - 1, 2));
    assert.match((await recv.ended) ?? '', /outside the reservation/);
  } finally {
    recv.stop();
    d.release();
    peer.sock.destroy();
  }
});

test('a REQUEST (a postcopy frame) during precopy is refused', async () => {
  const d = destination(WASM_PAGES, [1]);
  const { recv, peer } = await receiverFacingPeer(d);
  try {
    peer.send(DataplaneFrame.REQUEST, run(1, 1));
    assert.match((await recv.ended) ?? '', /type 2/);
    assert.equal(d.states.get(1), PageState.PENDING);
  } finally {
    recv.stop();
    d.release();
    peer.sock.destroy();
  }
});

test('a pass past the end of the memory view (or of the bitmap) is refused with an error, never read', async () => {
  for (const [what, limit, error] of [['the memory view', 40, /limit of 40 pages is past the memory view's 32/], ['the bitmap', PAGES + 16, /limit of 80 pages is past the bitmap's 64/]] as const) {
    const src = sourceImage(PAGES);
    const secret = randomBytes(32);
    const [a, b] = await loopbackPair();
    // The view covers 32 pages; the bitmap covers 64.
    const send = new PrecopySender({ sock: takeSocketFd(a), secret, memory: () => src.memory.subarray(0, 32 * PAGE), maxPages: PAGES });
    const peer = await DataplanePeer.open(b, secret, DataplaneRole.ACCEPTOR, 'precopy');
    try {
      await assert.rejects(send.sendPass(0, new PageBitmap(PAGES).addRange(0, PAGES), limit, false), error, what);
      assert.equal(send.read().dataPages, 0, `${what}: nothing of the pass was sent`);
    } finally {
      send.stop();
      peer.sock.destroy();
    }
  }
});

test('a memory that grows during precopy: the next pass reads the longer view, and its pages arrive intact', async () => {
  const d = destination(WASM_PAGES, Array.from({ length: PAGES }, (_, p) => p));
  // A real growable guest memory: 2 wasm pages (32 host pages) now, 4 at most.
  const guest = new WebAssembly.Memory({ initial: WASM_PAGES / 2, maximum: WASM_PAGES, shared: true });
  const fill = () => {
    const words = new Int32Array(guest.buffer);
    for (let p = 0; p < words.length / 1024; p++) words[p * 1024] = patternOf(p);
  };
  fill();
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const recv = receiverFor(d, takeSocketFd(b), secret);
  const send = new PrecopySender({ sock: takeSocketFd(a), secret, memory: () => new Uint8Array(guest.buffer), maxPages: PAGES });
  try {
    await send.sendPass(0, new PageBitmap(PAGES).addRange(0, 32), 32, false);
    await recv.passPlaced(0);
    // The guest grows: the next pass names pages past the view the thread started with.
    guest.grow(WASM_PAGES / 2);
    fill();
    await send.sendPass(1, new PageBitmap(PAGES).addRange(30, PAGES), PAGES, false);
    await recv.passPlaced(1);
    for (const p of [0, 31, 32, 47, 63]) {
      assert.equal(d.states.get(p), PageState.RECEIVED, `page ${p}`);
      assert.equal(wordAt(d, p), patternOf(p), `page ${p}`);
    }
    assert.equal(send.read().dataPages, 32 + 34);
    await Promise.all([send.close(), recv.closed()]);
  } finally {
    send.stop();
    recv.stop();
    d.release();
  }
});

test('the CLOSE wait has one absolute deadline: a destination that dribbles its CLOSE a byte at a time cannot stretch it', async () => {
  const src = sourceImage(PAGES);
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const send = new PrecopySender({ sock: takeSocketFd(a), secret, memory: () => src.memory, maxPages: PAGES, timeoutMs: 1000 });
  const peer = await DataplanePeer.open(b, secret, DataplaneRole.ACCEPTOR, 'precopy');
  let dribbling = true;
  try {
    const closing = send.close();
    assert.equal((await peer.next())?.type, DataplaneFrame.CLOSE);
    // A whole CLOSE back, one byte every 150 ms: about 5 s, each byte a wake-up of the sender's
    // wait. A timeout restarted at each wake-up would take it all; the deadline (1 s) does not.
    const answer = peer.seal(DataplaneFrame.CLOSE, run(0, 0));
    const dribble = (async () => {
      for (let i = 0; i < answer.length && dribbling && !peer.sock.destroyed; i++) {
        peer.sock.write(answer.subarray(i, i + 1));
        await new Promise((r) => setTimeout(r, 150));
      }
    })();
    await assert.rejects(closing, /did not close the precopy stream within 1000 ms/);
    dribbling = false;
    await dribble;
  } finally {
    dribbling = false;
    send.stop();
    peer.sock.destroy();
  }
});

test('--max-bandwidth: a capped pass stays near the cap (at most twice it, over 2 s of data); uncapped, the same pass completes', async (t) => {
  // 2 MiB at 1 MiB/s: about 2 s. The cap is far below what AES-GCM over loopback carries on any
  // machine (300-750 MiB/s here), so a stream that ignored it could not stay under twice it.
  const pages = 512;
  const cap = 1024 * 1024;
  const d = destination(pages / 16, Array.from({ length: pages }, (_, p) => p));
  const src = sourceImage(pages);
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const recv = receiverFor(d, takeSocketFd(b), secret, pages);
  const send = new PrecopySender({ sock: takeSocketFd(a), secret, memory: () => src.memory, maxPages: pages, maxBandwidth: cap });
  const all = new PageBitmap(pages).addRange(0, pages);
  /** One whole pass, placed: its bytes per second. */
  const timedPass = async (pass: number): Promise<number> => {
    const bytes0 = send.read().bytesSent;
    const t0 = performance.now();
    await send.sendPass(pass, all, pages, false);
    await recv.passPlaced(pass);
    return ((send.read().bytesSent - bytes0) / (performance.now() - t0)) * 1000;
  };
  try {
    const capped = await timedPass(0);
    send.setCapped(false);
    const uncapped = await timedPass(1);
    t.diagnostic(`capped at ${(cap / 2 ** 20).toFixed(0)} MiB/s: ${(capped / 2 ** 20).toFixed(1)} MiB/s; uncapped: ${(uncapped / 2 ** 20).toFixed(1)} MiB/s`);
    // Only an upper bound: a busy machine makes it slower, never faster. The cap is on the frames' bytes.
    assert.ok(capped <= 2 * cap, `a capped pass ran at ${(capped / 2 ** 20).toFixed(1)} MiB/s`);
    assert.equal(wordAt(d, pages - 1), patternOf(pages - 1));
    await Promise.all([send.close(), recv.closed()]);
  } finally {
    send.stop();
    recv.stop();
    d.release();
  }
});

/**
 * A sender capped at 64 KiB/s facing a receiver whose every page is pending: 6144 pages (24 MiB)
 * take more than 6 minutes capped, under a second uncapped.
 */
async function cappedPair(pages = 6144): Promise<{ d: Destination; src: SourceImage; recv: PrecopyReceiver; send: PrecopySender }> {
  const d = destination(pages / 16, Array.from({ length: pages }, (_, p) => p));
  const src = sourceImage(pages);
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const recv = receiverFor(d, takeSocketFd(b), secret, pages);
  const send = new PrecopySender({ sock: takeSocketFd(a), secret, memory: () => src.memory, maxPages: pages, maxBandwidth: 64 * 1024 });
  return { d, src, recv, send };
}

test('lifting the cap (the switchover) takes effect in the middle of a pass', { timeout: 120_000 }, async () => {
  const pages = 6144;
  const { d, recv, send } = await cappedPair(pages);
  try {
    const pass = send.sendPass(0, new PageBitmap(pages).addRange(0, pages), pages, false);
    while (recv.read().dataPages === 0) await new Promise((r) => setTimeout(r, 5)); // the pass is under way, capped
    send.setCapped(false);
    await pass;
    await recv.passPlaced(0);
    assert.equal(recv.read().dataPages, pages);
    await Promise.all([send.close(), recv.closed()]);
  } finally {
    send.stop();
    recv.stop();
    d.release();
  }
});

test('a cut pass sends none of its pages from where the thread noticed the cut, still sends its ZERO ranges and its MARK, and says where it cut', { timeout: 120_000 }, async () => {
  // Capped, the pass's 6 000 data pages would take minutes: the cut lands early in it.
  const pages = 6144;
  const dataEnd = pages - 144; // the last 144 pages are not in the set: ZERO ranges of pass 0
  const { d, recv, send } = await cappedPair(pages);
  try {
    const pass = send.sendPass(0, new PageBitmap(pages).addRange(0, dataEnd), pages, true);
    while (recv.read().dataPages === 0) await new Promise((r) => setTimeout(r, 5)); // under way, capped
    assert.ok(send.cursor() < dataEnd, `cursor ${send.cursor()}`);
    send.cut();
    send.setCapped(false); // what is left of the pass (its ZERO range) need not wait for tokens
    await pass;
    await recv.passPlaced(0);
    const cutAt = send.cutAt();
    assert.ok(cutAt > 0 && cutAt < dataEnd, `cut at ${cutAt}`);
    for (const p of [0, cutAt - 1]) {
      assert.equal(d.states.get(p), PageState.RECEIVED, `page ${p}, before the cut`);
      assert.equal(wordAt(d, p), patternOf(p));
    }
    // Left out: untouched (pending, as this test's destination marked every page; a real one holds
    // them known-zero until the switchover's DISCARD).
    for (const p of [cutAt, dataEnd - 1]) assert.equal(d.states.get(p), PageState.PENDING, `page ${p}, left out`);
    for (const p of [dataEnd, pages - 1]) assert.equal(d.states.get(p), PageState.KNOWN_ZERO, `page ${p}, a ZERO range after the cut`);
    // What the destination counted for the pass is what the source can say it sent.
    assert.equal(recv.read().dataPages + recv.read().zeroPages, pages - (dataEnd - cutAt));
    // The next pass is whole again: the cut was for one pass only.
    await send.sendPass(1, new PageBitmap(pages).addRange(cutAt, dataEnd), pages, false);
    await recv.passPlaced(1);
    assert.equal(send.cutAt(), pages);
    assert.equal(d.states.get(dataEnd - 1), PageState.RECEIVED);
    assert.equal(wordAt(d, dataEnd - 1), patternOf(dataEnd - 1));
    await Promise.all([send.close(), recv.closed()]);
  } finally {
    send.stop();
    recv.stop();
    d.release();
  }
});

test('bad options are refused with an error naming them, never a crash; the handed-over socket is closed on every refusal', async () => {
  const d = destination(WASM_PAGES, []);
  const src = sourceImage(PAGES);
  const shared = d.states.shared();
  const states = new Uint8Array(shared.states, 0, shared.pageCount);
  const stateCounts = new Int32Array(shared.counts, 0, 3);
  try {
    const refusals: Refusal[] = [
      ['short secret', (sock) => new PrecopySender({ sock, secret: randomBytes(8), memory: () => src.memory, maxPages: PAGES }), /secret has 8 elements/],
      ['a negative timeout', (sock) => new PrecopySender({ sock, secret: randomBytes(32), memory: () => src.memory, maxPages: PAGES, timeoutMs: -5 }), /timeoutMs must be an integer/],
      ['misaligned base', (sock) => new PrecopyReceiver({ sock, secret: randomBytes(32), uffd: d.uffd.fd, base: d.mem.base + 8, states, stateCounts, pageCount: PAGES }), /base must be page-aligned/],
      ['a bad uffd', (sock) => new PrecopyReceiver({ sock, secret: randomBytes(32), uffd: -3, base: d.mem.base, states, stateCounts, pageCount: PAGES }), /uffd must be an integer/],
      // Building the options throws before the addon is called: startOwning closes the socket.
      ['a bitmap that cannot be allocated', (sock) => new PrecopySender({ sock, secret: randomBytes(32), memory: () => src.memory, maxPages: 2 ** 60 }), /RangeError/],
    ];
    await assertRefusedAndClosed(refusals);
  } finally {
    d.release();
  }
});
