// The listening sockets of a guest: opened for `ferry run --listen` (the guest's WASI owns them from
// its launch on), and read back from a captured state for a restored guest.
import { isIP } from 'node:net';
import { GuestError } from './guest-types.js';
import type { ListenSocket } from '../wasi/wasi.js';
import type { GuestState } from '../state/guest-state.js';
import { close as closeFd } from '../sys/fd.js';
import { sockAddress, tcpListen, type SockAddress } from '../sys/socket.js';

/** Opens the listening sockets of `--listen` (numeric addresses; "localhost" means 127.0.0.1). */
export function openListeners(specs: { host: string; port: number }[]): ListenSocket[] {
  const out: ListenSocket[] = [];
  try {
    for (const { host, port } of specs) {
      const address = host === 'localhost' ? '127.0.0.1' : host.replace(/^\[(.*)\]$/, '$1');
      const family = isIP(address);
      if (family !== 4 && family !== 6) throw new GuestError('bad-listen', `listen address ${JSON.stringify(host)} is not a numeric IPv4 or IPv6 address`);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new GuestError('bad-listen', `listen port ${port} is not in 0..65535`);
      let hostFd: number;
      try {
        hostFd = tcpListen(family, address, port);
      } catch (err) {
        throw new GuestError('bad-listen', `cannot listen on ${family === 6 ? `[${address}]` : address}:${port}: ${(err as Error).message}`);
      }
      const bound = sockAddress(hostFd);
      out.push({ hostFd, family, address: bound.address, port: bound.port });
    }
  } catch (err) {
    for (const l of out) closeFd(l.hostFd);
    throw err;
  }
  return out;
}

export function listenersOf(state: GuestState): SockAddress[] {
  return state.wasi.fds.flatMap((f) => (f.kind === 'listener' && f.socket ? [{ family: f.socket.family, address: f.socket.address, port: f.socket.port }] : []));
}
