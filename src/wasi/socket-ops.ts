// The WASI socket functions (sock_*), and the receive and send that fd_read and fd_write use on a
// socket. Listeners come from the embedder (`--listen`), connections from sock_accept.
// Host sockets are always O_NONBLOCK; the guest's blocking mode is its NONBLOCK fdflag. A blocking
// call waits in poll() beside the wake fd, and unwinds for a pause before it has consumed or sent
// anything, so the re-entry on resume repeats it exactly. A call that has already moved bytes
// returns the partial count instead, as recv/send do when a signal interrupts them.
import { FDFLAGS, RIFLAGS_PEEK, RIFLAGS_WAITALL, RIGHTS, SDFLAGS_RD, SDFLAGS_WR } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';
import type { Descriptor } from './fd-table.js';
import { RIGHTS_SOCKET, socketDescriptor } from './descriptors.js';
import { isAgain, WAIT_SLICE_MS, type HostFunction, type WasiContext } from './context.js';
import { close as closeFd, eventfdDrain, poll, POLLIN, POLLOUT } from '../sys/fd.js';
import { accept, MSG_PEEK, recvmsg, sendmsg, SHUT_RD, SHUT_RDWR, SHUT_WR, shutdown, sockAddress } from '../sys/socket.js';

export type SocketDescriptor = Descriptor & { socket: NonNullable<Descriptor['socket']> };

/** With a wake fd a pause ends the wait at once; this only bounds each wait as a safety net. */
const WAKE_WAIT_MS = 1000;

