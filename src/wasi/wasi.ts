// WASI preview1 for Ferry guests, with state that can be captured and restored on another host.
// Runs on the guest's thread, synchronously: host functions are Wasm imports. Guest memory is only ever
// touched through fresh views handed straight to syscalls, so a userfaultfd hole is faulted in by the
// kernel on the guest's thread (never copied through JavaScript first).
import * as fs from 'node:fs';
import * as nodePath from 'node:path';
import { randomFillSync } from 'node:crypto';
import {
  EVENTTYPE, FDFLAGS, FDFLAGS_ALL, FILETYPE, FSTFLAGS, LOOKUP_SYMLINK_FOLLOW, OFLAGS, PREOPENTYPE_DIR, RIGHTS,
  RIGHTS_ALL, RIGHTS_DIR_ONLY, RIGHTS_SEEKING, SIZE_DIRENT, SIZE_EVENT, SIZE_FILESTAT, SIZE_SUBSCRIPTION,
  SUBCLOCKFLAGS_ABSTIME, WHENCE, CLOCK, RIFLAGS_PEEK, RIFLAGS_WAITALL, SDFLAGS_RD, SDFLAGS_WR, EVENTRWFLAGS_HANGUP,
} from './constants.js';
import { ERRNO, WasiErrno, errnoOf } from './errno.js';
import { GuestClocks } from './clocks.js';
import { closeHost, FdTable, filetypeOf, isStream, type Descriptor, type DirEntry } from './fd-table.js';
import { encodeUtf8, GuestMemoryViews } from './memory-views.js';
import { joinGuestPath, makePreopenRoot, resolveHostPath, type PreopenRoot } from './paths.js';
import { validateWasiState } from './persist.js';
import { WASI_STATE_VERSION, type FdKind, type FdState, type SocketState, type WasiState } from './state.js';
import { close as closeFd, eventfdDrain, poll, POLLERR, POLLHUP, POLLIN, POLLOUT } from '../sys/fd.js';
import { accept, MSG_PEEK, recvmsg, sendmsg, SHUT_RD, SHUT_RDWR, SHUT_WR, shutdown, sockAddress, tcpListen } from '../sys/socket.js';

export type { WasiState, FdState, FdKind, SocketState } from './state.js';

export interface Preopen { guestPath: string; hostPath: string }
/** Host fds the guest's stdin/stdout/stderr are bound to (default 0, 1, 2). */
export interface StdioBinding { stdin: number; stdout: number; stderr: number }
/** A listening TCP socket the embedder opened for the guest (`ferry run --listen`); the Wasi owns it from then on. */
export interface ListenSocket { hostFd: number; family: 4 | 6; address: string; port: number }
export interface WasiOptions {
  args: string[];
  env: Record<string, string>;
  preopens: Preopen[];
  stdio: StdioBinding;
  /** Listening sockets, preopened after the directories (guest fds in this order), like `wasmtime --tcplisten`. */
  listen?: ListenSocket[];
}
export interface WasiHooks {
  /** Polled between wait slices by calls that may block; true = the guest must pause now. */
  pauseRequested(): boolean;
  /** Called before such a call returns early for a pause; the runtime re-enters it with the same arguments. */
  unwind(): void;
  /** Waits until `fd` is readable or `timeoutMs` passes; true if readable. Absent: everything is readable. */
  waitReadable?(fd: number, timeoutMs: number): boolean;
  /** Sleeps up to `ms`, returning at once when a pause is requested. Absent: a plain sleep. */
  sleep?(ms: number): void;
  /**
   * An eventfd the owner signals when it requests a pause. Calls that wait on sockets poll it beside
   * their fds, so a pause interrupts them at once. Absent: they wait in slices of WAIT_SLICE_MS.
   */
  wakeFd?: number;
}

type SocketDescriptor = Descriptor & { socket: NonNullable<Descriptor['socket']> };

/** Thrown by proc_exit; carries the guest's exit status. */
export class WasiExit extends Error {
  constructor(readonly code: number) {
    super(`guest exited with code ${code}`);
    this.name = 'WasiExit';
  }
}

/** Longest single wait inside a blocking call before we look at pauseRequested() again. */
const WAIT_SLICE_MS = 10;
/** With a wake fd a pause ends the wait at once; this only bounds each wait as a safety net. */
const WAKE_WAIT_MS = 1000;
const DEFAULT_STDIO: StdioBinding = { stdin: 0, stdout: 1, stderr: 2 };

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type HostFunction = (...args: any[]) => number | bigint | void;

function validateOptions(options: WasiOptions): void {
  if (typeof options !== 'object' || options === null) throw new Error('WASI options must be an object');
  if (!Array.isArray(options.args) || options.args.some((a) => typeof a !== 'string')) throw new Error('WASI options.args must be an array of strings');
  if (typeof options.env !== 'object' || options.env === null) throw new Error('WASI options.env must be an object of strings');
  for (const [k, v] of Object.entries(options.env)) {
    if (typeof v !== 'string') throw new Error(`WASI options.env.${k} must be a string`);
    if (k.includes('=') || k.includes('\0') || v.includes('\0')) throw new Error(`WASI options.env.${k}: names may not contain '=' or NUL, values not NUL`);
  }
  if (!Array.isArray(options.preopens)) throw new Error('WASI options.preopens must be an array');
  const seen = new Set<string>();
  for (const p of options.preopens) {
    if (typeof p?.guestPath !== 'string' || seen.has(p.guestPath)) throw new Error(`WASI preopen guestPath ${JSON.stringify(p?.guestPath)} is missing or repeated`);
    seen.add(p.guestPath);
  }
  for (const l of options.listen ?? []) {
    if (!Number.isInteger(l?.hostFd) || l.hostFd < 0 || (l.family !== 4 && l.family !== 6) || typeof l.address !== 'string' || !Number.isInteger(l.port)) {
      throw new Error('WASI options.listen entries need a host fd, a family (4 or 6), an address and a port');
    }
  }
  const stdio = options.stdio ?? DEFAULT_STDIO;
  for (const k of ['stdin', 'stdout', 'stderr'] as const) {
    if (!Number.isInteger(stdio[k]) || stdio[k] < 0) throw new Error(`WASI options.stdio.${k} must be a host fd (a non-negative integer)`);
  }
}

function stdioDescriptor(kind: FdKind, hostFd: number): Descriptor {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(hostFd);
  } catch (err) {
    throw new Error(`WASI stdio.${kind}: host fd ${hostFd} is not usable: ${(err as Error).message}`);
  }
  const stream = isStream(st);
  let rights = RIGHTS_ALL & ~RIGHTS_DIR_ONLY;
  if (stream) rights &= ~RIGHTS_SEEKING; // what wasi-libc's isatty() looks for
  return {
    kind, hostFd, ownsHostFd: false, root: null, path: '', offset: 0, fdflags: 0, oflags: 0,
    rightsBase: rights, rightsInheriting: 0n, filetype: filetypeOf(st),
    read: kind === 'stdin', write: kind !== 'stdin', detached: false, stream,
  };
}

interface HostOpen { read: boolean; write: boolean; directory: boolean; creat: boolean; excl: boolean; trunc: boolean; follow: boolean; fdflags: number }

