// The native page data plane (native/dataplane/), driven from TypeScript: real userfaultfd on a
// real guest memory, real loopback TCP, and either both native threads or one native thread facing
// the TypeScript implementation of the same framing (src/migration/dataplane/frames.ts) as a controlled or
// hostile peer. No timing assertions: every wait is for an event.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { FaultPlane } from '../src/migration/dataplane/fault-plane.js';
import { AnswerPlane } from '../src/migration/dataplane/answer-plane.js';
import { DataplaneFrame, DataplanePeer } from '../src/migration/dataplane/frames.js';
import { takeSocketFd } from '../src/migration/dataplane/socket-fd.js';
import { DataplaneRole, dataplaneAddon } from '../src/sys/dataplane.js';
import { PageState } from '../src/memory/page-state.js';
import { UFFD_FEATURE } from '../src/sys/uffd.js';
import { PageDigest, pageHash } from '../src/migration/verify/digest.js';
import { GuestThread } from './fixtures/memory/guest.js';
import { PAGE, assertRefusedAndClosed, destination, loopbackPair, patternOf, sourceImage, type Destination, type Refusal } from './fixtures/dataplane/loopback.js';
import { waitFor } from './fixtures/guest/helpers.js';

const WASM_PAGES = 4; // 64 host pages
const PAGES = WASM_PAGES * 16;

/**
 * The fault thread hashes a page, marks it received, counts it and records its fault's latency after
 * the UFFDIO_COPY that already woke the guest: a load can return before those land. Waited for (an
 * event, bounded), then asserted exactly.
 */
const settled = (what: string, pred: () => boolean): Promise<void> => waitFor(what, pred, 10_000);

/** A native fault thread (acceptor) facing a TypeScript peer playing the source (connector). */
async function faultPlaneFacingPeer(d: Destination, pageCount = PAGES, movePool = false): Promise<{ plane: FaultPlane; peer: DataplanePeer }> {
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const plane = new FaultPlane({
    uffd: d.uffd.fd, sock: takeSocketFd(b), role: DataplaneRole.ACCEPTOR, base: d.mem.base, pageCount,
    states: d.states, requests: d.requests, secret, raisePriority: false, movePool,
  });
  const peer = await DataplanePeer.open(a, secret, DataplaneRole.CONNECTOR);
  return { plane, peer };
}

/** A native answer thread (connector) facing a TypeScript peer playing the destination (acceptor). */
async function answerPlaneFacingPeer(pageCount = PAGES): Promise<{ plane: AnswerPlane; peer: DataplanePeer; src: ReturnType<typeof sourceImage> }> {
  const secret = randomBytes(32);
  const src = sourceImage(pageCount);
  const [a, b] = await loopbackPair();
  const plane = new AnswerPlane({
    sock: takeSocketFd(a), role: DataplaneRole.CONNECTOR, memory: src.memory, pageCount,
    pending: src.pending.words, claims: src.claims.words, secret, raisePriority: false,
  });
  const peer = await DataplanePeer.open(b, secret, DataplaneRole.ACCEPTOR);
  return { plane, peer, src };
}

function pageBytes(src: Uint8Array, first: number, count: number): Buffer {
  return Buffer.from(src.subarray(first * PAGE, (first + count) * PAGE));
}

/** The next REQUEST the peer receives: [first, count]. */
async function nextRequest(peer: DataplanePeer): Promise<[number, number]> {
  const f = await peer.next();
  assert.ok(f, 'the fault thread closed the connection instead of asking');
  assert.equal(f.type, DataplaneFrame.REQUEST);
  return [f.body.readUInt32BE(0), f.body.readUInt32BE(4)];
}

