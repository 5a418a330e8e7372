// The destination's part of a socket move (Feature.SOCKETS): when the SOCKETS blob is whole,
// inside the source's downtime, it is decoded and checked (a malformed one is refused: nothing
// ran), every socket is re-created in repair mode and bound to the service address (IP_FREEBIND
// for listeners, IP_TRANSPARENT for connections: it is not here yet), and only then is the address taken (the --on-acquire hook first) and
// announced: a client's segment that arrived before its socket existed would be answered with a
// reset. The staged guest adopts them. They send
// nothing until resume() at the COMMIT; a failure before it closes them silently and gives the
// address back, and the source carries on with its own.
import { acquire, announce, type AddressMove } from '../../net/address-hooks.js';
import { decodeSocketSet, RestoredSockets, type SocketSetImage } from '../../net/socket-set.js';
import type { AdoptedSockets } from '../../wasi/wasi.js';
import { WireError } from '../wire/index.js';

export class IncomingSockets {
  /** Where the restore's time went (for the switchover trace). */
  timing = '';

  private constructor(
    private readonly restored: RestoredSockets,
    private undoAcquire: (() => void) | null,
  ) {}

  /** `offset`: where the blob ended in the stream (for the error). */
  static restore(bytes: Buffer, move: AddressMove, offset: number): IncomingSockets {
    let image: SocketSetImage;
    try {
      image = decodeSocketSet(bytes);
      checkImage(image);
    } catch (err) {
      throw new WireError('BAD_MESSAGE', offset, `SOCKETS: ${(err as Error).message}`);
    }
    // The built-in mover's addresses are added only once the sockets on them exist (made with
    // IP_FREEBIND / IP_TRANSPARENT): a client's segment (a retransmission, or one sent after an ARP the address
    // answered) that found the address here before its socket would be answered with a reset. A
    // hook alone moves the address its own way, before the sockets, as its name promises.
    const moved = new Set(move.addresses.map((a) => a.address));
    const hookOnly = move.addresses.length === 0 && move.hook !== undefined;
    const t0 = performance.now();
    let undo = hookOnly ? acquire(move) : null;
    const t1 = performance.now();
    let restored: RestoredSockets;
    try {
      restored = RestoredSockets.restore(image, (address) => moved.has(address));
    } catch (err) {
      undo?.();
      throw new Error(`cannot re-create the guest's sockets here: ${(err as Error).message}`);
    }
    const t2 = performance.now();
    try {
      if (moved.size > 0) undo = acquire(move);
      announce(move);
    } catch (err) {
      restored.abort();
      undo?.();
      throw err;
    }
    const made = new IncomingSockets(restored, undo);
    made.timing = `sockets ${(t2 - t1).toFixed(1)} ms, address ${(t1 - t0 + performance.now() - t2).toFixed(1)} ms`;
    return made;
  }

  /** What the staged guest adopts, by guest fd. */
  get adopted(): AdoptedSockets {
    return this.restored.adopted;
  }

  /** At the COMMIT, before the guest runs: the connections leave repair mode. */
  resume(): void {
    this.undoAcquire = null;
    this.restored.resume();
  }

  /** Before the commit, on a failure: the sockets closed without a packet, the address given back. */
  abort(): void {
    this.restored.abort();
    this.undoAcquire?.();
    this.undoAcquire = null;
  }
}

/** The shape a hostile image could get wrong before the kernel sees it: guest fds and their parts. */
function checkImage(image: SocketSetImage): void {
  const fds = [...Object.keys(image.listeners), ...Object.keys(image.connections)];
  for (const k of fds) if (!/^\d{1,9}$/.test(k)) throw new Error(`guest fd ${JSON.stringify(k)} is not a number`);
  if (new Set(fds).size !== fds.length) throw new Error('a guest fd is both a listener and a connection');
  for (const l of Object.values(image.listeners)) {
    if (typeof l !== 'object' || l === null || (l.family !== 4 && l.family !== 6) || typeof l.address !== 'string' || !Number.isInteger(l.port) || !Array.isArray(l.queued)) {
      throw new Error('a listener is malformed');
    }
  }
  for (const c of Object.values(image.connections)) if (typeof c !== 'object' || c === null) throw new Error('a connection is malformed');
}
