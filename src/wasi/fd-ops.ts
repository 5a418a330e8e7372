// The WASI functions on descriptors as such (fd_*): reading and writing files, pipes, stdio and
// sockets (the last through socket-ops), seeking, flags, rights, stat, and directory listing. Files
// are read and written at the offset we own (positional I/O), so it is part of the captured state.
import * as fs from 'node:fs';
import { FDFLAGS, FDFLAGS_ALL, FILETYPE, PREOPENTYPE_DIR, RIGHTS, SIZE_DIRENT, SIZE_FILESTAT, WHENCE } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';
import { closeHost } from './fd-table.js';
import { encodeUtf8 } from './memory-views.js';
import { isAgain, WAIT_SLICE_MS, type HostFunction, type WasiContext } from './context.js';
import { sockRecv, sockSend, type SocketDescriptor } from './socket-ops.js';

/** fd_* host functions over `ctx`. */
export function fdFunctions(ctx: WasiContext): Record<string, HostFunction> {
  return {
    fd_advise: (fd: number) => { ctx.fileOf(fd); return 0; },
    fd_allocate: (fd: number, offset: bigint, len: bigint) => {
      const d = ctx.fileOf(fd);
      ctx.need(d, RIGHTS.FD_ALLOCATE);
      const end = offset + len;
      if (offset < 0n || len <= 0n) throw new WasiErrno(ERRNO.INVAL);
      if (BigInt(fs.fstatSync(d.hostFd).size) < end) fs.ftruncateSync(d.hostFd, Number(end));
      return 0;
    },
    fd_close: (fd: number) => {
      const d = ctx.table.get(fd);
      closeHost(d);
      ctx.table.delete(fd);
      return 0;
    },
    fd_datasync: (fd: number) => { fs.fdatasyncSync(ctx.table.get(fd).hostFd); return 0; },
    fd_sync: (fd: number) => { fs.fsyncSync(ctx.table.get(fd).hostFd); return 0; },
    fd_fdstat_get: (fd: number, out: number) => {
      const d = ctx.table.get(fd);
      const m = ctx.m();
      m.zero(out, 24);
      m.setU8(out, d.filetype);
      m.setU16(out + 2, d.fdflags);
      m.setU64(out + 8, d.rightsBase);
      m.setU64(out + 16, d.rightsInheriting);
      return 0;
    },
    fd_fdstat_set_flags: (fd: number, flags: number) => {
      const d = ctx.table.get(fd);
      if (flags & ~FDFLAGS_ALL) throw new WasiErrno(ERRNO.INVAL);
      // APPEND and NONBLOCK are ours (emulated); sync flags only take effect on the next open (restore).
      d.fdflags = flags;
      return 0;
    },
    fd_fdstat_set_rights: (fd: number, base: bigint, inheriting: bigint) => {
      const d = ctx.table.get(fd);
      if ((base & ~d.rightsBase) !== 0n || (inheriting & ~d.rightsInheriting) !== 0n) throw new WasiErrno(ERRNO.NOTCAPABLE);
      d.rightsBase = base;
      d.rightsInheriting = inheriting;
      return 0;
    },
    fd_filestat_get: (fd: number, out: number) => {
      const d = ctx.table.get(fd);
      if (d.hostFd < 0 && d.socket !== undefined) {
        // A connection reset by a restore has no host fd: a socket with nothing else to say.
        ctx.m().zero(out, SIZE_FILESTAT);
        ctx.m().setU8(out + 16, FILETYPE.SOCKET_STREAM);
        return 0;
      }
      ctx.writeFilestat(out, fs.fstatSync(d.hostFd, { bigint: true }));
      return 0;
    },
    fd_filestat_set_size: (fd: number, size: bigint) => {
      const d = ctx.fileOf(fd);
      ctx.need(d, RIGHTS.FD_FILESTAT_SET_SIZE);
      if (size < 0n) throw new WasiErrno(ERRNO.INVAL);
      fs.ftruncateSync(d.hostFd, Number(size));
      return 0;
    },
    fd_filestat_set_times: (fd: number, atim: bigint, mtim: bigint, flags: number) => {
      const d = ctx.table.get(fd);
      const [a, mt] = ctx.times(fs.fstatSync(d.hostFd, { bigint: true }), atim, mtim, flags);
      fs.futimesSync(d.hostFd, a, mt);
      return 0;
    },
    fd_pread: (fd: number, iovs: number, iovsLen: number, offset: bigint, nreadPtr: number) => {
      const d = ctx.fileOf(fd);
      if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
      ctx.need(d, RIGHTS.FD_READ);
      const views = ctx.m().iovecs(iovs, iovsLen);
      const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views, Number(offset));
      ctx.m().setU32(nreadPtr, n);
      return 0;
    },
    fd_pwrite: (fd: number, iovs: number, iovsLen: number, offset: bigint, nwrittenPtr: number) => {
      const d = ctx.fileOf(fd);
      if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
      ctx.need(d, RIGHTS.FD_WRITE);
      const views = ctx.m().iovecs(iovs, iovsLen);
      const n = views.length === 0 ? 0 : fs.writevSync(d.hostFd, views, Number(offset));
      ctx.m().setU32(nwrittenPtr, n);
      return 0;
    },
    fd_prestat_get: (fd: number, out: number) => {
      const d = ctx.table.get(fd);
      if (d.kind !== 'preopen' || d.root === null) throw new WasiErrno(ERRNO.BADF);
      const m = ctx.m();
      m.zero(out, 8);
      m.setU8(out, PREOPENTYPE_DIR);
      m.setU32(out + 4, encodeUtf8(d.root.guestPath).length);
      return 0;
    },
    fd_prestat_dir_name: (fd: number, ptr: number, len: number) => {
      const d = ctx.table.get(fd);
      if (d.kind !== 'preopen' || d.root === null) throw new WasiErrno(ERRNO.BADF);
      const name = encodeUtf8(d.root.guestPath);
      if (len < name.length) throw new WasiErrno(ERRNO.NAMETOOLONG);
      ctx.m().write(ptr, name);
      return 0;
    },
    fd_read: (fd: number, iovs: number, iovsLen: number, nreadPtr: number) => fdRead(ctx, fd, iovs, iovsLen, nreadPtr),
    fd_write: (fd: number, iovs: number, iovsLen: number, nwrittenPtr: number) => fdWrite(ctx, fd, iovs, iovsLen, nwrittenPtr),
    fd_readdir: (fd: number, buf: number, bufLen: number, cookie: bigint, bufusedPtr: number) => fdReaddir(ctx, fd, buf, bufLen, cookie, bufusedPtr),
    fd_renumber: (from: number, to: number) => {
      const d = ctx.table.get(from);
      const target = ctx.table.get(to);
      if (from === to) return 0;
      closeHost(target);
      ctx.table.set(to, d);
      ctx.table.delete(from);
      return 0;
    },
    fd_seek: (fd: number, offset: bigint, whence: number, newOffsetPtr: number) => {
      const d = ctx.fileOf(fd);
      if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
      ctx.need(d, offset === 0n && whence === WHENCE.CUR ? RIGHTS.FD_TELL | RIGHTS.FD_SEEK : RIGHTS.FD_SEEK);
      let base: bigint;
      if (whence === WHENCE.SET) base = 0n;
      else if (whence === WHENCE.CUR) base = BigInt(d.offset);
      else if (whence === WHENCE.END) base = BigInt(fs.fstatSync(d.hostFd).size);
      else throw new WasiErrno(ERRNO.INVAL);
      const next = base + offset;
      if (next < 0n || next > BigInt(Number.MAX_SAFE_INTEGER)) throw new WasiErrno(ERRNO.INVAL);
      d.offset = Number(next);
      ctx.m().setU64(newOffsetPtr, next);
      return 0;
    },
    fd_tell: (fd: number, out: number) => {
      const d = ctx.fileOf(fd);
      if (d.stream || d.root === null) throw new WasiErrno(ERRNO.SPIPE);
      ctx.m().setU64(out, BigInt(d.offset));
      return 0;
    },
  };
}