test('native on both sides: many threads faulting on one page get it with one request; zero and received pages never leave', async () => {
  const pending = [3, 4, 5, 9];
  const d = destination(WASM_PAGES, pending);
  const src = sourceImage(PAGES);
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const answer = new AnswerPlane({ sock: takeSocketFd(a), memory: src.memory, pageCount: PAGES, pending: src.pending.words, claims: src.claims.words, secret, raisePriority: false });
  const digest = new PageDigest(d.mem.maxBytes);
  const fault = new FaultPlane({ uffd: d.uffd.fd, sock: takeSocketFd(b), base: d.mem.base, pageCount: PAGES, states: d.states, requests: d.requests, secret, raisePriority: false, digest: digest.buffer });
  const guests = Array.from({ length: 8 }, () => new GuestThread(d.mem.memory, WASM_PAGES));
  try {
    const values = await Promise.all(guests.map((g) => g.run<number>({ op: 'load', addr: 3 * PAGE })));
    assert.deepEqual(values, guests.map(() => patternOf(3)));
    const waiting = new Int32Array(d.requests.waiting);
    await settled('the fault thread to finish placing page 3', () => fault.read().pagesPlaced >= 1 && Atomics.load(waiting, 0) === 0);
    // One page, one request, one page placed, however many threads faulted on it.
    assert.equal(fault.read().requests, 1);
    assert.equal(fault.read().pagesPlaced, 1);
    assert.equal(answer.read().pagesSent, 1);
    assert.equal(d.states.get(3), PageState.RECEIVED);
    assert.equal(Atomics.load(waiting, 0), 0);
    // --verify: the thread recorded the page's hash, the same function as the TypeScript digest's.
    assert.deepEqual([...new Uint32Array(digest.buffer, 3 * 8, 2)], pageHash(src.memory.subarray(3 * PAGE, 4 * PAGE)));
    // A known-zero page is filled locally: no request.
    assert.equal(await guests[0]!.run<number>({ op: 'load', addr: 20 * PAGE }), 0);
    assert.equal(fault.read().zeroFills, 1);
    assert.equal(fault.read().requests, 1);
    // Another pending page, and the last byte of it too (the whole page crossed).
    assert.equal(await guests[1]!.run<number>({ op: 'load', addr: 9 * PAGE }), patternOf(9));
    assert.equal(await guests[1]!.run<number>({ op: 'load', addr: 10 * PAGE - 4 }) >>> 24, 9);
    assert.equal(fault.read().requests, 2);
    await settled('the latency of the fault on page 9', () => fault.latenciesSince(0).samples.length >= 2);
    const lat = fault.latenciesSince(0);
    assert.equal(lat.samples.length, 2);
    assert.ok(lat.samples.every((us) => us >= 0));
    assert.equal(fault.running, true);
  } finally {
    // The first stopped ends cleanly; the other may see its peer's close first.
    assert.equal(fault.stop(), null);
    assert.equal(await fault.ended, null);
    assert.match(String(answer.stop()), /^null$|the peer closed the connection/);
    d.release();
    await Promise.all(guests.map((g) => g.terminate()));
  }
});

test('fault-around: the pending pages after a fault come with it; only the faulted page counts as a fault, and a later fault on a page asked ahead counts from that fault', async () => {
  const d = destination(WASM_PAGES, [10, 11, 12, 13, 14, 20]);
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const plane = new FaultPlane({
    uffd: d.uffd.fd, sock: takeSocketFd(b), role: DataplaneRole.ACCEPTOR, base: d.mem.base, pageCount: PAGES,
    states: d.states, requests: d.requests, secret, raisePriority: false, faultAround: 4,
  });
  const peer = await DataplanePeer.open(a, secret, DataplaneRole.CONNECTOR);
  const g = new GuestThread(d.mem.memory, WASM_PAGES);
  const g2 = new GuestThread(d.mem.memory, WASM_PAGES);
  try {
    const first = g.run<number>({ op: 'load', addr: 10 * PAGE });
    // Page 10 and the three pending pages after it, in one request.
    assert.deepEqual(await nextRequest(peer), [10, 4]);
    // A second thread faults on page 12, asked ahead: no second request; it waits for the answer.
    const ahead = g2.run<number>({ op: 'load', addr: 12 * PAGE });
    // Its fault must have reached the fault thread before page 12 is answered (an event, not a time).
    while (plane.read().faults < 2) await new Promise((r) => setTimeout(r, 2));
    // Answer page 11 alone first: asked ahead, nobody faulted on it, so no latency is recorded.
    peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(11, Buffer.alloc(PAGE, 11)));
    peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(10, Buffer.alloc(PAGE, 10)));
    assert.equal(await first, 0x0a0a0a0a);
    peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(12, Buffer.concat([Buffer.alloc(PAGE, 12), Buffer.alloc(PAGE, 13)])));
    assert.equal(await ahead, 0x0c0c0c0c);
    // The thread on page 12 wakes as soon as that page is placed, before page 13 of the same frame
    // is: wait for the fault thread to finish the frame (an event, not a time).
    while (plane.read().pagesPlaced < 4) await new Promise((r) => setTimeout(r, 2));
    assert.equal(plane.read().requests, 1);
    assert.equal(plane.read().pagesPlaced, 4);
    for (const p of [10, 11, 12, 13]) assert.equal(d.states.get(p), PageState.RECEIVED);
    assert.equal(d.states.get(14), PageState.PENDING, 'fault-around stops at its count');
    // Two faults waited (pages 10 and 12); pages 11 and 13 came ahead of any fault.
    assert.equal(plane.latenciesSince(0).samples.length, 2);
    assert.equal(Atomics.load(new Int32Array(d.requests.waiting), 0), 0);
  } finally {
    plane.stop();
    peer.sock.destroy();
    d.release();
    await Promise.all([g.terminate(), g2.terminate()]);
  }
});