/** sock_* host functions over `ctx`. */
export function socketFunctions(ctx: WasiContext): Record<string, HostFunction> {
  return {
    sock_accept: (fd: number, flags: number, fdOut: number) => sockAccept(ctx, fd, flags, fdOut),
    sock_recv: (fd: number, iovs: number, iovsLen: number, riFlags: number, datalenOut: number, roFlagsOut: number) => {
      const d = sockOf(ctx, fd);
      ctx.need(d, RIGHTS.FD_READ);
      if (riFlags & ~(RIFLAGS_PEEK | RIFLAGS_WAITALL)) throw new WasiErrno(ERRNO.INVAL);
      const n = sockRecv(ctx, fd, `${iovs} ${iovsLen} ${riFlags}`, d, ctx.m().iovecs(iovs, iovsLen), (riFlags & RIFLAGS_PEEK) !== 0, (riFlags & RIFLAGS_WAITALL) !== 0);
      if (n === null) return 0; // unwound for a pause: re-entered on resume
      ctx.m().setU32(datalenOut, n);
      ctx.m().setU16(roFlagsOut, 0);
      return 0;
    },
    sock_send: (fd: number, iovs: number, iovsLen: number, siFlags: number, datalenOut: number) => {
      const d = sockOf(ctx, fd);
      ctx.need(d, RIGHTS.FD_WRITE);
      if (siFlags !== 0) throw new WasiErrno(ERRNO.INVAL);
      const n = sockSend(ctx, fd, `${iovs} ${iovsLen}`, d, ctx.m().iovecs(iovs, iovsLen));
      if (n === null) return 0;
      ctx.m().setU32(datalenOut, n);
      return 0;
    },
    sock_shutdown: (fd: number, how: number) => {
      const d = sockOf(ctx, fd);
      ctx.need(d, RIGHTS.SOCK_SHUTDOWN);
      const h = how === SDFLAGS_RD ? SHUT_RD : how === SDFLAGS_WR ? SHUT_WR : how === (SDFLAGS_RD | SDFLAGS_WR) ? SHUT_RDWR : -1;
      if (h < 0) throw new WasiErrno(ERRNO.INVAL);
      if (d.hostFd < 0) throw new WasiErrno(ERRNO.NOTCONN);
      shutdown(d.hostFd, h);
      return 0;
    },
  };
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

export function sockOf(ctx: WasiContext, fd: number): SocketDescriptor {
  const d = ctx.table.get(fd);
  if (d.socket === undefined) throw new WasiErrno(ERRNO.NOTSOCK);
  return d as SocketDescriptor;
}

/** A connection a restore reset: ECONNRESET once, then end of stream for reads and EPIPE for writes. */
export function deadSocket(ctx: WasiContext, d: SocketDescriptor, reading: boolean): number {
  if (d.socket.reset === 'pending') {
    d.socket.reset = 'reported';
    throw new WasiErrno(ERRNO.CONNRESET);
  }
  if (reading) return 0;
  throw new WasiErrno(ERRNO.PIPE);
}

/** Waits until one of `fds` is ready, a pause is requested (wake fd) or `timeoutMs` (-1: a slice) passes. */
export function waitFds(ctx: WasiContext, fds: number[], events: number[], timeoutMs: number): void {
  const wake = ctx.hooks.wakeFd;
  if (wake === undefined) {
    poll(fds, events, timeoutMs < 0 ? WAIT_SLICE_MS : Math.min(timeoutMs, WAIT_SLICE_MS));
    return;
  }
  const rev = poll([...fds, wake], [...events, POLLIN], timeoutMs < 0 ? WAKE_WAIT_MS : Math.min(timeoutMs, WAKE_WAIT_MS));
  // A signal left over from a pause that has been resumed would make every wait return at once.
  if (rev[fds.length] !== 0 && !ctx.hooks.pauseRequested()) eventfdDrain(wake);
}

export function sockAccept(ctx: WasiContext, fd: number, flags: number, fdOut: number): number {
  const d = sockOf(ctx, fd);
  ctx.need(d, RIGHTS.SOCK_ACCEPT);
  if (flags & ~FDFLAGS.NONBLOCK) throw new WasiErrno(ERRNO.INVAL);
  if (d.kind !== 'listener') throw new WasiErrno(ERRNO.INVAL);
  for (;;) {
    // Connections a migration brought from the source's accept queue come first, as they came first there.
    let conn = d.pendingAccepts?.shift() ?? -1;
    if (conn < 0) {
      try {
        conn = accept(d.hostFd);
      } catch (err) {
        if (!isAgain(err)) throw err;
      }
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
      ctx.m().setU32(fdOut, ctx.table.add(desc));
      return 0;
    }
    if (d.fdflags & FDFLAGS.NONBLOCK) throw new WasiErrno(ERRNO.AGAIN);
    if (ctx.hooks.pauseRequested()) {
      ctx.hooks.unwind();
      return 0;
    }
    waitFds(ctx, [d.hostFd], [POLLIN], -1);
  }
}

/** A partial call this (re-)entry continues: the bytes it had already moved. */
export function resumePartial(ctx: WasiContext, fd: number, key: string): number {
  const p = ctx.partialIo;
  ctx.partialIo = null;
  return p !== null && p.fd === fd && p.key === key ? p.done : 0;
}

/** Bytes received, or null when it unwound for a pause (what it had received is kept for the re-entry). */
export function sockRecv(ctx: WasiContext, fd: number, key: string, d: SocketDescriptor, views: Uint8Array[], peek: boolean, waitAll: boolean): number | null {
  if (d.kind === 'listener') throw new WasiErrno(ERRNO.NOTCONN);
  if (d.hostFd < 0) return deadSocket(ctx, d, true);
  const size = views.reduce((n, v) => n + v.length, 0);
  if (size === 0) return 0;
  const nonblock = (d.fdflags & FDFLAGS.NONBLOCK) !== 0;
  let total = resumePartial(ctx, fd, `recv ${key}`);
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
    if (ctx.hooks.pauseRequested()) {
      if (total > 0) ctx.partialIo = { fd, key: `recv ${key}`, done: total };
      ctx.hooks.unwind();
      return null;
    }
    waitFds(ctx, [d.hostFd], [POLLIN], -1);
  }
}

/** Bytes sent (all of them unless non-blocking), or null when it unwound for a pause (what it sent is kept for the re-entry). */
export function sockSend(ctx: WasiContext, fd: number, key: string, d: SocketDescriptor, views: Uint8Array[]): number | null {
  if (d.kind === 'listener') throw new WasiErrno(ERRNO.NOTCONN);
  if (d.hostFd < 0) return deadSocket(ctx, d, false);
  const size = views.reduce((n, v) => n + v.length, 0);
  if (size === 0) return 0;
  const nonblock = (d.fdflags & FDFLAGS.NONBLOCK) !== 0;
  let total = resumePartial(ctx, fd, `send ${key}`);
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
    if (ctx.hooks.pauseRequested()) {
      if (total > 0) ctx.partialIo = { fd, key: `send ${key}`, done: total };
      ctx.hooks.unwind();
      return null;
    }
    waitFds(ctx, [d.hostFd], [POLLOUT], -1);
  }
}