export function fdRead(ctx: WasiContext, fd: number, iovs: number, iovsLen: number, nreadPtr: number): number {
  const d = ctx.fileOf(fd);
  if (!d.read) throw new WasiErrno(ERRNO.BADF);
  ctx.need(d, RIGHTS.FD_READ);
  if (d.socket !== undefined) {
    const n = sockRecv(ctx, fd, `${iovs} ${iovsLen} 0`, d as SocketDescriptor, ctx.m().iovecs(iovs, iovsLen), false, false);
    if (n !== null) ctx.m().setU32(nreadPtr, n);
    return 0;
  }
  if (d.stream || d.root === null) {
    // Stream: may block. Wait in slices, checking for a pause; nothing is consumed before data is ready,
    // so returning early for a pause and being re-entered later is exact.
    for (;;) {
      if (ctx.readable(d, d.fdflags & FDFLAGS.NONBLOCK ? 0 : WAIT_SLICE_MS)) {
        try {
          const views = ctx.m().iovecs(iovs, iovsLen);
          const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views);
          ctx.m().setU32(nreadPtr, n);
          return 0;
        } catch (err) {
          if (!isAgain(err)) throw err;
        }
      }
      if (d.fdflags & FDFLAGS.NONBLOCK) throw new WasiErrno(ERRNO.AGAIN);
      if (ctx.hooks.pauseRequested()) {
        ctx.hooks.unwind();
        return 0;
      }
      if (ctx.hooks.waitReadable === undefined) ctx.sleepMs(1); // host fd is O_NONBLOCK and empty
    }
  }
  const views = ctx.m().iovecs(iovs, iovsLen);
  const n = views.length === 0 ? 0 : fs.readvSync(d.hostFd, views, d.offset);
  d.offset += n;
  ctx.m().setU32(nreadPtr, n);
  return 0;
}

