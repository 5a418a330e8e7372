// Taking a connected TCP socket away from Node for a native thread. The descriptor is duplicated
// and Node's socket destroyed: Node closes its own descriptor only (no FIN: the duplicate keeps the
// connection), and never reads again. Call it before the peer can have sent anything Node might
// have read ahead: the data plane's peer sends nothing until it receives this side's hello.
import type net from 'node:net';
import { dup } from '../../sys/fd.js';

export function takeSocketFd(sock: net.Socket): number {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) throw new Error('internal: no descriptor under the socket');
  const copy = dup(fd);
  sock.destroy();
  return copy;
}