function openHostFd(host: string, o: HostOpen): number {
  const C = fs.constants;
  let flags = o.directory ? C.O_RDONLY | C.O_DIRECTORY : o.read && o.write ? C.O_RDWR : o.write ? C.O_WRONLY : C.O_RDONLY;
  if (o.creat) flags |= C.O_CREAT;
  if (o.excl) flags |= C.O_EXCL;
  if (o.trunc) flags |= C.O_TRUNC;
  if (!o.follow) flags |= C.O_NOFOLLOW;
  // O_APPEND is emulated (we write at the current size with positional I/O): Linux pwrite ignores the
  // position on O_APPEND fds, which would break the offset we own.
  // O_NONBLOCK: no effect on files and directories, but opening a FIFO never blocks the guest's thread
  // (where no pause could reach it), and stream reads/writes come back with EAGAIN, which fd_read and
  // fd_write turn into pausable waits.
  flags |= C.O_NONBLOCK;
  if (o.fdflags & FDFLAGS.DSYNC) flags |= C.O_DSYNC;
  if (o.fdflags & (FDFLAGS.SYNC | FDFLAGS.RSYNC)) flags |= C.O_SYNC;
  return fs.openSync(host, flags, 0o666);
}

/** Rights of a TCP socket: stream I/O, flags, fstat, poll, shutdown; accept on a listener. */
const RIGHTS_SOCKET = RIGHTS.FD_READ | RIGHTS.FD_WRITE | RIGHTS.FD_FDSTAT_SET_FLAGS | RIGHTS.FD_FILESTAT_GET |
  RIGHTS.POLL_FD_READWRITE | RIGHTS.SOCK_SHUTDOWN;

function socketDescriptor(kind: 'listener' | 'socket', hostFd: number, sock: SocketState, fdflags: number): Descriptor {
  const rights = kind === 'listener' ? RIGHTS_SOCKET | RIGHTS.SOCK_ACCEPT : RIGHTS_SOCKET;
  return {
    kind, hostFd, ownsHostFd: hostFd >= 0, root: null, path: '', offset: 0, fdflags: fdflags & FDFLAGS_ALL, oflags: 0,
    rightsBase: rights, rightsInheriting: kind === 'listener' ? RIGHTS_SOCKET : 0n, filetype: FILETYPE.SOCKET_STREAM,
    read: true, write: true, detached: false, stream: true,
    socket: { ...sock, peer: sock.peer === null ? null : { ...sock.peer }, reset: hostFd >= 0 ? 'no' : 'pending' },
  };
}

export function formatSocketAddress(family: 4 | 6, address: string, port: number): string {
  return family === 6 ? `[${address}]:${port}` : `${address}:${port}`;
}

/** `views` without their first `skip` bytes (what is left of a partly done scatter/gather). */
function skipBytes(views: Uint8Array[], skip: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const v of views) {
    if (skip >= v.length) {
      skip -= v.length;
      continue;
    }
    out.push(skip > 0 ? v.subarray(skip) : v);
    skip = 0;
  }
  return out;
}

function isAgain(err: unknown): boolean {
  return typeof err === 'object' && err !== null && 'code' in err && (err.code === 'EAGAIN' || err.code === 'EWOULDBLOCK');
}

export class Wasi {
  readonly imports: Record<string, HostFunction>;
  private mem: GuestMemoryViews | null = null;
  private args: string[];
  private env: Record<string, string>;
  private stdio: StdioBinding;
  private readonly hooks: WasiHooks;
  /** Preopens by guest path; the order is the one the guest saw. */
  private roots = new Map<string, PreopenRoot>();
  private preopenOrder: string[] = [];
  private readonly table = new FdTable();
  private readonly clocks = new GuestClocks();
  private exitCode: number | null = null;
  private pendingPoll: { subscriptions: string; deadlineNs: bigint } | null = null;
  /**
   * A blocking recv (MSG_WAITALL) or send that had moved some bytes when a pause came: it unwinds,
   * and its re-entry (the same call, same arguments) goes on from `done`. Host-local: a restore
   * elsewhere finds the connection reset anyway.
   */
  private partialIo: { fd: number; key: string; done: number } | null = null;
  /** Private target for Atomics.wait: the only way to sleep synchronously on a worker. */
  private readonly sleeper = new Int32Array(new SharedArrayBuffer(4));

  constructor(options: WasiOptions, hooks: WasiHooks) {
    validateOptions(options);
    if (typeof hooks?.pauseRequested !== 'function' || typeof hooks.unwind !== 'function') throw new Error('WASI hooks need pauseRequested() and unwind()');
    this.hooks = hooks;
    this.args = [...options.args];
    this.env = { ...options.env };
    this.stdio = { ...(options.stdio ?? DEFAULT_STDIO) };
    this.table.set(0, stdioDescriptor('stdin', this.stdio.stdin));
    this.table.set(1, stdioDescriptor('stdout', this.stdio.stdout));
    this.table.set(2, stdioDescriptor('stderr', this.stdio.stderr));
    try {
      for (const p of options.preopens) {
        const root = makePreopenRoot(p.guestPath, p.hostPath);
        this.roots.set(p.guestPath, root);
        this.preopenOrder.push(p.guestPath);
        const hostFd = openHostFd(root.hostPath, { read: true, write: false, directory: true, creat: false, excl: false, trunc: false, follow: true, fdflags: 0 });
        this.table.add({
          kind: 'preopen', hostFd, ownsHostFd: true, root, path: '.', offset: 0, fdflags: 0, oflags: 0,
          rightsBase: RIGHTS_ALL, rightsInheriting: RIGHTS_ALL, filetype: FILETYPE.DIRECTORY,
          read: true, write: false, detached: false, stream: false,
        });
      }
      for (const l of options.listen ?? []) {
        this.table.add(socketDescriptor('listener', l.hostFd, { family: l.family, address: l.address, port: l.port, peer: null }, 0));
      }
    } catch (err) {
      this.table.closeAll();
      throw err;
    }
    this.imports = this.buildImports();
  }

  /**
   * Rebuilds a Wasi from captured state on this host: files are reopened at their paths under the
   * preopens of `binding` (matched by guest path) and continue at their offsets, without O_CREAT, O_TRUNC
   * or O_EXCL; stdio descriptors are rebound to `binding.stdio`; clocks continue from the captured values.
   */
  static restore(state: WasiState, binding: { preopens: Preopen[]; stdio: StdioBinding }, hooks: WasiHooks): Wasi {
    const s = validateWasiState(state);
    const w = new Wasi({ args: s.args, env: s.env, preopens: [], stdio: binding.stdio }, hooks);
    w.table.closeAll();
    try {
      const needed = new Set(s.fds.flatMap((f) => (f.preopen === null ? [] : [f.preopen])));
      for (const guestPath of s.preopens) {
        const p = binding.preopens.find((b) => b.guestPath === guestPath);
        if (p === undefined) {
          if (needed.has(guestPath)) throw new Error(`cannot restore WASI state: it needs preopen ${guestPath}, which this host's binding does not provide`);
          continue; // the guest closed it; nothing refers to it any more
        }
        w.roots.set(guestPath, makePreopenRoot(guestPath, p.hostPath));
      }
      w.preopenOrder = [...s.preopens];
      for (const f of s.fds) w.table.set(f.fd, w.reopen(f));
    } catch (err) {
      w.table.closeAll();
      throw err;
    }
    w.clocks.continueFrom(BigInt(s.clocks.monotonicNs), BigInt(s.clocks.cputimeNs));
    w.exitCode = s.exitCode;
    w.pendingPoll = s.pendingPoll === null ? null : { subscriptions: s.pendingPoll.subscriptions, deadlineNs: BigInt(s.pendingPoll.deadlineNs) };
    return w;
  }