test('a PAGES frame with one flipped bit is refused, never placed; a flipped REQUEST is refused too', async () => {
  const d = destination(WASM_PAGES, [2]);
  const { plane, peer } = await faultPlaneFacingPeer(d);
  const g = new GuestThread(d.mem.memory, WASM_PAGES);
  try {
    void g.run({ op: 'load', addr: 2 * PAGE }).catch(() => undefined);
    assert.deepEqual(await nextRequest(peer), [2, 1]);
    const frame = peer.seal(DataplaneFrame.PAGES, DataplanePeer.pagesBody(2, Buffer.alloc(PAGE, 0x41)));
    frame[8 + 8 + 100]! ^= 0x04; // one bit of the page's ciphertext
    peer.sock.write(frame);
    assert.match((await plane.ended) ?? '', /failed authentication/);
    assert.equal(d.states.get(2), PageState.PENDING);
    assert.equal(plane.read().pagesPlaced, 0);
    assert.equal(plane.read().state, 'failed');
    assert.match(plane.stop() ?? '', /failed authentication/);
  } finally {
    plane.stop();
    d.release(); // the blocked guest thread wakes (and reads zeros): it is thrown away
    await g.terminate();
    peer.sock.destroy();
  }

  const s = await answerPlaneFacingPeer();
  try {
    const body = Buffer.alloc(8);
    body.writeUInt32BE(1, 0);
    body.writeUInt32BE(1, 4);
    const frame = s.peer.seal(DataplaneFrame.REQUEST, body);
    frame[frame.length - 1]! ^= 0x80; // the tag
    s.peer.sock.write(frame);
    assert.match((await s.plane.ended) ?? '', /failed authentication/);
    assert.equal(s.plane.read().pagesSent, 0);
  } finally {
    s.plane.stop();
    s.peer.sock.destroy();
  }
});

test('a frame from a peer without the session secret fails at FINISHED', async () => {
  const d = destination(WASM_PAGES, [2]);
  const [a, b] = await loopbackPair();
  const plane = new FaultPlane({ uffd: d.uffd.fd, sock: takeSocketFd(b), base: d.mem.base, pageCount: PAGES, states: d.states, requests: d.requests, secret: randomBytes(32), raisePriority: false });
  try {
    await assert.rejects(DataplanePeer.open(a, randomBytes(32), DataplaneRole.CONNECTOR));
    assert.match((await plane.ended) ?? '', /failed authentication/);
  } finally {
    plane.stop();
    a.destroy();
    d.release();
  }
});

test('pages outside the memory are refused on both sides', async () => {
  const d = destination(WASM_PAGES, [2]);
  // The source may send only the first 32 pages (the memory at the commit), of a 64-page reservation.
  const { plane, peer } = await faultPlaneFacingPeer(d, 32);
  try {
    peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(40, Buffer.alloc(PAGE, 1)));
    assert.match((await plane.ended) ?? '', /outside the memory of 32 pages/);
    assert.equal(plane.read().pagesPlaced, 0);
  } finally {
    plane.stop();
    peer.sock.destroy();
    d.release();
  }
  const s = await answerPlaneFacingPeer(32);
  try {
    s.peer.request(31, 2); // its last page and one beyond
    assert.match((await s.plane.ended) ?? '', /outside the memory of 32 pages/);
    assert.equal(s.plane.read().pagesSent, 0);
    const huge = await answerPlaneFacingPeer(32);
    huge.peer.request(0, 0x7fffffff);
    assert.match((await huge.plane.ended) ?? '', /refused REQUEST for 2147483647 pages/);
    huge.plane.stop();
    huge.peer.sock.destroy();
  } finally {
    s.plane.stop();
    s.peer.sock.destroy();
  }
});

