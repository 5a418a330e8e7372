// Taking a connected TCP socket away from Node for a native thread. The descriptor is duplicated
// and Node's socket destroyed: Node closes its own descriptor only (no FIN: the duplicate keeps the
// connection), and never reads again. Call it before the peer can have sent anything Node might
// have read ahead: the data plane's peer sends nothing until it receives this side's hello.
import type net from 'node:net';
import { close, dup } from '../../sys/fd.js';

export function takeSocketFd(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) throw new Error('internal: no descriptor under the socket');
  const copy = dup(fd);
  sock.destroy();
  return copy;
}

/**
 * Starts a data plane thread on a handed-over socket, which is owned on every path: `build` loads
 * the addon and makes the options, and returns the addon call. If `build` throws, nothing took the
 * socket yet, so it is closed here; from the addon call on the addon owns it (it closes it on each
 * refusal, or when the thread is released), so it is never closed twice.
 */
export function startOwning<T>(sock: number, build: () => () => T): T {
  let start: () => T;
  try {
    start = build();
  } catch (err) {
    try {
      close(sock);
    } catch {
      // not a descriptor after all: nothing leaks, and the build's error is the one to report
    }
    throw err;
  }
  return start();
}