  private reopen(f: FdState): Descriptor {
    if (f.kind === 'listener' || f.kind === 'socket') {
      const s = f.socket!;
      let hostFd = -1;
      if (f.kind === 'listener') {
        try {
          hostFd = tcpListen(s.family, s.address, s.port);
        } catch (err) {
          throw new Error(`cannot restore WASI fd ${f.fd}: listening again on ${formatSocketAddress(s.family, s.address, s.port)} failed: ${(err as Error).message}`);
        }
      }
      // A connection cannot be re-created from a snapshot: it comes back reset (ECONNRESET on first use).
      const d = socketDescriptor(f.kind, hostFd, s, f.fdflags);
      return { ...d, rightsBase: BigInt(f.rightsBase) & d.rightsBase, rightsInheriting: BigInt(f.rightsInheriting) & RIGHTS_SOCKET };
    }
    if (f.kind === 'stdin' || f.kind === 'stdout' || f.kind === 'stderr') {
      const d = stdioDescriptor(f.kind, this.stdio[f.kind]);
      return { ...d, fdflags: f.fdflags, rightsBase: BigInt(f.rightsBase) & d.rightsBase, rightsInheriting: BigInt(f.rightsInheriting) };
    }
    if (f.detached) throw new Error(`cannot restore WASI fd ${f.fd}: ${f.preopen}/${f.path} was removed while open`);
    const root = this.roots.get(f.preopen!);
    if (root === undefined) throw new Error(`cannot restore WASI fd ${f.fd}: preopen ${f.preopen} is not bound`);
    const directory = f.kind !== 'file';
    let hostFd: number;
    try {
      const host = resolveHostPath(root, f.path, true);
      hostFd = openHostFd(host, { read: f.read, write: f.write, directory, creat: false, excl: false, trunc: false, follow: true, fdflags: f.fdflags });
    } catch (err) {
      throw new Error(`cannot restore WASI fd ${f.fd}: reopening ${f.preopen}/${f.path} under ${root.hostPath} failed: ${(err as Error).message}`);
    }
    const st = fs.fstatSync(hostFd);
    return {
      kind: f.kind, hostFd, ownsHostFd: true, root, path: f.path, offset: f.offset, fdflags: f.fdflags, oflags: f.oflags,
      rightsBase: BigInt(f.rightsBase), rightsInheriting: BigInt(f.rightsInheriting), filetype: filetypeOf(st),
      read: f.read, write: f.write, detached: false, stream: isStream(st),
    };
  }

  setMemory(memory: WebAssembly.Memory): void {
    if (!(memory instanceof WebAssembly.Memory)) throw new Error('setMemory needs a WebAssembly.Memory');
    this.mem = new GuestMemoryViews(memory);
  }

  capture(): WasiState {
    return {
      version: WASI_STATE_VERSION,
      args: [...this.args],
      env: { ...this.env },
      preopens: [...this.preopenOrder],
      fds: this.table.list().map(([fd, d]): FdState => ({
        fd, kind: d.kind, preopen: d.root?.guestPath ?? null, path: d.path, offset: d.offset, fdflags: d.fdflags,
        oflags: d.oflags, rightsBase: d.rightsBase.toString(), rightsInheriting: d.rightsInheriting.toString(),
        filetype: d.filetype, read: d.read, write: d.write, detached: d.detached,
        ...(d.socket === undefined ? {} : {
          socket: { family: d.socket.family, address: d.socket.address, port: d.socket.port, peer: d.socket.peer === null ? null : { ...d.socket.peer } },
        }),
      })),
      clocks: { monotonicNs: this.clocks.monotonicNs().toString(), cputimeNs: this.clocks.cputimeNs().toString() },
      exitCode: this.exitCode,
      pendingPoll: this.pendingPoll === null ? null : { subscriptions: this.pendingPoll.subscriptions, deadlineNs: this.pendingPoll.deadlineNs.toString() },
    };
  }

  movabilityProblems(): string[] {
    const problems: string[] = [];
    for (const [fd, d] of this.table.list()) {
      if (d.kind === 'stdin' || d.kind === 'stdout' || d.kind === 'stderr') continue;
      if (d.socket !== undefined) {
        const s = d.socket;
        const local = formatSocketAddress(s.family, s.address, s.port);
        if (d.kind === 'listener') {
          problems.push(`fd ${fd} listens on ${local}: live migration does not move listening sockets yet (a snapshot and restore re-creates them)`);
        } else if (s.reset === 'no' && s.peer !== null) {
          problems.push(`fd ${fd} is a TCP connection ${local} <-> ${formatSocketAddress(s.family, s.peer.address, s.peer.port)}: live migration does not move connections yet (restored from a snapshot, the guest gets ECONNRESET on it)`);
        }
        continue; // a connection already reset is dead everywhere: it moves as it is
      }
      const where = `${d.root?.guestPath}/${d.path}`;
      if (d.detached) problems.push(`fd ${fd} (${where}) was unlinked or replaced while open; it cannot be reopened elsewhere`);
      else if (d.kind === 'file' && d.filetype !== FILETYPE.REGULAR_FILE) {
        const what = d.filetype === FILETYPE.SOCKET_STREAM ? 'a socket' : d.filetype === FILETYPE.CHARACTER_DEVICE ? 'a character device'
          : d.filetype === FILETYPE.BLOCK_DEVICE ? 'a block device' : 'a pipe or FIFO';
        problems.push(`fd ${fd} (${where}) is ${what}`);
      }
    }
    return problems;
  }

  /**
   * Closes every host fd the guest holds. `resetConnections` (a guest stopped, not exited) aborts its
   * TCP connections, so their peers see a reset rather than an orderly end of stream.
   */
  close(resetConnections = false): void {
    this.table.closeAll(resetConnections);
  }

  /** Whether the guest holds live sockets (their host fds must be closed when it ends). */
  holdsSockets(): boolean {
    return this.table.list().some(([, d]) => d.socket !== undefined && d.hostFd >= 0);
  }

  /** The exit status the guest passed to proc_exit, if it did. */
  get exitStatus(): number | null {
    return this.exitCode;
  }

  // ---- helpers ----

  private m(): GuestMemoryViews {
    if (this.mem === null) throw new Error('WASI host call before setMemory()');
    return this.mem;
  }

  private dirOf(fd: number): Descriptor & { root: PreopenRoot } {
    const d = this.table.get(fd);
    if ((d.kind !== 'preopen' && d.kind !== 'dir') || d.root === null) throw new WasiErrno(ERRNO.NOTDIR);
    return d as Descriptor & { root: PreopenRoot };
  }

  private need(d: Descriptor, right: bigint): void {
    if ((d.rightsBase & right) === 0n) throw new WasiErrno(ERRNO.NOTCAPABLE);
  }

  /** Guest path argument → (dir descriptor, path relative to its preopen root). */
  private guestPath(fd: number, ptr: number, len: number, right: bigint): { dir: Descriptor & { root: PreopenRoot }; rel: string } {
    const dir = this.dirOf(fd);
    this.need(dir, right);
    return { dir, rel: joinGuestPath(dir.path, this.m().string(ptr, len)) };
  }

  private fileOf(fd: number): Descriptor {
    const d = this.table.get(fd);
    if (d.kind === 'preopen' || d.kind === 'dir') throw new WasiErrno(ERRNO.ISDIR);
    return d;
  }

  private writeFilestat(ptr: number, st: fs.BigIntStats): void {
    const m = this.m();
    m.zero(ptr, SIZE_FILESTAT);
    m.setU64(ptr, st.dev);
    m.setU64(ptr + 8, st.ino);
    m.setU8(ptr + 16, filetypeOf(st));
    m.setU64(ptr + 24, st.nlink);
    m.setU64(ptr + 32, st.size);
    m.setU64(ptr + 40, st.atimeNs);
    m.setU64(ptr + 48, st.mtimeNs);
    m.setU64(ptr + 56, st.ctimeNs);
  }

