// Socket options Node does not expose for TCP sockets: the kernel buffer sizes, and TCP_INFO.
import type { Socket } from 'node:net';
import { K, native, type Bytes } from './native.js';
import { sys } from './errors.js';

export const SO_SNDBUF = K('SO_SNDBUF');
export const SO_RCVBUF = K('SO_RCVBUF');

/** The fd under a connected net.Socket (Node keeps it on its libuv handle), or null. */
export function socketFd(socket: Socket): number | null {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/** Sets SO_SNDBUF/SO_RCVBUF (bytes; the kernel doubles it for bookkeeping). */
export function setSocketBuffer(socket: Socket, option: number, bytes: number): boolean {
  const fd = socketFd(socket);
  if (fd === null) return false;
  sys(() => native.setsockoptInt(fd, option, bytes));
  return true;
}

/** What TCP_INFO says of a connection's path (the fields Ferry uses; see linux/tcp.h). */
export interface TcpPathInfo {
  /** The receiver's round-trip estimate (what receive-buffer autotuning uses), µs; 0 until measured. */
  rcvRttUs: number;
}

const TCP_INFO_BYTES = 232;
/** Offset in struct tcp_info (linux/tcp.h, stable since 4.x) of tcpi_rcv_rtt, a u32. */
const TCPI_RCV_RTT = 92;

/** TCP_INFO of a connected socket, or null if it has no descriptor (closed) or the kernel is too old. */
export function tcpPathInfo(socket: Socket): TcpPathInfo | null {
  const fd = socketFd(socket);
  if (fd === null) return null;
  const buf = new Uint8Array(TCP_INFO_BYTES);
  const got = sys(() => native.tcpInfo(fd, buf));
  if (got < TCPI_RCV_RTT + 4) return null;
  const v = new DataView(buf.buffer);
  return { rcvRttUs: v.getUint32(TCPI_RCV_RTT, true) };
}

// ---- TCP sockets a guest uses (listeners from `--listen`, the connections it accepts) ----

export const MSG_PEEK = K('MSG_PEEK');
export const MSG_WAITALL = K('MSG_WAITALL');
export const SHUT_RD = K('SHUT_RD');
export const SHUT_WR = K('SHUT_WR');
export const SHUT_RDWR = K('SHUT_RDWR');
export const POLLRDHUP = K('POLLRDHUP');

export interface SockAddress { family: 4 | 6; address: string; port: number }

/** Opens a listening TCP socket (non-blocking, close-on-exec, SO_REUSEADDR) on a numeric address. */
export function tcpListen(family: 4 | 6, address: string, port: number, backlog = 511, freebind = false): number {
  return sys(() => native.tcpListen(family, address, port, backlog, freebind));
}

/** The local (peer false) or remote (peer true) address of a socket. */
export function sockAddress(fd: number, peer = false): SockAddress {
  return sys(() => native.sockAddress(fd, peer));
}

/** The next waiting connection as a non-blocking fd; throws SysError EAGAIN when none waits. */
export function accept(fd: number): number {
  return sys(() => native.accept(fd));
}

export function recvmsg(fd: number, views: Bytes[], flags = 0): number {
  return sys(() => native.recvmsg(fd, views, flags));
}

/** Never raises SIGPIPE: a closed peer is an EPIPE error. */
export function sendmsg(fd: number, views: Bytes[], flags = 0): number {
  return sys(() => native.sendmsg(fd, views, flags));
}

export function shutdown(fd: number, how: number): void {
  sys(() => native.shutdown(fd, how));
}

/** SO_LINGER; (true, 0) makes the next close() abort the connection with a reset. */
export function setLinger(fd: number, on: boolean, seconds: number): void {
  sys(() => native.setLinger(fd, on, seconds));
}

/** The socket's pending error number (SO_ERROR, cleared by the read), 0 for none. */
export function socketError(fd: number): number {
  return sys(() => native.socketError(fd));
}
