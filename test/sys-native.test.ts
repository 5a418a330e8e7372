// Kernel-interface layer: real userfaultfd, pagemap, mmap, eventfd; argument validation in C.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readSync, writeSync, openSync, closeSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import {
  native, SysError, Userfaultfd, UFFD_FEATURE, REGISTER_MODE, IOCTL, EVENT, FILL_EEXIST, EVENT_SLOTS, hasIoctl,
  decodeEvent, Pagemap, PAGE_IS, PM_ENTRY, mapAnonymous, mapMemfd, addressOf, madvise, MADV_DONTNEED, eventfd,
  eventfdSignal, eventfdDrain, poll, POLLIN, close, read, write, FdWatcher, EFD_NONBLOCK, EFD_CLOEXEC, dup,
} from '../src/sys/index.js';
import { GuestMemory } from '../src/memory/guest-memory.js';
import { GuestThread } from './fixtures/memory/guest.js';

const PAGE = 4096;

function expectSysError(fn: () => unknown, syscall: string, code: string, detail?: RegExp): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof SysError, `expected SysError, got ${String(e)}`);
    assert.equal(e.syscall, syscall);
    assert.equal(e.code, code);
    assert.ok(e.message.startsWith(`${syscall}: ${code} (`), e.message);
    if (detail) assert.match(e.message, detail);
    return true;
  });
}

test('UFFDIO_API grants WP_ASYNC/WP_UNPOPULATED and reports the ioctls', () => {
  const u = Userfaultfd.open({ features: UFFD_FEATURE.WP_ASYNC | UFFD_FEATURE.WP_UNPOPULATED | UFFD_FEATURE.THREAD_ID });
  try {
    assert.ok(u.features & UFFD_FEATURE.WP_ASYNC);
    assert.ok(u.features & UFFD_FEATURE.WP_UNPOPULATED);
    for (const bit of [IOCTL.API, IOCTL.REGISTER, IOCTL.UNREGISTER]) assert.ok(hasIoctl(u.ioctls, bit), `ioctl bit ${bit}`);
    assert.ok(!hasIoctl(u.ioctls, IOCTL.COPY), 'COPY is per range, reported by REGISTER');
  } finally {
    u.close();
  }
});

test('COPY, ZEROPAGE and EEXIST on a registered anonymous mapping; events decoded', () => {
  const region = mapAnonymous(8 * PAGE);
  const base = addressOf(region);
  const staging = new Uint8Array(mapAnonymous(2 * PAGE));
  staging.fill(0xab, 0, PAGE);
  staging.fill(0xcd, PAGE, 2 * PAGE);
  const u = Userfaultfd.open();
  try {
    const ioctls = u.register(base, 8 * PAGE, REGISTER_MODE.MISSING);
    assert.ok(hasIoctl(ioctls, IOCTL.COPY) && hasIoctl(ioctls, IOCTL.ZEROPAGE) && hasIoctl(ioctls, IOCTL.WAKE));
    assert.equal(u.readEvents(new Float64Array(4 * EVENT_SLOTS)), 0, 'no events queued');
    assert.equal(u.copy(base, staging, 0, 2 * PAGE), 2 * PAGE, 'two pages at once');
    assert.equal(u.copy(base, staging, 0, PAGE), FILL_EEXIST, 'EEXIST is a result, not an exception');
    assert.equal(u.zeropage(base + 2 * PAGE, PAGE), PAGE);
    assert.equal(u.zeropage(base + 2 * PAGE, PAGE), FILL_EEXIST);
    const all = u.copyAll(base, staging, 0, 2 * PAGE);
    assert.deepEqual(all, { copied: 0, existed: 2 });
    const v = new Uint8Array(region);
    assert.equal(v[0], 0xab);
    assert.equal(v[PAGE + 17], 0xcd);
    assert.equal(v[2 * PAGE + 5], 0);
    u.unregister(base, 8 * PAGE);
  } finally {
    u.close();
  }
});