  /** New (atime, mtime) in seconds for utimes, from fst_flags; unchanged ones from `st`. */
  private times(st: fs.BigIntStats, atim: bigint, mtim: bigint, flags: number): [number, number] {
    if ((flags & FSTFLAGS.ATIM && flags & FSTFLAGS.ATIM_NOW) || (flags & FSTFLAGS.MTIM && flags & FSTFLAGS.MTIM_NOW)) throw new WasiErrno(ERRNO.INVAL);
    const now = Number(this.clocks.realtimeNs()) / 1e9;
    const pick = (set: number, setNow: number, value: bigint, old: bigint): number =>
      flags & setNow ? now : flags & set ? Number(value) / 1e9 : Number(old) / 1e9;
    return [pick(FSTFLAGS.ATIM, FSTFLAGS.ATIM_NOW, atim, st.atimeNs), pick(FSTFLAGS.MTIM, FSTFLAGS.MTIM_NOW, mtim, st.mtimeNs)];
  }

  private sleepMs(ms: number): void {
    if (this.hooks.sleep) this.hooks.sleep(Math.max(0, ms));
    else Atomics.wait(this.sleeper, 0, 0, Math.max(0, ms));
  }

  private readable(d: Descriptor, timeoutMs: number): boolean {
    if (!d.stream || this.hooks.waitReadable === undefined) return true;
    return this.hooks.waitReadable(d.hostFd, timeoutMs);
  }

  /** Marks open descriptors whose path went away, or moves them along with a rename. */
  private pathsChanged(root: PreopenRoot, from: string, to: string | null): void {
    for (const [, d] of this.table.list()) {
      if (d.root !== root || d.detached) continue;
      if (to !== null && d.path === to) d.detached = true; // renamed over: the open file is no longer at its path
      if (d.path === from) {
        if (to === null) d.detached = true;
        else d.path = to;
      } else if (to !== null && d.path.startsWith(from + '/')) d.path = to + d.path.slice(from.length);
    }
  }

  private listing(d: Descriptor & { root: PreopenRoot }): DirEntry[] {
    const host = resolveHostPath(d.root, d.path, true);
    const entries: DirEntry[] = [
      { name: '.', ino: fs.statSync(host, { bigint: true }).ino, filetype: FILETYPE.DIRECTORY },
      { name: '..', ino: fs.statSync(nodePath.dirname(host), { bigint: true }).ino, filetype: FILETYPE.DIRECTORY },
    ];
    // Sorted so cookies (indexes) mean the same thing after a restore on another host.
    const names = fs.readdirSync(host).sort();
    for (const name of names) {
      try {
        const st = fs.lstatSync(nodePath.join(host, name), { bigint: true });
        entries.push({ name, ino: st.ino, filetype: filetypeOf(st) });
      } catch {
        // removed between readdir and lstat: skip it
      }
    }
    return entries;
  }

  // ---- the preview1 functions ----