test('a page that has already arrived is not placed again, and the thread goes on', async () => {
  const d = destination(WASM_PAGES, [5, 6]);
  // Page 5 arrives first by another way (the bulk stream): placed and marked received.
  const first = Buffer.alloc(PAGE);
  first.writeInt32LE(1111, 0);
  d.uffd.copy(d.mem.pageAddress(5), first, 0, PAGE);
  d.states.markReceived(5);
  const { plane, peer } = await faultPlaneFacingPeer(d);
  const g = new GuestThread(d.mem.memory, WASM_PAGES);
  try {
    const late = Buffer.alloc(PAGE);
    late.writeInt32LE(2222, 0);
    peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(5, late));
    // The thread still serves faults: page 6 is asked for and placed.
    const loading = g.run<number>({ op: 'load', addr: 6 * PAGE });
    assert.deepEqual(await nextRequest(peer), [6, 1]);
    const six = Buffer.alloc(PAGE);
    six.writeInt32LE(6666, 0);
    peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(6, six));
    assert.equal(await loading, 6666);
    assert.equal(await g.run<number>({ op: 'load', addr: 5 * PAGE }), 1111);
    await settled('the fault thread to count page 6', () => plane.read().pagesPlaced >= 1);
    assert.equal(plane.read().pagesPlaced, 1);
    assert.equal(plane.read().pagesReceived, 2);
    assert.equal(plane.read().state, 'running');
  } finally {
    assert.equal(plane.stop(), null);
    peer.sock.destroy();
    d.release();
    await g.terminate();
  }

  // Source side: a request for a page the destination holds sends nothing for it.
  const s = await answerPlaneFacingPeer();
  try {
    s.src.pending.delete(4);
    s.peer.request(4, 1);
    s.peer.request(1, 1);
    const f = await s.peer.next();
    assert.equal(f?.type, DataplaneFrame.PAGES);
    assert.equal(f.body.readUInt32BE(0), 1);
    assert.equal(f.body.readUInt32BE(4), 1);
    assert.ok(f.body.subarray(8).equals(pageBytes(s.src.memory, 1, 1)));
    assert.equal(s.plane.read().requests, 2);
    assert.equal(s.plane.read().pagesSent, 1);
    // A page the bulk stream claimed is still answered (a fault never waits behind bulk data)...
    s.src.claims.claim(7);
    s.peer.request(7, 1);
    const g7 = await s.peer.next();
    assert.equal(g7?.body.readUInt32BE(0), 7);
    assert.equal(s.plane.read().twice, 1);
    // ...but of the pages asked ahead of a fault (fault-around), the claimed ones are on their way
    // already and are not sent again: a request for 10..13 with 11 and 12 claimed sends 10 and 13.
    s.src.claims.claim(11);
    s.src.claims.claim(12);
    s.peer.request(10, 4);
    const sent: number[] = [];
    while (sent.length < 2) {
      const fr = await s.peer.next();
      assert.equal(fr?.type, DataplaneFrame.PAGES);
      for (let i = 0; i < fr.body.readUInt32BE(4); i++) sent.push(fr.body.readUInt32BE(0) + i);
    }
    assert.deepEqual(sent, [10, 13]);
    assert.equal(s.plane.read().twice, 1, 'only a faulting page crosses twice');
    assert.equal(s.plane.read().pagesSent, 4);
    // The faulting page comes in a frame of its own, ahead of the pages asked with it: the
    // destination wakes the faulting thread after opening 4 KiB, not the whole run.
    s.peer.request(20, 4);
    const frames: Array<[number, number]> = [];
    for (let got = 0; got < 4;) {
      const fr = await s.peer.next();
      assert.equal(fr?.type, DataplaneFrame.PAGES);
      frames.push([fr.body.readUInt32BE(0), fr.body.readUInt32BE(4)]);
      got += fr.body.readUInt32BE(4);
    }
    assert.deepEqual(frames, [[20, 1], [21, 3]]);
  } finally {
    assert.equal(s.plane.stop(), null);
    s.peer.sock.destroy();
  }
});