test('a guest thread faulting on holes: events decoded (address, WRITE flag), resumed by COPY', async () => {
  const mem = GuestMemory.create(1, 4);
  const u = Userfaultfd.open({ nonblock: false });
  const g = new GuestThread(mem.memory, 4);
  try {
    mem.dropPages([[0, 16]]);
    u.register(mem.base, mem.maxBytes, REGISTER_MODE.MISSING);
    const staging = new Uint8Array(mapAnonymous(PAGE));
    new DataView(staging.buffer).setInt32(8, 4242, true);
    const events = new Float64Array(8 * EVENT_SLOTS);
    const loaded = g.run<number>({ op: 'load', addr: 3 * PAGE + 8 });
    const n = u.readEvents(events, true); // blocks this thread only until the guest faults
    assert.equal(n, 1);
    const ev = decodeEvent(events, 0);
    assert.equal(ev.event, EVENT.PAGEFAULT);
    assert.equal(ev.address, mem.base + 3 * PAGE);
    assert.equal(ev.write, false);
    assert.equal(u.copy(ev.address, staging, 0, PAGE), PAGE);
    assert.equal(await loaded, 4242);
    const stored = g.run({ op: 'store', addr: 5 * PAGE, value: 7 });
    assert.equal(u.readEvents(events, true), 1);
    const w = decodeEvent(events, 0);
    assert.equal(w.address, mem.base + 5 * PAGE);
    assert.equal(w.write, true);
    assert.equal(u.zeropage(w.address, PAGE), PAGE);
    await stored;
    assert.equal(await g.run({ op: 'load', addr: 5 * PAGE }), 7);
  } finally {
    await g.terminate();
    u.close();
  }
});

test('FdWatcher calls back on the event loop when the uffd is readable', async () => {
  const mem = GuestMemory.create(1, 1);
  const u = Userfaultfd.open({ nonblock: true });
  const g = new GuestThread(mem.memory, 1);
  const staging = new Uint8Array(mapAnonymous(PAGE));
  new DataView(staging.buffer).setInt32(0, 99, true);
  const events = new Float64Array(16 * EVENT_SLOTS);
  let callbacks = 0;
  try {
    mem.dropPages([[0, 16]]);
    u.register(mem.base, mem.maxBytes, REGISTER_MODE.MISSING);
    const watcher = new FdWatcher(u.fd, POLLIN, (status, revents) => {
      callbacks++;
      assert.equal(status, 0);
      assert.ok(revents & POLLIN);
      const n = u.readEvents(events, false);
      for (let i = 0; i < n; i++) u.copy(Math.floor(decodeEvent(events, i).address / PAGE) * PAGE, staging, 0, PAGE);
    });
    assert.equal(await g.run({ op: 'touch', addr: 0, pages: 16 }), 99 * 16);
    watcher.stop();
    watcher.stop();
    assert.ok(callbacks >= 1);
  } finally {
    await g.terminate();
    u.close();
  }
});

test('a worker terminated while it calls into the addon ends cleanly, never a crash', () => {
  // 100 workers, each stopped at a random moment of a tight fdWatch/fdUnwatch loop, in a child
  // process so that a crash is a signal here. Before the addon returned NULL for a value the runtime
  // refused to create, this died of SIGSEGV within 60 rounds every time.
  const script = fileURLToPath(new URL('./fixtures/sys/watch-churn.js', import.meta.url));
  const r = spawnSync(process.execPath, [script, '100'], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.signal, null, `the child died of ${r.signal}:\n${r.stderr}`);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /terminated 100 workers mid-loop/);
});

