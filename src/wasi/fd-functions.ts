// The fd_* functions of WASI preview1: reads and writes (streams wait in slices that a pause can
// interrupt; files use positional I/O at the offset Ferry owns), seeks, stat and flags, preopen
// names, directory listings with cookies that mean the same after a move.
import * as fs from 'node:fs';
import { FDFLAGS, FDFLAGS_ALL, PREOPENTYPE_DIR, RIGHTS, SIZE_DIRENT, WHENCE } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';
import { closeHost } from './fd-table.js';
import { encodeUtf8 } from './memory-views.js';
import { isAgain } from './host-fds.js';
import { WAIT_SLICE_MS, type HostFunction } from './options.js';
import type { WasiContext } from './context.js';

export function fdFunctions(c: WasiContext): Record<string, HostFunction> {
  return {
    fd_advise: (fd: number) => { c.fileOf(fd); return 0; },
    fd_allocate: (fd: number, offset: bigint, len: bigint) => {
      const d = c.fileOf(fd);
      c.need(d, RIGHTS.FD_ALLOCATE);
      const end = offset + len;
      if (offset < 0n || len <= 0n) throw new WasiErrno(ERRNO.INVAL);
      if (BigInt(fs.fstatSync(d.hostFd).size) < end) fs.ftruncateSync(d.hostFd, Number(end));
      return 0;
    },
    fd_close: (fd: number) => {
      const d = c.table.get(fd);
      closeHost(d);
      c.table.delete(fd);
      return 0;
    },
    fd_datasync: (fd: number) => { fs.fdatasyncSync(c.table.get(fd).hostFd); return 0; },
    fd_sync: (fd: number) => { fs.fsyncSync(c.table.get(fd).hostFd); return 0; },
    fd_fdstat_get: (fd: number, out: number) => {
      const d = c.table.get(fd);
      const m = c.m();
      m.zero(out, 24);
      m.setU8(out, d.filetype);
      m.setU16(out + 2, d.fdflags);
      m.setU64(out + 8, d.rightsBase);
      m.setU64(out + 16, d.rightsInheriting);
      return 0;
    },
    fd_fdstat_set_flags: (fd: number, flags: number) => {
      const d = c.table.get(fd);
      if (flags & ~FDFLAGS_ALL) throw new WasiErrno(ERRNO.INVAL);
      // APPEND and NONBLOCK are ours (emulated); sync flags only take effect on the next open (restore).
      d.fdflags = flags;
      return 0;
    },
    fd_fdstat_set_rights: (fd: number, base: bigint, inheriting: bigint) => {
      const d = c.table.get(fd);
      if ((base & ~d.rightsBase) !== 0n || (inheriting & ~d.rightsInheriting) !== 0n) throw new WasiErrno(ERRNO.NOTCAPABLE);
      d.rightsBase = base;
      d.rightsInheriting = inheriting;
      return 0;
    },
    fd_filestat_get: (fd: number, out: number) => {
      c.writeFilestat(out, fs.fstatSync(c.table.get(fd).hostFd, { bigint: true }));
      return 0;
    },
    fd_filestat_set_size: (fd: number, size: bigint) => {
      const d = c.fileOf(fd);
      c.need(d, RIGHTS.FD_FILESTAT_SET_SIZE);
      if (size < 0n) throw new WasiErrno(ERRNO.INVAL);
      fs.ftruncateSync(d.hostFd, Number(size));
      return 0;
    },
    fd_filestat_set_times: (fd: number, atim: bigint, mtim: bigint, flags: number) => {
      const d = c.table.get(fd);
      const [a, mt] = c.times(fs.fstatSync(d.hostFd, { bigint: true }), atim, mtim, flags);
      fs.futimesSync(d.hostFd, a, mt);
      return 0;
    },
    fd_pread: (fd: number, iovs: number, iovsLen: number, offset: bigint, nreadPtr: number) => {
      const d = c.fileOf(fd);
      if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
      c.need(d, RIGHTS.FD_READ);
      const views = c.m().iovecs(iovs, iovsLen);
      const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views, Number(offset));
      c.m().setU32(nreadPtr, n);
      return 0;
    },
    fd_pwrite: (fd: number, iovs: number, iovsLen: number, offset: bigint, nwrittenPtr: number) => {
      const d = c.fileOf(fd);
      if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
      c.need(d, RIGHTS.FD_WRITE);
      const views = c.m().iovecs(iovs, iovsLen);
      const n = views.length === 0 ? 0 : fs.writevSync(d.hostFd, views, Number(offset));
      c.m().setU32(nwrittenPtr, n);
      return 0;
    },
    fd_prestat_get: (fd: number, out: number) => {
      const d = c.table.get(fd);
      if (d.kind !== 'preopen' || d.root === null) throw new WasiErrno(ERRNO.BADF);
      const m = c.m();
      m.zero(out, 8);
      m.setU8(out, PREOPENTYPE_DIR);
      m.setU32(out + 4, encodeUtf8(d.root.guestPath).length);
      return 0;
    },
    fd_prestat_dir_name: (fd: number, ptr: number, len: number) => {
      const d = c.table.get(fd);
      if (d.kind !== 'preopen' || d.root === null) throw new WasiErrno(ERRNO.BADF);
      const name = encodeUtf8(d.root.guestPath);
      if (len < name.length) throw new WasiErrno(ERRNO.NAMETOOLONG);
      c.m().write(ptr, name);
      return 0;
    },
    fd_read: (fd: number, iovs: number, iovsLen: number, nreadPtr: number) => fdRead(c, fd, iovs, iovsLen, nreadPtr),
    fd_write: (fd: number, iovs: number, iovsLen: number, nwrittenPtr: number) => fdWrite(c, fd, iovs, iovsLen, nwrittenPtr),
    fd_readdir: (fd: number, buf: number, bufLen: number, cookie: bigint, bufusedPtr: number) => fdReaddir(c, fd, buf, bufLen, cookie, bufusedPtr),
    fd_renumber: (from: number, to: number) => {
      const d = c.table.get(from);
      const target = c.table.get(to);
      if (from === to) return 0;
      closeHost(target);
      c.table.set(to, d);
      c.table.delete(from);
      return 0;
    },
    fd_seek: (fd: number, offset: bigint, whence: number, newOffsetPtr: number) => {
      const d = c.fileOf(fd);
      if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
      c.need(d, offset === 0n && whence === WHENCE.CUR ? RIGHTS.FD_TELL | RIGHTS.FD_SEEK : RIGHTS.FD_SEEK);
      let base: bigint;
      if (whence === WHENCE.SET) base = 0n;
      else if (whence === WHENCE.CUR) base = BigInt(d.offset);
      else if (whence === WHENCE.END) base = BigInt(fs.fstatSync(d.hostFd).size);
      else throw new WasiErrno(ERRNO.INVAL);
      const next = base + offset;
      if (next < 0n || next > BigInt(Number.MAX_SAFE_INTEGER)) throw new WasiErrno(ERRNO.INVAL);
      d.offset = Number(next);
      c.m().setU64(newOffsetPtr, next);
      return 0;
    },
    fd_tell: (fd: number, out: number) => {
      const d = c.fileOf(fd);
      if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
      c.m().setU64(out, BigInt(d.offset));
      return 0;
    },
  };
}