/** Pages [3, 11) pending; page 7 already in memory though still pending (a placement that raced). */
function raced(): Destination {
  const d = destination(WASM_PAGES, [3, 4, 5, 6, 7, 8, 9, 10], UFFD_FEATURE.MOVE);
  const early = Buffer.alloc(PAGE);
  early.writeInt32LE(1111, 0);
  d.uffd.copy(d.mem.pageAddress(7), early, 0, PAGE);
  return d;
}

for (const movePool of [true, false]) {
  test(`${movePool ? 'with' : 'without'} the pool made ahead: unasked pages are ${movePool ? 'moved in (UFFDIO_MOVE)' : 'copied (UFFDIO_COPY)'}, a page placed first is left alone, a faulted page is copied`, async () => {
    const d = raced();
    const { plane, peer } = await faultPlaneFacingPeer(d, PAGES, movePool);
    const g = new GuestThread(d.mem.memory, WASM_PAGES);
    try {
      // The pool is made from the first PAGES frame on (not inside the switchover): page 10 first.
      const ten = Buffer.alloc(PAGE);
      ten.writeInt32LE(patternOf(10), 0);
      peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(10, ten));
      await settled('page 10 placed', () => plane.read().pagesPlaced >= 1);
      if (movePool) await settled('the pool to be made', () => plane.read().poolReady === 8);
      assert.equal(plane.read().poolReady, movePool ? 8 : 0);
      const movedBefore = plane.read().pagesMoved;
      // Unasked (the bulk stream's way): pages 3..7 in one frame.
      const body = Buffer.alloc(5 * PAGE);
      for (let i = 0; i < 5; i++) body.writeInt32LE(patternOf(3 + i), i * PAGE);
      peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(3, body));
      await settled('pages 3..7 placed', () => plane.read().pagesPlaced >= 6);
      for (const p of [3, 4, 5, 6]) assert.equal(await g.run<number>({ op: 'load', addr: p * PAGE }), patternOf(p));
      assert.equal(await g.run<number>({ op: 'load', addr: 7 * PAGE }), 1111, 'the page placed first keeps its bytes');
      // A fault on a hole: asked for, answered, copied in (a run a thread waits on never comes
      // from the pool: the move's TLB flush would fall inside the wait), and the thread woken.
      const loading = g.run<number>({ op: 'load', addr: 9 * PAGE + 8 });
      assert.deepEqual(await nextRequest(peer), [9, 1]);
      const nine = Buffer.alloc(PAGE);
      nine.writeInt32LE(9999, 8);
      peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(9, nine));
      assert.equal(await loading, 9999);
      await settled('page 9 counted', () => plane.read().pagesPlaced >= 7);
      const s = plane.read();
      assert.equal(s.eexist, 1, 'page 7 was found in place');
      assert.equal(s.pagesPlaced, 7, 'page 7 counts as well: it is received now, whoever placed it');
      assert.equal(s.pagesMoved - movedBefore, movePool ? 4 : 0, 'pages 3..6, not page 9');
      assert.equal(s.state, 'running');
    } finally {
      assert.equal(plane.stop(), null);
      peer.sock.destroy();
      d.release();
      await g.terminate();
    }
  });
}

test('a connection torn halfway through a page ends the thread with that reason; the page stays pending', async () => {
  const d = destination(WASM_PAGES, [8]);
  const { plane, peer } = await faultPlaneFacingPeer(d);
  const g = new GuestThread(d.mem.memory, WASM_PAGES);
  try {
    void g.run({ op: 'load', addr: 8 * PAGE }).catch(() => undefined);
    assert.deepEqual(await nextRequest(peer), [8, 1]);
    const frame = peer.seal(DataplaneFrame.PAGES, DataplanePeer.pagesBody(8, Buffer.alloc(PAGE, 7)));
    peer.sock.end(frame.subarray(0, 8 + 8 + PAGE / 2));
    assert.match((await plane.ended) ?? '', /ended halfway through a frame/);
    assert.equal(d.states.get(8), PageState.PENDING);
    assert.equal(plane.read().pagesPlaced, 0);
  } finally {
    plane.stop();
    d.release();
    await g.terminate();
  }
});

