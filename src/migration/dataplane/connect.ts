// The source's end of a native data plane connection: plain TCP to the destination's migration
// port, the one-byte DATAPLANE_PREFACE, and the descriptor taken from Node before anything is read.
// The connection is authenticated later by the native threads' FINISHED frames, whose keys come
// from the session's TLS exporter (keys.ts): a peer without the session's TLS keys cannot pass.
import net from 'node:net';
import { DATAPLANE_PREFACE } from '../wire/limits.js';
import { TransportError, fromSocketError } from '../transport/errors.js';
import { close, write } from '../../sys/fd.js';
import { takeSocketFd } from './socket-fd.js';

export const DATAPLANE_FEATURE_ENV = 'FERRY_NATIVE_FAULTS';

/** Whether this process runs the postcopy fault path natively (FERRY_NATIVE_FAULTS=1; off by default). */
export function nativeFaultsEnabled(): boolean {
  return process.env[DATAPLANE_FEATURE_ENV] === '1';
}

export async function connectDataplane(host: string, port: number, timeoutMs = 10_000): Promise<number> {
  const peer = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  const tcp = net.connect({ host, port });
  let timer: NodeJS.Timeout | undefined;
  try {
    await new Promise<void>((resolve, reject) => {
      timer = setTimeout(() => reject(new TransportError('TIMEOUT', peer, `data plane connect did not complete within ${timeoutMs} ms`)), timeoutMs);
      tcp.once('connect', resolve);
      tcp.once('error', (e) => reject(fromSocketError(e, peer, 'connect')));
    });
  } catch (err) {
    tcp.destroy();
    throw err;
  } finally {
    clearTimeout(timer);
  }
  tcp.setNoDelay(true);
  const fd = takeSocketFd(tcp); // nothing was written or read through Node
  try {
    if (write(fd, Buffer.from([DATAPLANE_PREFACE])) !== 1) throw new TransportError('IO', peer, 'could not write the data plane preface');
  } catch (err) {
    try { close(fd); } catch { /* already gone */ }
    throw err;
  }
  return fd;
}