test('bad arguments: clear errors naming the operation and errno, never a crash', () => {
  const region = mapAnonymous(4 * PAGE);
  const base = addressOf(region);
  // A closed fd: a number no file is open on (a just-closed fd could be reused by another thread at once,
  // and a read on someone's pipe would block).
  const fd = 65000;
  const closed = Userfaultfd.attach(fd);
  const staging = new Uint8Array(PAGE);
  expectSysError(() => closed.copy(base, staging, 0, PAGE), 'UFFDIO_COPY', 'EBADF');
  expectSysError(() => closed.register(base, PAGE, REGISTER_MODE.MISSING), 'UFFDIO_REGISTER', 'EBADF');
  expectSysError(() => closed.readEvents(new Float64Array(4)), 'uffd read', 'EBADF');
  expectSysError(() => poll([fd], [POLLIN], 0), 'poll', 'EBADF', /not open/);
  expectSysError(() => close(fd), 'close', 'EBADF');
  const open = Userfaultfd.open();
  try {
    expectSysError(() => open.copy(base, staging, PAGE, PAGE), 'UFFDIO_COPY', 'ERANGE', /outside the buffer of 4096 bytes/);
    expectSysError(() => open.copy(base + 1, staging, 0, PAGE), 'UFFDIO_COPY', 'EINVAL', /dst .* not a multiple of 4096/);
    expectSysError(() => open.copy(base, staging, 0, 100), 'UFFDIO_COPY', 'EINVAL', /length/);
    expectSysError(() => open.register(base, 0, REGISTER_MODE.MISSING), 'UFFDIO_REGISTER', 'EINVAL', /length must be > 0/);
    expectSysError(() => open.register(base, PAGE, 64), 'UFFDIO_REGISTER', 'EINVAL', /mode/);
    expectSysError(() => open.readEvents(new Float64Array(2)), 'uffd read', 'EINVAL', /at least one event/);
    // wrong types straight into the addon
    expectSysError(() => SysErrorOf(() => native.uffdCopy(open.fd, 'x' as unknown as number, staging, 0, PAGE, 0)), 'UFFDIO_COPY', 'EINVAL', /dst must be a number/);
    expectSysError(() => SysErrorOf(() => native.uffdCopy(open.fd, base, {} as Uint8Array, 0, PAGE, 0)), 'UFFDIO_COPY', 'EINVAL', /src must be a TypedArray/);
    expectSysError(() => SysErrorOf(() => native.uffdCopy(open.fd, -4096, staging, 0, PAGE, 0)), 'UFFDIO_COPY', 'EINVAL', /non-negative integer/);
    expectSysError(() => SysErrorOf(() => (native.poll as unknown as () => number)()), 'poll', 'EINVAL', /expected 4 arguments/);
    expectSysError(() => SysErrorOf(() => native.pagemapScan(0, 0, PAGE, new Int32Array(3) as unknown as Float64Array, 0, 0, 0, 0, 1, 0)), 'PAGEMAP_SCAN', 'EINVAL', /Float64Array/);
  } finally {
    open.close();
  }
  expectSysError(() => madvise(region, PAGE, 4 * PAGE, MADV_DONTNEED), 'madvise', 'ERANGE', /outside the buffer/);
  expectSysError(() => madvise(region, 1, PAGE, MADV_DONTNEED), 'madvise', 'EINVAL', /not a multiple of 4096/);
  expectSysError(() => madvise(region, 0, PAGE, 12345), 'madvise', 'EINVAL', /advice/);
  expectSysError(() => addressOf(42 as unknown as Uint8Array), 'bufferAddress', 'EINVAL', /TypedArray/);
  expectSysError(() => mapAnonymous(100), 'mmap', 'EINVAL', /multiple of 4096/);
  expectSysError(() => read(-1, staging, 0, 1), 'read', 'EBADF');
  expectSysError(() => write(1, staging, 4000, 200), 'write', 'ERANGE');
  expectSysError(() => new FdWatcher(fd, POLLIN, () => {}), 'fdWatch', 'EBADF');
});

// Raw native errors carry the same fields; re-throw them through the SysError wrapper for the checks.
import { sys } from '../src/sys/errors.js';
function SysErrorOf(fn: () => unknown): unknown {
  return sys(fn);
}

