// Socket options Node does not expose for TCP sockets: the kernel buffer sizes, and TCP_INFO.
import type { Socket } from 'node:net';
import { K, native } from './native.js';
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