function fdRead(c: WasiContext, fd: number, iovs: number, iovsLen: number, nreadPtr: number): number {
  const d = c.fileOf(fd);
  if (!d.read) throw new WasiErrno(ERRNO.BADF);
  c.need(d, RIGHTS.FD_READ);
  if (d.stream || d.root === null) {
    // Stream: may block. Wait in slices, checking for a pause; nothing is consumed before data is ready,
    // so returning early for a pause and being re-entered later is exact.
    for (;;) {
      if (c.readable(d, d.fdflags & FDFLAGS.NONBLOCK ? 0 : WAIT_SLICE_MS)) {
        try {
          const views = c.m().iovecs(iovs, iovsLen);
          const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views);
          c.m().setU32(nreadPtr, n);
          return 0;
        } catch (err) {
          if (!isAgain(err)) throw err;
        }
      }
      if (d.fdflags & FDFLAGS.NONBLOCK) throw new WasiErrno(ERRNO.AGAIN);
      if (c.hooks.pauseRequested()) {
        c.hooks.unwind();
        return 0;
      }
      if (c.hooks.waitReadable === undefined) c.sleepMs(1); // host fd is O_NONBLOCK and empty
    }
  }
  const views = c.m().iovecs(iovs, iovsLen);
  const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views, d.offset);
  d.offset += n;
  c.m().setU32(nreadPtr, n);
  return 0;
}

function fdWrite(c: WasiContext, fd: number, iovs: number, iovsLen: number, nwrittenPtr: number): number {
  const d = c.fileOf(fd);
  if (!d.write) throw new WasiErrno(ERRNO.BADF);
  c.need(d, RIGHTS.FD_WRITE);
  const views = c.m().iovecs(iovs, iovsLen);
  if (views.length === 0) {
    c.m().setU32(nwrittenPtr, 0);
    return 0;
  }
  if (d.stream || d.root === null) {
    // Stdio and pipes: kernel position. An O_NONBLOCK host fd (Node makes some pipes so) is retried.
    for (;;) {
      try {
        c.m().setU32(nwrittenPtr, fs.writevSync(d.hostFd, views));
        return 0;
      } catch (err) {
        if (!isAgain(err)) throw err;
        c.sleepMs(1);
      }
    }
  }
  const at = d.fdflags & FDFLAGS.APPEND ? fs.fstatSync(d.hostFd).size : d.offset;
  const n = fs.writevSync(d.hostFd, views, at);
  d.offset = at + n;
  c.m().setU32(nwrittenPtr, n);
  return 0;
}

function fdReaddir(c: WasiContext, fd: number, buf: number, bufLen: number, cookie: bigint, bufusedPtr: number): number {
  const d = c.dirOf(fd);
  c.need(d, RIGHTS.FD_READDIR);
  if (cookie === 0n || d.listing === undefined) d.listing = c.listing(d);
  const m = c.m();
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
