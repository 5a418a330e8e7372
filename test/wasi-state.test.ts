// src/wasi driven by direct host calls on a shared memory (as the guest worker uses): blocking calls and
// the pause hook, capture/restore of clocks and descriptors, movability, validation of saved state.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Wasi, type WasiHooks } from '../src/wasi/wasi.js';
import { validateWasiState } from '../src/wasi/persist.js';
import { ERRNO } from '../src/wasi/errno.js';
import { RIGHTS, OFLAGS } from '../src/wasi/constants.js';

type Fn = (...args: (number | bigint)[]) => number;

/** A shared guest memory with a bump allocator for call arguments. */
class Scratch {
  readonly memory = new WebAssembly.Memory({ initial: 2, maximum: 16, shared: true });
  private next = 1024;
  alloc(n: number): number {
    const p = this.next;
    this.next += (n + 15) & ~15;
    return p;
  }
  str(s: string): [number, number] {
    const b = Buffer.from(s);
    const p = this.alloc(b.length);
    new Uint8Array(this.memory.buffer, p, b.length).set(b);
    return [p, b.length];
  }
  iovec(buf: number, len: number): number {
    const p = this.alloc(8);
    const v = new DataView(this.memory.buffer);
    v.setUint32(p, buf, true);
    v.setUint32(p + 4, len, true);
    return p;
  }
  u32(p: number): number { return new DataView(this.memory.buffer).getUint32(p, true); }
  u64(p: number): bigint { return new DataView(this.memory.buffer).getBigUint64(p, true); }
  text(p: number, n: number): string { return Buffer.from(new Uint8Array(this.memory.buffer, p, n).slice()).toString(); }
}