test('shutdown while a thread is blocked on a hole: stop() returns at once, and releasing the memory wakes the thread', async () => {
  const d = destination(WASM_PAGES, [12]);
  const { plane, peer } = await faultPlaneFacingPeer(d);
  const g = new GuestThread(d.mem.memory, WASM_PAGES);
  let settled = false;
  const loading = g.run<number>({ op: 'load', addr: 12 * PAGE }).finally(() => (settled = true));
  try {
    assert.deepEqual(await nextRequest(peer), [12, 1]); // the guest is blocked on page 12 now
    assert.equal(plane.stop(), null);
    assert.equal(await plane.ended, null);
    assert.equal(settled, false, 'nothing placed page 12: its thread is still blocked');
    assert.equal(d.states.get(12), PageState.PENDING);
    // The owner's duty once no page can come (IncomingMemory.stop() after the guest is stopped):
    // unregistering wakes the thread, which then reads zeros.
    d.release();
    assert.equal(await loading, 0);
    // The connection was closed by stop(): the peer sees the end.
    assert.equal(await peer.next(), null);
  } finally {
    d.release();
    await g.terminate();
    peer.sock.destroy();
  }
});

test('a worker terminated while its data plane threads run (or start, or stop) ends cleanly, never a crash', () => {
  const script = fileURLToPath(new URL('./fixtures/dataplane/terminate-churn.js', import.meta.url));
  const r = spawnSync(process.execPath, [script, '60'], { encoding: 'utf8', timeout: 180_000 });
  assert.equal(r.signal, null, `the child died of ${r.signal}:\n${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /terminated 60 workers with data plane threads/);
});

test('in bulk mode a claimed faulting page is not sent again: its copy is ahead in the same stream', async () => {
  const pages = 64;
  const src = sourceImage(pages);
  src.claims.claim(7); // the bulk stream's copy of page 7 went into this connection earlier
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const plane = new AnswerPlane({ sock: takeSocketFd(a), memory: src.memory, pageCount: pages, pending: src.pending.words, claims: src.claims.words, secret, raisePriority: false, bulk: true });
  const peer = await DataplanePeer.open(b, secret, DataplaneRole.ACCEPTOR);
  try {
    peer.request(7, 1);
    const sent: number[] = [];
    while (sent.length < pages - 1) {
      const f = await peer.next();
      assert.equal(f?.type, DataplaneFrame.PAGES);
      for (let i = 0; i < f.body.readUInt32BE(4); i++) sent.push(f.body.readUInt32BE(0) + i);
    }
    await settled('the request to be read', () => plane.read().requests === 1);
  } finally {
    assert.equal(plane.stop(), null); // joins the thread: the request's handling is complete
    peer.sock.destroy();
  }
  // Nothing came after the other 63 pages (the stream is closed now), and nothing counted twice.
  for (let f = await peer.next().catch(() => null); f; f = await peer.next().catch(() => null)) assert.fail(`a frame after the bulk stream: page ${f.body.readUInt32BE(0)}`);
  assert.equal(plane.read().twice, 0);
  assert.equal(plane.read().pagesSent, pages - 1);
});

test('--max-bandwidth: the native bulk stream stays near its cap (at most twice it, over 2 s of data); uncapped, it completes', async (t) => {
  // 2 MiB at 1 MiB/s: about 2 s. The cap is far below what AES-GCM over loopback carries on any
  // machine (300-750 MiB/s here), so a stream that ignored it could not stay under twice it.
  const pages = 512;
  const cap = 1024 * 1024;
  /** The whole memory streamed unasked by an answer thread in bulk mode to a native fault thread: its bytes per second. */
  const stream = async (maxBandwidth: number | undefined): Promise<number> => {
    const d = destination(pages / 16, Array.from({ length: pages }, (_, p) => p));
    const src = sourceImage(pages);
    const secret = randomBytes(32);
    const [a, b] = await loopbackPair();
    const t0 = performance.now();
    const answer = new AnswerPlane({ sock: takeSocketFd(a), memory: src.memory, pageCount: pages, pending: src.pending.words, claims: src.claims.words, secret, raisePriority: false, bulk: true, maxBandwidth });
    const fault = new FaultPlane({ uffd: d.uffd.fd, sock: takeSocketFd(b), base: d.mem.base, pageCount: pages, states: d.states, requests: d.requests, secret, raisePriority: false });
    try {
      while (fault.read().pagesPlaced < pages) {
        const state = fault.read().state;
        assert.ok(state === 'handshake' || state === 'running', `the fault thread ended (${state}) before every page was placed: ${await Promise.race([fault.ended, 'no error'])}`);
        await new Promise((r) => setTimeout(r, 10));
      }
      const rate = (answer.read().bytesSent / (performance.now() - t0)) * 1000;
      // The answer thread marks the bulk stream done when it next finds nothing to send, which a
      // capped stream reaches only once its token debt for the last frame is paid: wait for it.
      while (!answer.read().bulkDone) {
        const over = await Promise.race([answer.ended.then((e) => e ?? 'no error'), new Promise<null>((r) => setTimeout(() => r(null), 10))]);
        assert.equal(over, null, 'the answer thread ended before it marked the bulk stream done');
      }
      assert.equal(d.states.get(pages - 1), PageState.RECEIVED);
      assert.equal(new DataView(d.mem.view().buffer).getInt32((pages - 1) * PAGE, true), patternOf(pages - 1));
      return rate;
    } finally {
      fault.stop();
      answer.stop();
      d.release();
    }
  };
  const capped = await stream(cap);
  const uncapped = await stream(undefined);
  t.diagnostic(`bulk capped at ${(cap / 2 ** 20).toFixed(0)} MiB/s: ${(capped / 2 ** 20).toFixed(1)} MiB/s; uncapped: ${(uncapped / 2 ** 20).toFixed(1)} MiB/s`);
  // Only an upper bound: a busy machine makes it slower, never faster.
  assert.ok(capped <= 2 * cap, `the capped bulk stream ran at ${(capped / 2 ** 20).toFixed(1)} MiB/s`);
});

test('bad options are refused with an error naming them, never a crash; the handed-over socket is closed on every refusal', async () => {
  const d = destination(1, []);
  try {
    // Not a descriptor: nothing to own.
    assert.throws(() => new FaultPlane({ uffd: d.uffd.fd, sock: -1, base: d.mem.base, pageCount: 16, states: d.states, requests: d.requests, secret: randomBytes(32) }), /sock must be an integer/);
    const src = sourceImage(4);
    const refusals: Refusal[] = [
      ['misaligned base', (sock) => new FaultPlane({ uffd: d.uffd.fd, sock, base: d.mem.base + 1, pageCount: 16, states: d.states, requests: d.requests, secret: randomBytes(32) }), /base must be page-aligned/],
      ['short secret', (sock) => new FaultPlane({ uffd: d.uffd.fd, sock, base: d.mem.base, pageCount: 16, states: d.states, requests: d.requests, secret: randomBytes(16) }), /secret has 16 elements, at least 32 needed/],
      ['short memory', (sock) => new AnswerPlane({ sock, memory: src.memory, pageCount: 5, pending: src.pending.words, claims: src.claims.words, secret: randomBytes(32) }), /memory has 16384 elements/],
      ['a bad role', (sock) => new AnswerPlane({ sock, role: 7 as never, memory: src.memory, pageCount: 4, pending: src.pending.words, claims: src.claims.words, secret: randomBytes(32) }), /role must be an integer/],
      ['no onExit', (sock) => (dataplaneAddon().startAnswer as (o: object) => unknown)({ sock }), /startAnswer\(options, onExit\)/],
      ['onExit not a function', (sock) => dataplaneAddon().startFault({ sock } as never, 1 as never), /option role is required/],
      // Building the options throws before the addon is called: startOwning closes the socket.
      ['options that cannot be built', (sock) => new FaultPlane({ uffd: d.uffd.fd, sock, base: d.mem.base, pageCount: 16, states: d.states, requests: d.requests, secret: randomBytes(32), latencyRing: -1 }), /Invalid array length|Array buffer allocation failed|RangeError/i],
    ];
    await assertRefusedAndClosed(refusals);
  } finally {
    d.release();
  }
});
