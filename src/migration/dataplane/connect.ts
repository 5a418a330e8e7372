// The source's end of a native data plane connection: plain TCP to the destination's migration
// port, the one-byte DATAPLANE_PREFACE, and the descriptor taken from Node before anything is read.
// The connection is authenticated later by the native threads' FINISHED frames, whose keys come
// from the session's TLS exporter (keys.ts): a peer without the session's TLS keys cannot pass.
import net from 'node:net';
import { DATAPLANE_PREFACE, GO_AHEAD } from '../wire/limits.js';
import { TransportError, fromSocketError } from '../transport/errors.js';
import { FdWatcher, POLLIN, close, read, write } from '../../sys/fd.js';
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
    // Then nothing until the listener's go-ahead, read here byte-exact (never by Node, which would
    // read ahead into the native hello): a hello sent at once would reach the listener with the
    // preface, where only the preface may be.
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => {
        w.stop();
        reject(new TransportError('TIMEOUT', peer, `no go-ahead on the data plane connection within ${timeoutMs} ms`));
      }, timeoutMs);
      const w = new FdWatcher(fd, POLLIN, () => {
        clearTimeout(t);
        w.stop();
        resolve();
      });
    });
    const b = Buffer.alloc(1);
    const n = read(fd, b, 0, 1);
    if (n !== 1 || b[0] !== GO_AHEAD) throw new TransportError('PROTOCOL', peer, `expected the listener's go-ahead on the data plane connection, got ${n === 1 ? `0x${b[0]!.toString(16)}` : 'the end of the stream'}`);
  } catch (err) {
    try { close(fd); } catch { /* already gone */ }
    throw err;
  }
  return fd;
}
