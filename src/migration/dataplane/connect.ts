// The source's end of a native data plane connection: plain TCP to the destination's migration
// port, the one-byte DATAPLANE_PREFACE, and the descriptor taken from Node before anything is read.
// The connection is authenticated at once by key confirmation (confirm.ts): the listener's
// challenge, this side's proof that it holds the session's data plane secret (from the bulk
// channel's TLS exporter, keys.ts), the destination's proof back. Only then is it kept; the native
// threads' FINISHED frames check the keys again at the commit.
import net from 'node:net';
import { DATAPLANE_PREFACE, GO_AHEAD } from '../wire/limits.js';
import { TransportError, fromSocketError } from '../transport/errors.js';
import { close, write } from '../../sys/fd.js';
import { takeSocketFd } from './socket-fd.js';
import { ACCEPTANCE_BYTES, CHALLENGE_BYTES, acceptanceHolds, confirm } from './confirm.js';
import { RawReadError, readExactly } from './raw-read.js';
import { DATAPLANE_FEATURE_ENV, dataplaneEnabled, dataplaneLoadFailure } from '../../sys/dataplane.js';


let fallbackNoted = false;
/**
 * Whether this process runs the postcopy fault path natively: yes unless FERRY_NATIVE_FAULTS=0, or
 * the ferry_dataplane addon cannot be loaded — then the JavaScript path carries the faults (both
 * sides negotiate Feature.NATIVE_FAULTS, so either side falling back is enough), and one line on
 * stderr says why, once per process.
 */
export function nativeFaultsEnabled(): boolean {
  if (process.env[DATAPLANE_FEATURE_ENV] === '0') return false;
  if (dataplaneEnabled()) return true;
  const failure = dataplaneLoadFailure() ?? '';
  if (!fallbackNoted) {
    fallbackNoted = true;
    process.stderr.write(`ferry: native fault path unavailable, using the JavaScript one (${failure.split('\n')[0]})\n`);
  }
  return false;
}

/**
 * Whether the source's native answer thread streams postcopy's bulk too (on the data plane
 * connection, placed by the destination's fault thread): yes unless FERRY_NATIVE_BULK=0. Only the
 * source decides; the destination places whatever pages arrive either way.
 */
export function nativeBulkEnabled(): boolean {
  return process.env['FERRY_NATIVE_BULK'] !== '0';
}

/** What proves this side to the destination: the session's data plane secret and id. */
export interface DataplaneKey {
  secret: Uint8Array;
  sessionId: Uint8Array;
}

/** Pages asked per native fault by default: the demo job's sequential writer faulted a tenth as often as with 1 (docs/design-notes.md 2026-12-05). */
const DEFAULT_FAULT_AROUND = 16;

/**
 * Pages the native fault thread asks for per fault: the faulting page and the pending ones after
 * it (FERRY_FAULT_AROUND, 1..512; default 16, as lazy snapshot restore's).
 */
export function nativeFaultAround(): number {
  const n = Number(process.env['FERRY_FAULT_AROUND'] ?? DEFAULT_FAULT_AROUND);
  return Number.isInteger(n) && n >= 1 && n <= 512 ? n : DEFAULT_FAULT_AROUND;
}

export async function connectDataplane(host: string, port: number, key: DataplaneKey, timeoutMs = 10_000): Promise<number> {
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
    // Then nothing until the listener's go-ahead and challenge, read here byte-exact (never by
    // Node, which would read ahead): only the preface may reach the listener before it answers.
    const ahead = await readRaw(fd, 1 + CHALLENGE_BYTES, timeoutMs, peer, "the listener's go-ahead and challenge");
    if (ahead[0] !== GO_AHEAD) throw new TransportError('PROTOCOL', peer, `expected the listener's go-ahead on the data plane connection, got 0x${ahead[0]!.toString(16)}`);
    const challenge = ahead.subarray(1);
    const mine = confirm(key.secret, key.sessionId, challenge);
    if (write(fd, mine.bytes) !== mine.bytes.length) throw new TransportError('IO', peer, 'short write of the data plane key confirmation');
    const acceptance = await readRaw(fd, ACCEPTANCE_BYTES, timeoutMs, peer, "the destination's key confirmation");
    if (!acceptanceHolds(key.secret, challenge, mine.sourceNonce, acceptance)) {
      throw new TransportError('PROTOCOL', peer, 'the destination failed the data plane key confirmation (it does not hold this session\'s keys)');
    }
  } catch (err) {
    try { close(fd); } catch { /* already gone */ }
    throw err;
  }
  return fd;
}

async function readRaw(fd: number, n: number, timeoutMs: number, peer: string, what: string): Promise<Buffer> {
  try {
    return await readExactly(fd, n, timeoutMs);
  } catch (err) {
    if (!(err instanceof RawReadError)) throw err;
    if (err.reason === 'timeout') throw new TransportError('TIMEOUT', peer, `no ${what} on the data plane connection: ${err.message}`);
    if (err.reason === 'closed') throw new TransportError('CLOSED', peer, `the data plane connection ended before ${what} (refused: the session is unknown there or the key confirmation failed): ${err.message}`);
    throw new TransportError('IO', peer, `reading ${what} on the data plane connection: ${err.message}`);
  }
}
