// The state every group of WASI functions shares, and the helpers they all use: the fd table,
// guest memory views, clocks, the embedder's hooks, preopen roots, and the resumable parts of calls
// that unwound for a pause. One per Wasi; the function groups (fd-ops, path-ops, socket-ops, poll,
// process-ops) take it as their first argument.
import * as fs from 'node:fs';
import * as nodePath from 'node:path';
import { FILETYPE, FSTFLAGS, SIZE_FILESTAT } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';
import { GuestClocks } from './clocks.js';
import { FdTable, filetypeOf, type Descriptor, type DirEntry } from './fd-table.js';
import { GuestMemoryViews } from './memory-views.js';
import { joinGuestPath, resolveHostPath, type PreopenRoot } from './paths.js';
import type { StdioBinding, WasiHooks } from './options.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type HostFunction = (...args: any[]) => number | bigint | void;

/** Longest single wait inside a blocking call before we look at pauseRequested() again. */
export const WAIT_SLICE_MS = 10;

export { isAgain } from '../sys/errors.js';

export class WasiContext {
  mem: GuestMemoryViews | null = null;
  /** Preopens by guest path; the order is the one the guest saw. */
  roots = new Map<string, PreopenRoot>();
  preopenOrder: string[] = [];
  readonly table = new FdTable();
  readonly clocks = new GuestClocks();
  exitCode: number | null = null;
  pendingPoll: { subscriptions: string; deadlineNs: bigint } | null = null;
  /**
   * A blocking recv (MSG_WAITALL) or send that had moved some bytes when a pause came: it unwinds,
   * and its re-entry (the same call, same arguments) goes on from `done`. Host-local: a restore
   * elsewhere finds the connection reset anyway.
   */
  partialIo: { fd: number; key: string; done: number } | null = null;
  /** Private target for Atomics.wait: the only way to sleep synchronously on a worker. */
  private readonly sleeper = new Int32Array(new SharedArrayBuffer(4));

  constructor(
    public args: string[],
    public env: Record<string, string>,
    public stdio: StdioBinding,
    readonly hooks: WasiHooks,
  ) {}

  m(): GuestMemoryViews {
    if (this.mem === null) throw new Error('WASI host call before setMemory()');
    return this.mem;
  }

  dirOf(fd: number): Descriptor & { root: PreopenRoot } {
    const d = this.table.get(fd);
    if ((d.kind !== 'preopen' && d.kind !== 'dir') || d.root === null) throw new WasiErrno(ERRNO.NOTDIR);
    return d as Descriptor & { root: PreopenRoot };
  }

  need(d: Descriptor, right: bigint): void {
    if ((d.rightsBase & right) === 0n) throw new WasiErrno(ERRNO.NOTCAPABLE);
  }

  /** Guest path argument → (dir descriptor, path relative to its preopen root). */
  guestPath(fd: number, ptr: number, len: number, right: bigint): { dir: Descriptor & { root: PreopenRoot }; rel: string } {
    const dir = this.dirOf(fd);
    this.need(dir, right);
    return { dir, rel: joinGuestPath(dir.path, this.m().string(ptr, len)) };
  }

  fileOf(fd: number): Descriptor {
    const d = this.table.get(fd);
    if (d.kind === 'preopen' || d.kind === 'dir') throw new WasiErrno(ERRNO.ISDIR);
    return d;
  }

  writeFilestat(ptr: number, st: fs.BigIntStats): void {
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
  times(st: fs.BigIntStats, atim: bigint, mtim: bigint, flags: number): [number, number] {
    if ((flags & FSTFLAGS.ATIM && flags & FSTFLAGS.ATIM_NOW) || (flags & FSTFLAGS.MTIM && flags & FSTFLAGS.MTIM_NOW)) throw new WasiErrno(ERRNO.INVAL);
    const now = Number(this.clocks.realtimeNs()) / 1e9;
    const pick = (set: number, setNow: number, value: bigint, old: bigint): number =>
      flags & setNow ? now : flags & set ? Number(value) / 1e9 : Number(old) / 1e9;
    return [pick(FSTFLAGS.ATIM, FSTFLAGS.ATIM_NOW, atim, st.atimeNs), pick(FSTFLAGS.MTIM, FSTFLAGS.MTIM_NOW, mtim, st.mtimeNs)];
  }

  sleepMs(ms: number): void {
    if (this.hooks.sleep) this.hooks.sleep(Math.max(0, ms));
    else Atomics.wait(this.sleeper, 0, 0, Math.max(0, ms));
  }

  readable(d: Descriptor, timeoutMs: number): boolean {
    if (!d.stream || this.hooks.waitReadable === undefined) return true;
    return this.hooks.waitReadable(d.hostFd, timeoutMs);
  }

  /** Marks open descriptors whose path went away, or moves them along with a rename. */
  pathsChanged(root: PreopenRoot, from: string, to: string | null): void {
    for (const [, d] of this.table.list()) {
      if (d.root !== root || d.detached) continue;
      if (to !== null && d.path === to) d.detached = true; // renamed over: the open file is no longer at its path
      if (d.path === from) {
        if (to === null) d.detached = true;
        else d.path = to;
      } else if (to !== null && d.path.startsWith(from + '/')) d.path = to + d.path.slice(from.length);
    }
  }

  listing(d: Descriptor & { root: PreopenRoot }): DirEntry[] {
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
}