function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ferry-wasi-${tag}-`));
}

const noPause: WasiHooks = { pauseRequested: () => false, unwind: () => { throw new Error('unexpected unwind'); } };
const RW = RIGHTS.FD_READ | RIGHTS.FD_WRITE | RIGHTS.FD_SEEK | RIGHTS.FD_TELL | RIGHTS.FD_FILESTAT_GET;

function setup(preopenHost: string | null, hooks: WasiHooks = noPause, stdio = { stdin: 0, stdout: 1, stderr: 2 }) {
  const s = new Scratch();
  const wasi = new Wasi({ args: ['t'], env: {}, preopens: preopenHost ? [{ guestPath: '/data', hostPath: preopenHost }] : [], stdio }, hooks);
  wasi.setMemory(s.memory);
  const call = (name: string, ...args: (number | bigint)[]): number => (wasi.imports[name] as Fn)(...args);
  return { s, wasi, call };
}

function openFile(call: (n: string, ...a: (number | bigint)[]) => number, s: Scratch, p: string, oflags: number = OFLAGS.CREAT, rights: bigint = RW): number {
  const [pp, pl] = s.str(p);
  const out = s.alloc(4);
  const rc = call('path_open', 3, 1, pp, pl, oflags, rights, 0n, 0, out);
  if (rc !== 0) throw new Error(`path_open ${p} → errno ${rc}`);
  return s.u32(out);
}

test('fd_write and fd_read work directly on shared guest memory (views handed to the syscall)', () => {
  const dir = tmpDir('shm');
  const { s, wasi, call } = setup(dir);
  const fd = openFile(call, s, 'f.bin');
  const [buf, len] = s.str('shared bytes');
  const n = s.alloc(4);
  assert.equal(call('fd_write', fd, s.iovec(buf, len), 1, n), 0);
  assert.equal(s.u32(n), len);
  assert.equal(fs.readFileSync(path.join(dir, 'f.bin'), 'utf8'), 'shared bytes');
  const back = s.alloc(32);
  const off = s.alloc(8);
  assert.equal(call('fd_seek', fd, 7n, 0, off), 0);
  assert.equal(call('fd_read', fd, s.iovec(back, 32), 1, n), 0);
  assert.equal(s.text(back, s.u32(n)), 'bytes');
  const rnd = s.alloc(64);
  assert.equal(call('random_get', rnd, 64), 0);
  assert.ok(new Uint8Array(s.memory.buffer, rnd, 64).some((b) => b !== 0));
  assert.equal(call('fd_write', fd, s.iovec(s.memory.buffer.byteLength - 4, 16), 1, n), ERRNO.FAULT, 'out-of-bounds iovec is EFAULT');
  assert.equal(call('fd_read', 99, s.iovec(back, 1), 1, n), ERRNO.BADF);
  wasi.close();
});

test('path_open refuses absolute paths and .. above the preopen', () => {
  const { s, wasi, call } = setup(tmpDir('esc'));
  const out = s.alloc(4);
  for (const p of ['../x', 'a/../../x', '/etc/passwd']) {
    const [pp, pl] = s.str(p);
    assert.equal(call('path_open', 3, 1, pp, pl, 0, RW, 0n, 0, out), ERRNO.NOTCAPABLE, p);
  }
  const [pp, pl] = s.str('nope/x');
  assert.equal(call('path_open', 3, 1, pp, pl, 0, RW, 0n, 0, out), ERRNO.NOENT);
  wasi.close();
});

test('a blocking fd_read on an empty pipe unwinds on pause without consuming data, then reads on re-entry', () => {
  const dir = tmpDir('fifo');
  const fifo = path.join(dir, 'in.fifo');
  execFileSync('mkfifo', [fifo]);
  const readEnd = fs.openSync(fifo, 'r+'); // O_RDWR: does not block waiting for a writer (Linux)
  let dataReady = false;
  let pause = true;
  let unwinds = 0;
  const hooks: WasiHooks = {
    pauseRequested: () => pause,
    unwind: () => { unwinds++; },
    waitReadable: () => dataReady, // the real runtime polls; here readiness is what the test wrote
  };
  const { s, wasi, call } = setup(null, hooks, { stdin: readEnd, stdout: 1, stderr: 2 });
  const buf = s.alloc(16);
  const iov = s.iovec(buf, 16);
  const nread = s.alloc(4);
  new DataView(s.memory.buffer).setUint32(nread, 0xdeadbeef, true);
  assert.equal(call('fd_read', 0, iov, 1, nread), 0);
  assert.equal(unwinds, 1);
  assert.equal(s.u32(nread), 0xdeadbeef, 'no result written on unwind');

  const writeEnd = fs.openSync(fifo, 'w');
  fs.writeSync(writeEnd, 'xyz');
  dataReady = true;
  pause = false;
  assert.equal(call('fd_read', 0, iov, 1, nread), 0, 're-entry with the same arguments');
  assert.equal(s.u32(nread), 3);
  assert.equal(s.text(buf, 3), 'xyz');
  assert.equal(unwinds, 1);
  fs.closeSync(writeEnd);
  fs.closeSync(readEnd);
  wasi.close();
});

test('poll_oneoff interrupted by a pause keeps its deadline across capture/restore', () => {
  let pause = true;
  let unwinds = 0;
  const hooks: WasiHooks = { pauseRequested: () => pause, unwind: () => { unwinds++; } };
  const { s, wasi, call } = setup(null, hooks);
  const sub = s.alloc(48);
  const v = new DataView(s.memory.buffer);
  v.setBigUint64(sub, 42n, true);
  v.setUint8(sub + 8, 0);                          // clock
  v.setUint32(sub + 16, 1, true);                  // monotonic
  v.setBigUint64(sub + 24, 40_000_000n, true);     // 40 ms, relative
  const ev = s.alloc(32);
  const nev = s.alloc(4);
  const t = s.alloc(8);
  call('clock_time_get', 1, 0n, t);
  const start = s.u64(t);
  assert.equal(call('poll_oneoff', sub, ev, 1, nev), 0);
  assert.equal(unwinds, 1);
  const state = JSON.parse(JSON.stringify(wasi.capture()));
  assert.ok(state.pendingPoll !== null);
  assert.ok(BigInt(state.pendingPoll.deadlineNs) >= start + 40_000_000n);
  wasi.close();

  pause = false;
  const restored = Wasi.restore(state, { preopens: [], stdio: { stdin: 0, stdout: 1, stderr: 2 } }, hooks);
  restored.setMemory(s.memory);
  assert.equal((restored.imports.poll_oneoff as Fn)(sub, ev, 1, nev), 0);
  assert.equal(s.u32(nev), 1);
  assert.equal(s.u64(ev), 42n);
  (restored.imports.clock_time_get as Fn)(1, 0n, t);
  assert.ok(s.u64(t) >= BigInt(state.pendingPoll.deadlineNs), 'woke no earlier than the original deadline');
  assert.equal(restored.capture().pendingPoll, null);
  restored.close();
});

test('the monotonic clock never goes backwards across capture/restore, even from a host far ahead', () => {
  const { s, wasi, call } = setup(null);
  const t = s.alloc(8);
  call('clock_time_get', 1, 0n, t);
  const before = s.u64(t);
  const state = wasi.capture();
  assert.ok(BigInt(state.clocks.monotonicNs) >= before);
  const r1 = Wasi.restore(state, { preopens: [], stdio: { stdin: 0, stdout: 1, stderr: 2 } }, noPause);
  r1.setMemory(s.memory);
  (r1.imports.clock_time_get as Fn)(1, 0n, t);
  assert.ok(s.u64(t) >= BigInt(state.clocks.monotonicNs));
  // A source host whose monotonic clock is far ahead of ours (it booted long ago).
  const ahead = { ...state, clocks: { monotonicNs: (before + 10n ** 15n).toString(), cputimeNs: state.clocks.cputimeNs } };
  const r2 = Wasi.restore(ahead, { preopens: [], stdio: { stdin: 0, stdout: 1, stderr: 2 } }, noPause);
  r2.setMemory(s.memory);
  (r2.imports.clock_time_get as Fn)(1, 0n, t);
  const first = s.u64(t);
  assert.ok(first >= before + 10n ** 15n);
  (r2.imports.clock_time_get as Fn)(1, 0n, t);
  assert.ok(s.u64(t) >= first);
  for (const w of [wasi, r1, r2]) w.close();
});

test('restore reopens without creating or truncating, tracks renames, and needs its preopens', () => {
  const dir = tmpDir('reopen');
  const { s, wasi, call } = setup(dir);
  const fd = openFile(call, s, 'a.txt', OFLAGS.CREAT | OFLAGS.TRUNC);
  const [buf, len] = s.str('0123456789');
  const n = s.alloc(4);
  call('fd_write', fd, s.iovec(buf, len), 1, n);
  const [op, ol] = s.str('a.txt');
  const [np, nl] = s.str('b.txt');
  assert.equal(call('path_rename', 3, op, ol, 3, np, nl), 0);
  const state = wasi.capture();
  const f = state.fds.find((x) => x.fd === fd)!;
  assert.deepEqual([f.kind, f.preopen, f.path, f.offset], ['file', '/data', 'b.txt', 10]);
  wasi.close();

  const binding = { preopens: [{ guestPath: '/data', hostPath: dir }], stdio: { stdin: 0, stdout: 1, stderr: 2 } };
  assert.throws(() => Wasi.restore(state, { ...binding, preopens: [] }, noPause), /needs preopen \/data/);
  const r = Wasi.restore(state, binding, noPause);
  r.setMemory(s.memory);
  const [xb, xl] = s.str('AB');
  assert.equal((r.imports.fd_write as Fn)(fd, s.iovec(xb, xl), 1, n), 0);
  assert.equal(fs.readFileSync(path.join(dir, 'b.txt'), 'utf8'), '0123456789AB', 'appended at the captured offset, not truncated');
  r.close();

  fs.unlinkSync(path.join(dir, 'b.txt'));
  assert.throws(() => Wasi.restore(state, binding, noPause), /cannot restore WASI fd \d+: reopening \/data\/b\.txt/);
  assert.equal(fs.existsSync(path.join(dir, 'b.txt')), false, 'restore never creates');
});

test('movabilityProblems reports FIFOs opened by path and files unlinked while open', () => {
  const dir = tmpDir('move');
  execFileSync('mkfifo', [path.join(dir, 'p')]);
  const { s, wasi, call } = setup(dir);
  assert.deepEqual(wasi.movabilityProblems(), []);
  const fifoFd = openFile(call, s, 'p', 0, RIGHTS.FD_READ | RIGHTS.FD_WRITE);
  const fileFd = openFile(call, s, 'gone.txt');
  const [p, l] = s.str('gone.txt');
  assert.equal(call('path_unlink_file', 3, p, l), 0);
  const problems = wasi.movabilityProblems();
  assert.equal(problems.length, 2);
  assert.match(problems[0]!, new RegExp(`^fd ${fifoFd} .*pipe or FIFO`));
  assert.match(problems[1]!, new RegExp(`^fd ${fileFd} .*unlinked`));
  wasi.close();
});

test('a FIFO opened read-only by the guest neither blocks the open nor an fd_read a pause wants to stop', () => {
  const dir = tmpDir('fifo-ro');
  execFileSync('mkfifo', [path.join(dir, 'p')]);
  let unwinds = 0;
  const { s, wasi, call } = setup(dir, { pauseRequested: () => true, unwind: () => { unwinds++; } }); // no waitReadable hook
  const fd = openFile(call, s, 'p', 0, RIGHTS.FD_READ); // no writer: a blocking open would hang here
  const writer = fs.openSync(path.join(dir, 'p'), 'w');
  const buf = s.alloc(8);
  const n = s.alloc(4);
  assert.equal(call('fd_read', fd, s.iovec(buf, 8), 1, n), 0);
  assert.equal(unwinds, 1, 'empty pipe: the read gave way to the pause');
  fs.closeSync(writer);
  wasi.close();
});

test('fd_readdir continues from a cookie and truncates the last entry to the buffer', () => {
  const dir = tmpDir('readdir');
  for (const name of ['b', 'a', 'c']) fs.writeFileSync(path.join(dir, name), name);
  const { s, wasi, call } = setup(dir);
  const buf = s.alloc(256);
  const used = s.alloc(4);
  const names = (start: bigint, size: number): { names: string[]; used: number } => {
    assert.equal(call('fd_readdir', 3, buf, size, start, used), 0);
    const u = s.u32(used);
    const out: string[] = [];
    const v = new DataView(s.memory.buffer);
    for (let at = 0; at + 24 <= u; ) {
      const nl = v.getUint32(buf + at + 16, true);
      if (at + 24 + nl > u) break;
      out.push(s.text(buf + at + 24, nl));
      at += 24 + nl;
    }
    return { names: out, used: u };
  };
  assert.deepEqual(names(0n, 256).names, ['.', '..', 'a', 'b', 'c']);
  assert.deepEqual(names(3n, 256).names, ['b', 'c']);
  const small = names(0n, 30);
  assert.equal(small.used, 30, 'a full buffer tells libc to grow it');
  assert.deepEqual(small.names, ['.']);
  wasi.close();
});

test('validateWasiState names the bad field', () => {
  const { wasi } = setup(tmpDir('val'));
  const good = JSON.parse(JSON.stringify(wasi.capture()));
  wasi.close();
  assert.deepEqual(validateWasiState(good), good);
  const bad = (mutate: (x: Record<string, unknown>) => void, re: RegExp): void => {
    const x = JSON.parse(JSON.stringify(good));
    mutate(x);
    assert.throws(() => validateWasiState(x), re);
  };
  bad((x) => { x.version = 3; }, /version/);
  bad((x) => { x.args = [1]; }, /args\[0\]/);
  bad((x) => { (x.fds as Record<string, unknown>[])[3]!.path = '../x'; }, /fds\[3\]\.path/);
  bad((x) => { (x.fds as Record<string, unknown>[])[3]!.preopen = '/other'; }, /fds\[3\]\.preopen/);
  bad((x) => { (x.fds as Record<string, unknown>[])[1]!.fd = 0; }, /fds\[1\]\.fd.*repeats/);
  bad((x) => { (x.clocks as Record<string, unknown>).monotonicNs = '-1'; }, /clocks\.monotonicNs/);
  bad((x) => { (x.fds as Record<string, unknown>[])[0]!.kind = 'pipe'; }, /fds\[0\]\.kind/);
  // Sockets (version 2): a listener has its bound address and no peer, a connection its peer.
  const sock = (kind: string, socket: unknown) => (x: Record<string, unknown>) => {
    Object.assign((x.fds as Record<string, unknown>[])[0]!, { kind, socket });
  };
  bad(sock('socket', undefined), /fds\[0\]\.socket must be an object/);
  bad(sock('listener', { family: 4, address: '127.0.0.1', port: 0, peer: null }), /fds\[0\]\.socket\.port/);
  bad(sock('listener', { family: 4, address: '::1', port: 80, peer: null }), /fds\[0\]\.socket\.address/);
  bad(sock('listener', { family: 4, address: '127.0.0.1', port: 80, peer: { address: '127.0.0.1', port: 1 } }), /fds\[0\]\.socket\.peer/);
  bad(sock('socket', { family: 6, address: '::1', port: 80, peer: null }), /fds\[0\]\.socket\.peer/);
  bad((x) => { x.version = 1; sock('listener', { family: 4, address: '127.0.0.1', port: 80, peer: null })(x); }, /needs WASI state version 2/);
  bad((x) => { (x.fds as Record<string, unknown>[])[3]!.socket = { family: 4, address: '127.0.0.1', port: 80, peer: null }; }, /fds\[3\]\.socket must be absent/);
  const listener = JSON.parse(JSON.stringify(good));
  sock('listener', { family: 6, address: '::1', port: 6379, peer: null })(listener);
  assert.equal(validateWasiState(listener).fds[0]!.kind, 'listener');
  const v1 = JSON.parse(JSON.stringify(good));
  v1.version = 1;
  assert.equal(validateWasiState(v1).version, 2, 'a version 1 state (before sockets) still loads');
  assert.throws(() => validateWasiState(null), /\(root\)/);
});

test('symlinks: creation refuses escaping targets; readlink and lstat see the link', () => {
  const dir = tmpDir('links');
  fs.writeFileSync(path.join(dir, 'a.txt'), 'A');
  const { s, wasi, call } = setup(dir);
  const [lp, ll] = s.str('l');
  for (const target of ['../../etc/passwd', '/etc/passwd']) {
    const [tp, tl] = s.str(target);
    assert.equal(call('path_symlink', tp, tl, 3, lp, ll), ERRNO.NOTCAPABLE, target);
  }
  const [tp, tl] = s.str('a.txt');
  assert.equal(call('path_symlink', tp, tl, 3, lp, ll), 0);
  const buf = s.alloc(64);
  const used = s.alloc(4);
  assert.equal(call('path_readlink', 3, lp, ll, buf, 64, used), 0);
  assert.equal(s.text(buf, s.u32(used)), 'a.txt');
  const st = s.alloc(64);
  assert.equal(call('path_filestat_get', 3, 0, lp, ll, st), 0);
  assert.equal(new DataView(s.memory.buffer).getUint8(st + 16), 7, 'lstat: symbolic link');
  assert.equal(call('path_filestat_get', 3, 1, lp, ll, st), 0);
  assert.equal(new DataView(s.memory.buffer).getUint8(st + 16), 4, 'stat: regular file');
  assert.equal(s.u64(st + 32), 1n, 'size of a.txt');
  wasi.close();
});

test('fd_renumber moves a descriptor; proc_exit is recorded in the state', () => {
  const dir = tmpDir('renum');
  fs.writeFileSync(path.join(dir, 'a'), 'AAAA');
  fs.writeFileSync(path.join(dir, 'b'), 'BBBB');
  const { s, wasi, call } = setup(dir);
  const fa = openFile(call, s, 'a', 0);
  const fb = openFile(call, s, 'b', 0);
  assert.equal(call('fd_renumber', fa, fb), 0);
  const buf = s.alloc(8);
  const n = s.alloc(4);
  assert.equal(call('fd_read', fa, s.iovec(buf, 8), 1, n), ERRNO.BADF);
  assert.equal(call('fd_read', fb, s.iovec(buf, 8), 1, n), 0);
  assert.equal(s.text(buf, s.u32(n)), 'AAAA');
  assert.equal(call('fd_renumber', fb, 77), ERRNO.BADF, 'target must be open');
  const st = wasi.capture();
  assert.deepEqual(st.fds.filter((f) => f.kind === 'file').map((f) => [f.fd, f.path, f.offset]), [[fb, 'a', 4]]);
  assert.throws(() => call('proc_exit', 3), (e: unknown) => (e as { code?: number }).code === 3);
  assert.equal(wasi.capture().exitCode, 3);
  wasi.close();
});

test('poll_oneoff on a pipe subscription with a timeout: the timeout fires, then the data', () => {
  const dir = tmpDir('pollfd');
  const fifo = path.join(dir, 'p');
  execFileSync('mkfifo', [fifo]);
  const rd = fs.openSync(fifo, 'r+');
  let ready = false;
  const hooks: WasiHooks = { pauseRequested: () => false, unwind: () => {}, waitReadable: () => ready };
  const { s, wasi, call } = setup(null, hooks, { stdin: rd, stdout: 1, stderr: 2 });
  const subs = s.alloc(96);
  const v = new DataView(s.memory.buffer);
  v.setBigUint64(subs, 1n, true); v.setUint8(subs + 8, 1); v.setUint32(subs + 16, 0, true);           // fd_read on stdin
  v.setBigUint64(subs + 48, 2n, true); v.setUint8(subs + 56, 0); v.setUint32(subs + 64, 1, true);    // clock
  v.setBigUint64(subs + 72, 5_000_000n, true);                                                        // 5 ms
  const ev = s.alloc(64);
  const nev = s.alloc(4);
  assert.equal(call('poll_oneoff', subs, ev, 2, nev), 0);
  assert.equal(s.u32(nev), 1);
  assert.equal(s.u64(ev), 2n, 'the clock fired');
  ready = true;
  assert.equal(call('poll_oneoff', subs, ev, 2, nev), 0);
  assert.equal(s.u32(nev), 1);
  assert.equal(s.u64(ev), 1n, 'the pipe is readable');
  assert.equal(new DataView(s.memory.buffer).getUint8(ev + 10), 1, 'type fd_read');
  fs.closeSync(rd);
  wasi.close();
});

test('bad options fail clearly', () => {
  assert.throws(() => new Wasi({ args: [1 as unknown as string], env: {}, preopens: [], stdio: { stdin: 0, stdout: 1, stderr: 2 } }, noPause), /args/);
  assert.throws(() => new Wasi({ args: [], env: {}, preopens: [{ guestPath: '/d', hostPath: '/nonexistent-ferry' }], stdio: { stdin: 0, stdout: 1, stderr: 2 } }, noPause), /preopen \/d/);
  assert.throws(() => new Wasi({ args: [], env: {}, preopens: [], stdio: { stdin: -1, stdout: 1, stderr: 2 } }, noPause), /stdio\.stdin/);
  assert.throws(() => new Wasi({ args: [], env: {}, preopens: [], stdio: { stdin: 0, stdout: 987654, stderr: 2 } }, noPause), /stdio\.stdout: host fd 987654/);
  const { wasi } = setup(null);
  assert.throws(() => (new Wasi({ args: [], env: {}, preopens: [], stdio: { stdin: 0, stdout: 1, stderr: 2 } }, noPause).imports.fd_write as Fn)(1, 0, 0, 0), /before setMemory/);
  wasi.close();
});
