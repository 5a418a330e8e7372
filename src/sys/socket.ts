// Socket options Node does not expose for TCP sockets: only the kernel buffer sizes.
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