  private buildImports(): Record<string, HostFunction> {
    const fns: Record<string, HostFunction> = {
      args_get: (argv: number, buf: number) => this.putStrings(this.args, argv, buf),
      args_sizes_get: (countPtr: number, sizePtr: number) => this.putSizes(this.args, countPtr, sizePtr),
      environ_get: (environ: number, buf: number) => this.putStrings(this.envStrings(), environ, buf),
      environ_sizes_get: (countPtr: number, sizePtr: number) => this.putSizes(this.envStrings(), countPtr, sizePtr),

      clock_res_get: (id: number, out: number) => { this.m().setU64(out, this.clocks.resolution(id)); return 0; },
      clock_time_get: (id: number, _precision: bigint, out: number) => { this.m().setU64(out, this.clocks.now(id)); return 0; },

      fd_advise: (fd: number) => { this.fileOf(fd); return 0; },
      fd_allocate: (fd: number, offset: bigint, len: bigint) => {
        const d = this.fileOf(fd);
        this.need(d, RIGHTS.FD_ALLOCATE);
        const end = offset + len;
        if (offset < 0n || len <= 0n) throw new WasiErrno(ERRNO.INVAL);
        if (BigInt(fs.fstatSync(d.hostFd).size) < end) fs.ftruncateSync(d.hostFd, Number(end));
        return 0;
      },
      fd_close: (fd: number) => {
        const d = this.table.get(fd);
        closeHost(d);
        this.table.delete(fd);
        return 0;
      },
      fd_datasync: (fd: number) => { fs.fdatasyncSync(this.table.get(fd).hostFd); return 0; },
      fd_sync: (fd: number) => { fs.fsyncSync(this.table.get(fd).hostFd); return 0; },
      fd_fdstat_get: (fd: number, out: number) => {
        const d = this.table.get(fd);
        const m = this.m();
        m.zero(out, 24);
        m.setU8(out, d.filetype);
        m.setU16(out + 2, d.fdflags);
        m.setU64(out + 8, d.rightsBase);
        m.setU64(out + 16, d.rightsInheriting);
        return 0;
      },
      fd_fdstat_set_flags: (fd: number, flags: number) => {
        const d = this.table.get(fd);
        if (flags & ~FDFLAGS_ALL) throw new WasiErrno(ERRNO.INVAL);
        // APPEND and NONBLOCK are ours (emulated); sync flags only take effect on the next open (restore).
        d.fdflags = flags;
        return 0;
      },
      fd_fdstat_set_rights: (fd: number, base: bigint, inheriting: bigint) => {
        const d = this.table.get(fd);
        if ((base & ~d.rightsBase) !== 0n || (inheriting & ~d.rightsInheriting) !== 0n) throw new WasiErrno(ERRNO.NOTCAPABLE);
        d.rightsBase = base;
        d.rightsInheriting = inheriting;
        return 0;
      },
      fd_filestat_get: (fd: number, out: number) => {
        const d = this.table.get(fd);
        if (d.hostFd < 0 && d.socket !== undefined) {
          // A connection reset by a restore has no host fd: a socket with nothing else to say.
          this.m().zero(out, SIZE_FILESTAT);
          this.m().setU8(out + 16, FILETYPE.SOCKET_STREAM);
          return 0;
        }
        this.writeFilestat(out, fs.fstatSync(d.hostFd, { bigint: true }));
        return 0;
      },
      fd_filestat_set_size: (fd: number, size: bigint) => {
        const d = this.fileOf(fd);
        this.need(d, RIGHTS.FD_FILESTAT_SET_SIZE);
        if (size < 0n) throw new WasiErrno(ERRNO.INVAL);
        fs.ftruncateSync(d.hostFd, Number(size));
        return 0;
      },
      fd_filestat_set_times: (fd: number, atim: bigint, mtim: bigint, flags: number) => {
        const d = this.table.get(fd);
        const [a, mt] = this.times(fs.fstatSync(d.hostFd, { bigint: true }), atim, mtim, flags);
        fs.futimesSync(d.hostFd, a, mt);
        return 0;
      },
      fd_pread: (fd: number, iovs: number, iovsLen: number, offset: bigint, nreadPtr: number) => {
        const d = this.fileOf(fd);
        if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
        this.need(d, RIGHTS.FD_READ);
        const views = this.m().iovecs(iovs, iovsLen);
        const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views, Number(offset));
        this.m().setU32(nreadPtr, n);
        return 0;
      },
      fd_pwrite: (fd: number, iovs: number, iovsLen: number, offset: bigint, nwrittenPtr: number) => {
        const d = this.fileOf(fd);
        if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
        this.need(d, RIGHTS.FD_WRITE);
        const views = this.m().iovecs(iovs, iovsLen);
        const n = views.length === 0 ? 0 : fs.writevSync(d.hostFd, views, Number(offset));
        this.m().setU32(nwrittenPtr, n);
        return 0;
      },
      fd_prestat_get: (fd: number, out: number) => {
        const d = this.table.get(fd);
        if (d.kind !== 'preopen' || d.root === null) throw new WasiErrno(ERRNO.BADF);
        const m = this.m();
        m.zero(out, 8);
        m.setU8(out, PREOPENTYPE_DIR);
        m.setU32(out + 4, encodeUtf8(d.root.guestPath).length);
        return 0;
      },
      fd_prestat_dir_name: (fd: number, ptr: number, len: number) => {
        const d = this.table.get(fd);
        if (d.kind !== 'preopen' || d.root === null) throw new WasiErrno(ERRNO.BADF);
        const name = encodeUtf8(d.root.guestPath);
        if (len < name.length) throw new WasiErrno(ERRNO.NAMETOOLONG);
        this.m().write(ptr, name);
        return 0;
      },
      fd_read: (fd: number, iovs: number, iovsLen: number, nreadPtr: number) => this.fdRead(fd, iovs, iovsLen, nreadPtr),
      fd_write: (fd: number, iovs: number, iovsLen: number, nwrittenPtr: number) => this.fdWrite(fd, iovs, iovsLen, nwrittenPtr),
      fd_readdir: (fd: number, buf: number, bufLen: number, cookie: bigint, bufusedPtr: number) => this.fdReaddir(fd, buf, bufLen, cookie, bufusedPtr),
      fd_renumber: (from: number, to: number) => {
        const d = this.table.get(from);
        const target = this.table.get(to);
        if (from === to) return 0;
        closeHost(target);
        this.table.set(to, d);
        this.table.delete(from);
        return 0;
      },
      fd_seek: (fd: number, offset: bigint, whence: number, newOffsetPtr: number) => {
        const d = this.fileOf(fd);
        if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
        this.need(d, offset === 0n && whence === WHENCE.CUR ? RIGHTS.FD_TELL | RIGHTS.FD_SEEK : RIGHTS.FD_SEEK);
        let base: bigint;
        if (whence === WHENCE.SET) base = 0n;
        else if (whence === WHENCE.CUR) base = BigInt(d.offset);
        else if (whence === WHENCE.END) base = BigInt(fs.fstatSync(d.hostFd).size);
        else throw new WasiErrno(ERRNO.INVAL);
        const next = base + offset;
        if (next < 0n || next > BigInt(Number.MAX_SAFE_INTEGER)) throw new WasiErrno(ERRNO.INVAL);
        d.offset = Number(next);
        this.m().setU64(newOffsetPtr, next);
        return 0;
      },
      fd_tell: (fd: number, out: number) => {
        const d = this.fileOf(fd);
        if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
        this.m().setU64(out, BigInt(d.offset));
        return 0;
      },

      path_create_directory: (fd: number, ptr: number, len: number) => {
        const { dir, rel } = this.guestPath(fd, ptr, len, RIGHTS.PATH_CREATE_DIRECTORY);
        fs.mkdirSync(resolveHostPath(dir.root, rel, false));
        return 0;
      },
      path_filestat_get: (fd: number, flags: number, ptr: number, len: number, out: number) => {
        const { dir, rel } = this.guestPath(fd, ptr, len, RIGHTS.PATH_FILESTAT_GET);
        const follow = (flags & LOOKUP_SYMLINK_FOLLOW) !== 0;
        const host = resolveHostPath(dir.root, rel, follow);
        this.writeFilestat(out, follow ? fs.statSync(host, { bigint: true }) : fs.lstatSync(host, { bigint: true }));
        return 0;
      },
      path_filestat_set_times: (fd: number, flags: number, ptr: number, len: number, atim: bigint, mtim: bigint, fst: number) => {
        const { dir, rel } = this.guestPath(fd, ptr, len, RIGHTS.PATH_FILESTAT_SET_TIMES);
        const follow = (flags & LOOKUP_SYMLINK_FOLLOW) !== 0;
        const host = resolveHostPath(dir.root, rel, follow);
        const st = follow ? fs.statSync(host, { bigint: true }) : fs.lstatSync(host, { bigint: true });
        const [a, mt] = this.times(st, atim, mtim, fst);
        if (follow) fs.utimesSync(host, a, mt);
        else fs.lutimesSync(host, a, mt);
        return 0;
      },
      path_link: (oldFd: number, oldFlags: number, oldPtr: number, oldLen: number, newFd: number, newPtr: number, newLen: number) => {
        const src = this.guestPath(oldFd, oldPtr, oldLen, RIGHTS.PATH_LINK_SOURCE);
        const dst = this.guestPath(newFd, newPtr, newLen, RIGHTS.PATH_LINK_TARGET);
        const srcHost = resolveHostPath(src.dir.root, src.rel, (oldFlags & LOOKUP_SYMLINK_FOLLOW) !== 0);
        fs.linkSync(srcHost, resolveHostPath(dst.dir.root, dst.rel, false));
        return 0;
      },
      path_open: (fd: number, dirflags: number, ptr: number, len: number, oflags: number, rightsBase: bigint, rightsInheriting: bigint, fdflags: number, fdOut: number) =>
        this.pathOpen(fd, dirflags, ptr, len, oflags, rightsBase, rightsInheriting, fdflags, fdOut),
      path_readlink: (fd: number, ptr: number, len: number, buf: number, bufLen: number, bufusedPtr: number) => {
        const { dir, rel } = this.guestPath(fd, ptr, len, RIGHTS.PATH_READLINK);
        const target = fs.readlinkSync(resolveHostPath(dir.root, rel, false), { encoding: 'buffer' });
        const n = Math.min(target.length, bufLen);
        this.m().write(buf, target.subarray(0, n));
        this.m().setU32(bufusedPtr, n);
        return 0;
      },
      path_remove_directory: (fd: number, ptr: number, len: number) => {
        const { dir, rel } = this.guestPath(fd, ptr, len, RIGHTS.PATH_REMOVE_DIRECTORY);
        if (rel === '.') throw new WasiErrno(ERRNO.BUSY);
        fs.rmdirSync(resolveHostPath(dir.root, rel, false));
        this.pathsChanged(dir.root, rel, null);
        return 0;
      },
      path_rename: (fd: number, oldPtr: number, oldLen: number, newFd: number, newPtr: number, newLen: number) => {
        const src = this.guestPath(fd, oldPtr, oldLen, RIGHTS.PATH_RENAME_SOURCE);
        const dst = this.guestPath(newFd, newPtr, newLen, RIGHTS.PATH_RENAME_TARGET);
        fs.renameSync(resolveHostPath(src.dir.root, src.rel, false), resolveHostPath(dst.dir.root, dst.rel, false));
        if (src.dir.root === dst.dir.root) this.pathsChanged(src.dir.root, src.rel, dst.rel);
        else {
          this.pathsChanged(dst.dir.root, dst.rel, null);
          this.pathsChanged(src.dir.root, src.rel, null); // moved to another preopen: no longer tracked
        }
        return 0;
      },
      path_symlink: (targetPtr: number, targetLen: number, fd: number, ptr: number, len: number) => {
        const target = this.m().string(targetPtr, targetLen);
        const { dir, rel } = this.guestPath(fd, ptr, len, RIGHTS.PATH_SYMLINK);
        // A link is only followed through resolveHostPath, which checks it, but refuse obvious escapes early.
        joinGuestPath(rel === '.' ? '.' : nodePath.posix.dirname(rel), target);
        fs.symlinkSync(target, resolveHostPath(dir.root, rel, false));
        return 0;
      },
      path_unlink_file: (fd: number, ptr: number, len: number) => {
        const { dir, rel } = this.guestPath(fd, ptr, len, RIGHTS.PATH_UNLINK_FILE);
        fs.unlinkSync(resolveHostPath(dir.root, rel, false));
        this.pathsChanged(dir.root, rel, null);
        return 0;
      },

      poll_oneoff: (inPtr: number, outPtr: number, nsubs: number, neventsPtr: number) => this.pollOneoff(inPtr, outPtr, nsubs, neventsPtr),
      proc_exit: (code: number): void => {
        this.exitCode = code >>> 0;
        throw new WasiExit(code >>> 0);
      },
      proc_raise: () => ERRNO.NOSYS,
      random_get: (ptr: number, len: number) => { randomFillSync(this.m().bytes(ptr, len)); return 0; },
      sched_yield: () => 0,

      // TCP sockets: listeners come from the embedder (`--listen`), connections from sock_accept.
      sock_accept: (fd: number, flags: number, fdOut: number) => this.sockAccept(fd, flags, fdOut),
      sock_recv: (fd: number, iovs: number, iovsLen: number, riFlags: number, datalenOut: number, roFlagsOut: number) => {
        const d = this.sockOf(fd);
        this.need(d, RIGHTS.FD_READ);
        if (riFlags & ~(RIFLAGS_PEEK | RIFLAGS_WAITALL)) throw new WasiErrno(ERRNO.INVAL);
        const n = this.sockRecv(fd, `${iovs} ${iovsLen} ${riFlags}`, d, this.m().iovecs(iovs, iovsLen), (riFlags & RIFLAGS_PEEK) !== 0, (riFlags & RIFLAGS_WAITALL) !== 0);
        if (n === null) return 0; // unwound for a pause: re-entered on resume
        this.m().setU32(datalenOut, n);
        this.m().setU16(roFlagsOut, 0);
        return 0;
      },
      sock_send: (fd: number, iovs: number, iovsLen: number, siFlags: number, datalenOut: number) => {
        const d = this.sockOf(fd);
        this.need(d, RIGHTS.FD_WRITE);
        if (siFlags !== 0) throw new WasiErrno(ERRNO.INVAL);
        const n = this.sockSend(fd, `${iovs} ${iovsLen}`, d, this.m().iovecs(iovs, iovsLen));
        if (n === null) return 0;
        this.m().setU32(datalenOut, n);
        return 0;
      },
      sock_shutdown: (fd: number, how: number) => {
        const d = this.sockOf(fd);
        this.need(d, RIGHTS.SOCK_SHUTDOWN);
        const h = how === SDFLAGS_RD ? SHUT_RD : how === SDFLAGS_WR ? SHUT_WR : how === (SDFLAGS_RD | SDFLAGS_WR) ? SHUT_RDWR : -1;
        if (h < 0) throw new WasiErrno(ERRNO.INVAL);
        if (d.hostFd < 0) throw new WasiErrno(ERRNO.NOTCONN);
        shutdown(d.hostFd, h);
        return 0;
      },
    };
    const wrapped: Record<string, HostFunction> = {};
    for (const [name, fn] of Object.entries(fns)) {
      // Fixed parameters (preview1 functions take at most 9) avoid a rest array on every host call;
      // Wasm passes exactly the declared arguments, extra ones are undefined and unused.
      wrapped[name] = (a?: unknown, b?: unknown, c?: unknown, d?: unknown, e?: unknown, f?: unknown, g?: unknown, h?: unknown, i?: unknown) => {
        try {
          return fn(a, b, c, d, e, f, g, h, i);
        } catch (err) {
          if (err instanceof WasiExit) throw err;
          const errno = errnoOf(err);
          if (errno === undefined) throw err;
          return errno;
        }
      };
    }
    return wrapped;
  }

  private envStrings(): string[] {
    return Object.entries(this.env).map(([k, v]) => `${k}=${v}`);
  }

  private putSizes(strings: string[], countPtr: number, sizePtr: number): number {
    const m = this.m();
    m.setU32(countPtr, strings.length);
    m.setU32(sizePtr, strings.reduce((n, s) => n + encodeUtf8(s).length + 1, 0));
    return 0;
  }

  private putStrings(strings: string[], ptrs: number, buf: number): number {
    const m = this.m();
    let at = buf;
    strings.forEach((s, i) => {
      const bytes = encodeUtf8(s);
      m.setU32(ptrs + i * 4, at);
      m.write(at, bytes);
      m.setU8(at + bytes.length, 0);
      at += bytes.length + 1;
    });
    return 0;
  }

  private fdRead(fd: number, iovs: number, iovsLen: number, nreadPtr: number): number {
    const d = this.fileOf(fd);
    if (!d.read) throw new WasiErrno(ERRNO.BADF);
    this.need(d, RIGHTS.FD_READ);
    if (d.socket !== undefined) {
      const n = this.sockRecv(fd, `${iovs} ${iovsLen} 0`, d as SocketDescriptor, this.m().iovecs(iovs, iovsLen), false, false);
      if (n !== null) this.m().setU32(nreadPtr, n);
      return 0;
    }
    if (d.stream || d.root === null) {
      // Stream: may block. Wait in slices, checking for a pause; nothing is consumed before data is ready,
      // so returning early for a pause and being re-entered later is exact.
      for (;;) {
        if (this.readable(d, d.fdflags & FDFLAGS.NONBLOCK ? 0 : WAIT_SLICE_MS)) {
          try {
            const views = this.m().iovecs(iovs, iovsLen);
            const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views);
            this.m().setU32(nreadPtr, n);
            return 0;
          } catch (err) {
            if (!isAgain(err)) throw err;
          }
        }
        if (d.fdflags & FDFLAGS.NONBLOCK) throw new WasiErrno(ERRNO.AGAIN);
        if (this.hooks.pauseRequested()) {
          this.hooks.unwind();
          return 0;
        }
        if (this.hooks.waitReadable === undefined) this.sleepMs(1); // host fd is O_NONBLOCK and empty
      }
    }
    const views = this.m().iovecs(iovs, iovsLen);
    const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views, d.offset);
    d.offset += n;
    this.m().setU32(nreadPtr, n);
    return 0;
  }

  private fdWrite(fd: number, iovs: number, iovsLen: number, nwrittenPtr: number): number {
    const d = this.fileOf(fd);
    if (!d.write) throw new WasiErrno(ERRNO.BADF);
    this.need(d, RIGHTS.FD_WRITE);
    const views = this.m().iovecs(iovs, iovsLen);
    if (views.length === 0) {
      this.m().setU32(nwrittenPtr, 0);
      return 0;
    }
    if (d.socket !== undefined) {
      const n = this.sockSend(fd, `${iovs} ${iovsLen}`, d as SocketDescriptor, views);
      if (n !== null) this.m().setU32(nwrittenPtr, n);
      return 0;
    }
    if (d.stream || d.root === null) {
      // Stdio and pipes: kernel position. An O_NONBLOCK host fd (Node makes some pipes so) is retried.
      for (;;) {
        try {
          this.m().setU32(nwrittenPtr, fs.writevSync(d.hostFd, views));
          return 0;
        } catch (err) {
          if (!isAgain(err)) throw err;
          this.sleepMs(1);
        }
      }
    }
    const at = d.fdflags & FDFLAGS.APPEND ? fs.fstatSync(d.hostFd).size : d.offset;
    const n = fs.writevSync(d.hostFd, views, at);
    d.offset = at + n;
    this.m().setU32(nwrittenPtr, n);
    return 0;
  }

  private fdReaddir(fd: number, buf: number, bufLen: number, cookie: bigint, bufusedPtr: number): number {
    const d = this.dirOf(fd);
    this.need(d, RIGHTS.FD_READDIR);
    if (cookie === 0n || d.listing === undefined) d.listing = this.listing(d);
    const m = this.m();
    let used = 0;
    for (let i = Number(cookie); i < d.listing.length && used < bufLen; i++) {
      const e = d.listing[i]!;
      const name = encodeUtf8(e.name);
      // Build the whole entry, then copy what fits: a truncated last entry tells libc to retry bigger.
      const entry = new Uint8Array(SIZE_DIRENT + name.length);
      const v = new DataView(entry.buffer);
      v.setBigUint64(0, BigInt(i + 1), true);
      v.setBigUint64(8, e.ino, true);
      v.setUint32(16, name.length, true);
      v.setUint8(20, e.filetype);
      entry.set(name, SIZE_DIRENT);
      const n = Math.min(entry.length, bufLen - used);
      m.write(buf + used, entry.subarray(0, n));
      used += n;
    }
    m.setU32(bufusedPtr, used);
    return 0;
  }

  private pathOpen(fd: number, dirflags: number, ptr: number, len: number, oflags: number, rightsBase: bigint, rightsInheriting: bigint, fdflags: number, fdOut: number): number {
    const { dir, rel } = this.guestPath(fd, ptr, len, RIGHTS.PATH_OPEN);
    if (oflags & OFLAGS.CREAT) this.need(dir, RIGHTS.PATH_CREATE_FILE);
    const follow = (dirflags & LOOKUP_SYMLINK_FOLLOW) !== 0;
    const host = resolveHostPath(dir.root, rel, follow);
    const read = (rightsBase & (RIGHTS.FD_READ | RIGHTS.FD_READDIR)) !== 0n;
    const write = (rightsBase & (RIGHTS.FD_WRITE | RIGHTS.FD_ALLOCATE | RIGHTS.FD_FILESTAT_SET_SIZE)) !== 0n || (oflags & OFLAGS.TRUNC) !== 0;
    const directory = (oflags & OFLAGS.DIRECTORY) !== 0;
    let hostFd: number;
    try {
      hostFd = openHostFd(host, {
        read, write, directory, creat: (oflags & OFLAGS.CREAT) !== 0, excl: (oflags & OFLAGS.EXCL) !== 0,
        trunc: (oflags & OFLAGS.TRUNC) !== 0, follow, fdflags,
      });
    } catch (err) {
      // A directory opened without O_DIRECTORY but with write rights: open it read-only as a directory.
      if (!(typeof err === 'object' && err !== null && 'code' in err && err.code === 'EISDIR') || oflags & (OFLAGS.CREAT | OFLAGS.TRUNC)) throw err;
      hostFd = openHostFd(host, { read: true, write: false, directory: true, creat: false, excl: false, trunc: false, follow, fdflags: 0 });
    }
    const st = fs.fstatSync(hostFd);
    const isDir = st.isDirectory();
    let base = rightsBase & dir.rightsInheriting;
    if (!isDir) base &= ~RIGHTS_DIR_ONLY;
    const stream = isStream(st);
    if (stream) base &= ~RIGHTS_SEEKING;
    const newFd = this.table.add({
      kind: isDir ? 'dir' : 'file', hostFd, ownsHostFd: true, root: dir.root, path: rel, offset: 0,
      fdflags: fdflags & FDFLAGS_ALL, oflags, rightsBase: base, rightsInheriting: rightsInheriting & dir.rightsInheriting,
      filetype: filetypeOf(st), read: isDir ? true : read, write: isDir ? false : write, detached: false, stream,
    });
    this.m().setU32(fdOut, newFd);
    return 0;
  }

  // ---- sockets ----
  // Host sockets are always O_NONBLOCK; the guest's blocking mode is its NONBLOCK fdflag. A blocking
  // call waits in poll() beside the wake fd, and unwinds for a pause before it has consumed or sent
  // anything, so the re-entry on resume repeats it exactly. A call that has already moved bytes
  // returns the partial count instead, as recv/send do when a signal interrupts them.

  private sockOf(fd: number): SocketDescriptor {
    const d = this.table.get(fd);
    if (d.socket === undefined) throw new WasiErrno(ERRNO.NOTSOCK);
    return d as SocketDescriptor;
  }

  /** A connection a restore reset: ECONNRESET once, then end of stream for reads and EPIPE for writes. */
  private deadSocket(d: SocketDescriptor, reading: boolean): number {
    if (d.socket.reset === 'pending') {
      d.socket.reset = 'reported';
      throw new WasiErrno(ERRNO.CONNRESET);
    }
    if (reading) return 0;
    throw new WasiErrno(ERRNO.PIPE);
  }

  /** Waits until one of `fds` is ready, a pause is requested (wake fd) or `timeoutMs` (-1: a slice) passes. */
  private waitFds(fds: number[], events: number[], timeoutMs: number): void {
    const wake = this.hooks.wakeFd;
    if (wake === undefined) {
      poll(fds, events, timeoutMs < 0 ? WAIT_SLICE_MS : Math.min(timeoutMs, WAIT_SLICE_MS));
      return;
    }
    const rev = poll([...fds, wake], [...events, POLLIN], timeoutMs < 0 ? WAKE_WAIT_MS : Math.min(timeoutMs, WAKE_WAIT_MS));
    // A signal left over from a pause that has been resumed would make every wait return at once.
    if (rev[fds.length] !== 0 && !this.hooks.pauseRequested()) eventfdDrain(wake);
  }

  private sockAccept(fd: number, flags: number, fdOut: number): number {
    const d = this.sockOf(fd);
    this.need(d, RIGHTS.SOCK_ACCEPT);
    if (flags & ~FDFLAGS.NONBLOCK) throw new WasiErrno(ERRNO.INVAL);
    if (d.kind !== 'listener') throw new WasiErrno(ERRNO.INVAL);
    for (;;) {
      let conn = -1;
      try {
        conn = accept(d.hostFd);
      } catch (err) {
        if (!isAgain(err)) throw err;
      }
      if (conn >= 0) {
        let desc: Descriptor;
        try {
          const local = sockAddress(conn, false);
          const peer = sockAddress(conn, true);
          desc = socketDescriptor('socket', conn, { family: d.socket.family, address: local.address, port: local.port, peer: { address: peer.address, port: peer.port } }, flags);
        } catch (err) {
          // reset before we could look at it (ENOTCONN from getpeername): the next one, as accept would
          closeFd(conn);
          if (typeof err === 'object' && err !== null && 'code' in err && err.code === 'ENOTCONN') continue;
          throw err;
        }
        desc.rightsBase &= d.rightsInheriting | RIGHTS_SOCKET;
        this.m().setU32(fdOut, this.table.add(desc));
        return 0;
      }
      if (d.fdflags & FDFLAGS.NONBLOCK) throw new WasiErrno(ERRNO.AGAIN);
      if (this.hooks.pauseRequested()) {
        this.hooks.unwind();
        return 0;
      }
      this.waitFds([d.hostFd], [POLLIN], -1);
    }
  }

  /** A partial call this (re-)entry continues: the bytes it had already moved. */
  private resumePartial(fd: number, key: string): number {
    const p = this.partialIo;
    this.partialIo = null;
    return p !== null && p.fd === fd && p.key === key ? p.done : 0;
  }

  /** Bytes received, or null when it unwound for a pause (what it had received is kept for the re-entry). */
  private sockRecv(fd: number, key: string, d: SocketDescriptor, views: Uint8Array[], peek: boolean, waitAll: boolean): number | null {
    if (d.kind === 'listener') throw new WasiErrno(ERRNO.NOTCONN);
    if (d.hostFd < 0) return this.deadSocket(d, true);
    const size = views.reduce((n, v) => n + v.length, 0);
    if (size === 0) return 0;
    const nonblock = (d.fdflags & FDFLAGS.NONBLOCK) !== 0;
    let total = this.resumePartial(fd, `recv ${key}`);
    for (;;) {
      let n = -1;
      try {
        n = recvmsg(d.hostFd, total === 0 ? views : skipBytes(views, total), peek ? MSG_PEEK : 0);
      } catch (err) {
        if (!isAgain(err)) {
          if (total > 0) return total;
          throw err;
        }
      }
      if (n === 0) return total;
      if (n > 0) {
        total += n;
        if (!waitAll || peek || total === size) return total;
        continue;
      }
      if (total > 0 && nonblock) return total;
      if (nonblock) throw new WasiErrno(ERRNO.AGAIN);
      if (this.hooks.pauseRequested()) {
        if (total > 0) this.partialIo = { fd, key: `recv ${key}`, done: total };
        this.hooks.unwind();
        return null;
      }
      this.waitFds([d.hostFd], [POLLIN], -1);
    }
  }

  /** Bytes sent (all of them unless non-blocking), or null when it unwound for a pause (what it sent is kept for the re-entry). */
  private sockSend(fd: number, key: string, d: SocketDescriptor, views: Uint8Array[]): number | null {
    if (d.kind === 'listener') throw new WasiErrno(ERRNO.NOTCONN);
    if (d.hostFd < 0) return this.deadSocket(d, false);
    const size = views.reduce((n, v) => n + v.length, 0);
    if (size === 0) return 0;
    const nonblock = (d.fdflags & FDFLAGS.NONBLOCK) !== 0;
    let total = this.resumePartial(fd, `send ${key}`);
    for (;;) {
      let n = -1;
      try {
        n = sendmsg(d.hostFd, total === 0 ? views : skipBytes(views, total), 0);
      } catch (err) {
        if (!isAgain(err)) {
          if (total > 0) return total;
          throw err;
        }
      }
      if (n >= 0) {
        total += n;
        if (total === size || nonblock) return total;
        continue;
      }
      if (nonblock) throw new WasiErrno(ERRNO.AGAIN);
      if (this.hooks.pauseRequested()) {
        if (total > 0) this.partialIo = { fd, key: `send ${key}`, done: total };
        this.hooks.unwind();
        return null;
      }
      this.waitFds([d.hostFd], [POLLOUT], -1);
    }
  }

  private pollOneoff(inPtr: number, outPtr: number, nsubs: number, neventsPtr: number): number {
    if (nsubs === 0) throw new WasiErrno(ERRNO.INVAL);
    const m = this.m();
    const raw = m.copyOut(inPtr, nsubs * SIZE_SUBSCRIPTION);
    const key = Buffer.from(raw).toString('base64');
    const v = new DataView(raw.buffer);
    const now = this.clocks.monotonicNs();
    // A re-entry after a pause keeps the deadline it had: a relative sleep does not start over.
    const resumed = this.pendingPoll !== null && this.pendingPoll.subscriptions === key ? this.pendingPoll.deadlineNs : null;
    interface Sub { userdata: bigint; type: number; fd: number; deadline: bigint }
    const subs: Sub[] = [];
    for (let i = 0; i < nsubs; i++) {
      const o = i * SIZE_SUBSCRIPTION;
      const userdata = v.getBigUint64(o, true);
      const type = v.getUint8(o + 8);
      if (type === EVENTTYPE.CLOCK) {
        const id = v.getUint32(o + 16, true);
        const timeout = v.getBigUint64(o + 24, true);
        const abs = (v.getUint16(o + 40, true) & SUBCLOCKFLAGS_ABSTIME) !== 0;
        // Every deadline is kept on the guest monotonic clock (cputime clocks are treated as monotonic).
        let deadline: bigint;
        if (!abs) deadline = now + timeout;
        else if (id === CLOCK.REALTIME) deadline = now + (timeout - this.clocks.realtimeNs());
        else if (id === CLOCK.MONOTONIC) deadline = timeout;
        else deadline = now + (timeout - this.clocks.now(id));
        subs.push({ userdata, type, fd: -1, deadline });
      } else if (type === EVENTTYPE.FD_READ || type === EVENTTYPE.FD_WRITE) {
        subs.push({ userdata, type, fd: v.getUint32(o + 16, true), deadline: 0n });
      } else throw new WasiErrno(ERRNO.INVAL);
    }
    const clockDeadlines = subs.filter((s) => s.type === EVENTTYPE.CLOCK).map((s) => s.deadline);
    let earliest: bigint | null = clockDeadlines.length === 0 ? null : clockDeadlines.reduce((a, b) => (a < b ? a : b));
    if (resumed !== null && earliest !== null) {
      // Shift every clock subscription back by the time already waited before the pause.
      const shift = earliest - resumed;
      for (const s of subs) if (s.type === EVENTTYPE.CLOCK) s.deadline -= shift;
      earliest = resumed;
    }

    for (;;) {
      const events: { sub: Sub; error: number; nbytes: bigint; hangup: boolean }[] = [];
      const t = this.clocks.monotonicNs();
      // Sockets are asked with one poll() for all of them; pipes and stdin through the host's hook.
      const waitSubs: Sub[] = [];
      const waitFds: number[] = [];
      const waitEvents: number[] = [];
      let waitPipe: Descriptor | null = null;
      for (const s of subs) {
        if (s.type === EVENTTYPE.CLOCK) {
          if (t >= s.deadline) events.push({ sub: s, error: 0, nbytes: 0n, hangup: false });
          continue;
        }
        let d: Descriptor;
        try {
          d = this.table.get(s.fd);
        } catch {
          events.push({ sub: s, error: ERRNO.BADF, nbytes: 0n, hangup: false });
          continue;
        }
        if (d.socket !== undefined) {
          if (d.hostFd < 0) events.push({ sub: s, error: 0, nbytes: 0n, hangup: true }); // reset by a restore
          else {
            waitSubs.push(s);
            waitFds.push(d.hostFd);
            waitEvents.push(s.type === EVENTTYPE.FD_READ ? POLLIN : POLLOUT);
          }
        } else if (s.type === EVENTTYPE.FD_WRITE) events.push({ sub: s, error: 0, nbytes: 0n, hangup: false });
        else if (!d.stream && d.root !== null) {
          const size = d.kind === 'file' ? BigInt(fs.fstatSync(d.hostFd).size) - BigInt(d.offset) : 0n;
          events.push({ sub: s, error: 0, nbytes: size > 0n ? size : 0n, hangup: false });
        } else if (this.readable(d, 0)) events.push({ sub: s, error: 0, nbytes: 1n, hangup: false });
        else waitPipe ??= d;
      }
      if (waitFds.length > 0) {
        const rev = poll(waitFds, waitEvents, 0);
        rev.forEach((r, i) => {
          if ((r & (waitEvents[i]! | POLLHUP | POLLERR)) === 0) return;
          events.push({ sub: waitSubs[i]!, error: 0, nbytes: r & waitEvents[i]! ? 1n : 0n, hangup: (r & POLLHUP) !== 0 });
        });
      }
      if (events.length > 0) {
        this.pendingPoll = null;
        events.forEach((e, i) => {
          const at = outPtr + i * SIZE_EVENT;
          m.zero(at, SIZE_EVENT);
          m.setU64(at, e.sub.userdata);
          m.setU16(at + 8, e.error);
          m.setU8(at + 10, e.sub.type);
          m.setU64(at + 16, e.nbytes);
          if (e.hangup) m.setU16(at + 24, EVENTRWFLAGS_HANGUP);
        });
        m.setU32(neventsPtr, events.length);
        return 0;
      }
      if (this.hooks.pauseRequested()) {
        if (earliest !== null) this.pendingPoll = { subscriptions: key, deadlineNs: earliest };
        this.hooks.unwind();
        return 0;
      }
      const remainingMs = earliest === null ? -1 : Math.max(0, Number(earliest - t) / 1e6);
      const slice = Math.min(WAIT_SLICE_MS, remainingMs < 0 ? WAIT_SLICE_MS : remainingMs);
      if (waitFds.length > 0) {
        // With a pipe in the set as well, wait on the sockets for one slice only, then look at the pipe again.
        const sockMs = waitPipe !== null ? Math.ceil(slice) : remainingMs < 0 ? -1 : Math.ceil(remainingMs);
        this.waitFds(waitFds, waitEvents, sockMs);
      } else if (waitPipe !== null) this.readable(waitPipe, Math.ceil(slice));
      else this.sleepMs(slice);
    }
  }
}