test('eventfd, poll, read and write', () => {
  const efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  try {
    assert.deepEqual(poll([efd], [POLLIN], 0), [0]);
    eventfdSignal(efd, 3);
    assert.equal(poll([efd], [POLLIN], 0)[0]! & POLLIN, POLLIN);
    assert.equal(eventfdDrain(efd), 3);
    assert.equal(eventfdDrain(efd), 0);
    expectSysError(() => read(efd, new Uint8Array(8), 0, 8), 'read', 'EAGAIN');
  } finally {
    close(efd);
  }
});

test('dup: a second descriptor of the same eventfd outlives closing the first', () => {
  const efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  const copy = dup(efd);
  assert.notEqual(copy, efd);
  eventfdSignal(efd, 2);
  close(efd);
  try {
    assert.equal(eventfdDrain(copy), 2, 'the count signalled through the first is read through the copy');
  } finally {
    close(copy);
  }
});

test('PAGEMAP_SCAN: present pages exactly once even when the output vector fills; raw entries', () => {
  const n = 64;
  const region = mapAnonymous(n * PAGE);
  const base = addressOf(region);
  const v = new Uint8Array(region);
  const touched = [1, 3, 5, 9, 10, 11, 40, 63];
  for (const p of touched) v[p * PAGE] = 1;
  const small = new Pagemap(2); // 2 regions per ioctl: forces restarts from walk_end
  try {
    const seen: number[] = [];
    const pages = small.scan(base, base + n * PAGE, { categoryMask: PAGE_IS.PRESENT, returnMask: PAGE_IS.PRESENT }, (s, e) => {
      for (let a = s; a < e; a += PAGE) seen.push((a - base) / PAGE);
    });
    assert.deepEqual(seen, touched);
    assert.equal(pages, touched.length);
    const entries = new BigUint64Array(4);
    assert.equal(small.read(base + 2 * PAGE, entries), 4);
    assert.equal(entries[0]! & PM_ENTRY.PRESENT, 0n); // page 2: untouched
    assert.equal(entries[1]! & PM_ENTRY.PRESENT, PM_ENTRY.PRESENT); // page 3
    madvise(region, 3 * PAGE, PAGE, MADV_DONTNEED);
    small.read(base + 3 * PAGE, entries);
    assert.equal(entries[0]! & PM_ENTRY.PRESENT, 0n, 'DONTNEED made a hole');
  } finally {
    small.close();
  }
});

test('memfd staging buffer: writes through the mapping are visible through the fd', () => {
  const { fd, buffer } = mapMemfd('ferry-test', 2 * PAGE);
  try {
    const v = new Uint8Array(buffer);
    v.set([1, 2, 3, 4], PAGE);
    const back = Buffer.alloc(4);
    assert.equal(readSync(fd, back, 0, 4, PAGE), 4);
    assert.deepEqual([...back], [1, 2, 3, 4]);
  } finally {
    closeSync(fd);
  }
});

test('pread into a staging buffer', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-sys-'));
  try {
    const path = join(dir, 'f');
    const f = openSync(path, 'w');
    writeSync(f, Buffer.from('hello world'));
    closeSync(f);
    const r = openSync(path, 'r');
    const { pread } = await import('../src/sys/fd.js');
    const buf = new Uint8Array(mapAnonymous(PAGE));
    assert.equal(pread(r, buf, 10, 5, 6), 5);
    assert.equal(Buffer.from(buf.subarray(10, 15)).toString(), 'world');
    closeSync(r);
  } finally {
    rmSync(dir, { recursive: true });
  }
});

import net from 'node:net';
import { tcpPathInfo } from '../src/sys/socket.js';
import { MAX_POSTCOPY_BUFFER, MIN_POSTCOPY_BUFFER, clampPostcopyBuffer, postcopyBufferBytes } from '../src/migration/session/bulk-buffers.js';