export function fdWrite(ctx: WasiContext, fd: number, iovs: number, iovsLen: number, nwrittenPtr: number): number {
  const d = ctx.fileOf(fd);
  if (!d.write) throw new WasiErrno(ERRNO.BADF);
  ctx.need(d, RIGHTS.FD_WRITE);
  const views = ctx.m().iovecs(iovs, iovsLen);
  if (views.length === 0) {
    ctx.m().setU32(nwrittenPtr, 0);
    return 0;
  }
  if (d.socket !== undefined) {
    const n = sockSend(ctx, fd, `${iovs} ${iovsLen}`, d as SocketDescriptor, views);
    if (n !== null) ctx.m().setU32(nwrittenPtr, n);
    return 0;
  }
  if (d.stream || d.root === null) {
    // Stdio and pipes: kernel position. An O_NONBLOCK host fd (Node makes some pipes so) is retried.
    for (;;) {
      try {
        ctx.m().setU32(nwrittenPtr, fs.writevSync(d.hostFd, views));
        return 0;
      } catch (err) {
        if (!isAgain(err)) throw err;
        ctx.sleepMs(1);
      }
    }
  }
  const at = d.fdflags & FDFLAGS.APPEND ? fs.fstatSync(d.hostFd).size : d.offset;
  const n = fs.writevSync(d.hostFd, views, at);
  d.offset = at + n;
  ctx.m().setU32(nwrittenPtr, n);
  return 0;
}

export function fdReaddir(ctx: WasiContext, fd: number, buf: number, bufLen: number, cookie: bigint, bufusedPtr: number): number {
  const d = ctx.dirOf(fd);
  ctx.need(d, RIGHTS.FD_READDIR);
  if (cookie === 0n || d.listing === undefined) d.listing = ctx.listing(d);
  const m = ctx.m();
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