test('tcpPathInfo reads TCP_INFO of a real loopback connection: the receiver\'s round-trip estimate once data arrived; null once closed', async () => {
  const server = net.createServer();
  const received = new Promise<net.Socket>((r) => server.once('connection', (s) => r(s.resume())));
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const c = net.connect((server.address() as net.AddressInfo).port, '127.0.0.1');
  await new Promise<void>((r) => c.once('connect', r));
  const receiver = await received;
  for (let i = 0; i < 50; i++) await new Promise<void>((r) => c.write(Buffer.alloc(64 * 1024), () => r()));
  await new Promise((r) => setTimeout(r, 20));
  const got = tcpPathInfo(receiver);
  assert.ok(got, 'a connected socket has TCP_INFO');
  assert.ok(got.rcvRttUs > 0 && got.rcvRttUs < 1_000_000, `the receiver estimated ${got.rcvRttUs} us`);
  assert.equal(tcpPathInfo(c)?.rcvRttUs, 0, 'the sender received nothing: it has no receiver estimate');
  c.destroy();
  receiver.destroy();
  assert.equal(tcpPathInfo(c), null);
  server.close();
});

test('postcopy bulk buffers: a few bandwidth-delay products, in whole pages, within bounds', () => {
  assert.equal(postcopyBufferBytes(0, 0), MIN_POSTCOPY_BUFFER, 'nothing measured: the floor');
  assert.equal(postcopyBufferBytes(1e9, 30), MIN_POSTCOPY_BUFFER, 'loopback: tens of µs');
  const link = postcopyBufferBytes(120e6, 2000); // 1 Gbit/s, 2 ms of queue
  assert.ok(link >= 4 * 240_000 && link % 4096 === 0, `${link}`);
  assert.equal(postcopyBufferBytes(1e9, 1e6), MAX_POSTCOPY_BUFFER);
  assert.equal(postcopyBufferBytes(NaN, 5), MIN_POSTCOPY_BUFFER);
  assert.equal(clampPostcopyBuffer(0xffffffff), MAX_POSTCOPY_BUFFER, 'a peer\'s size is bounded too');
  assert.equal(clampPostcopyBuffer(5000), MIN_POSTCOPY_BUFFER);
});

import { readFileSync } from 'node:fs';
import { DowntimePriority } from '../src/sys/sched.js';

/** Scheduling policy (0 other, 1 FIFO) and nice value of the calling thread, from /proc. */
function threadScheduling(): { policy: number; nice: number } {
  const stat = readFileSync('/proc/thread-self/stat', 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' '); // fields 3.. of proc(5)
  return { policy: Number(fields[41 - 3]), nice: Number(fields[19 - 3]) };
}

test('DowntimePriority: raise() raises this thread once (real-time here), end() puts it back at its policy and nice value', () => {
  const before = threadScheduling();
  assert.equal(before.policy, 0, 'the test starts at normal scheduling');
  const p = new DowntimePriority();
  try {
    const got = p.raise();
    if (process.env['FERRY_REALTIME'] === '0') {
      assert.equal(got, 'normal', 'FERRY_REALTIME=0 leaves the thread alone');
      assert.deepEqual(threadScheduling(), before);
      return;
    }
    // Real-time where the host allows it (root here), else nice -10; the kernel's view must agree.
    assert.notEqual(got, 'normal', 'raised one way or the other');
    const raised = threadScheduling();
    if (got === 'fifo') assert.equal(raised.policy, 1, 'SCHED_FIFO while raised');
    else assert.deepEqual(raised, { policy: 0, nice: -10 });
    assert.equal(p.raise(), 'normal', 'a second raise (another PING) changes nothing');
    assert.deepEqual(threadScheduling(), raised);
  } finally {
    p.end();
  }
  assert.deepEqual(threadScheduling(), before);
  p.end(); // ending again is harmless
  assert.deepEqual(threadScheduling(), before);
});
