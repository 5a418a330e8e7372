// The source's part of a socket move (Feature.SOCKETS), inside the downtime: the service address
// given up (and the --on-release hook run), then the paused guest's TCP sockets frozen with
// TCP_REPAIR (src/net/socket-set.ts) and their image handed to the switchover as the SOCKETS blob.
// Before the commit any failure undoes both: the address comes back, the sockets leave repair
// mode with nothing lost (repair mode only held back what they would send), and the guest gets
// back what this side took from its listeners' accept queues. After the commit the guest's fds
// close in repair mode: no FIN, no reset reaches a client.
import type { Guest } from '../../guest/guest.js';
import type { GuestState } from '../../state/guest-state.js';
import { release, type AddressMove } from '../../net/address-hooks.js';
import { encodeSocketSet, FrozenSockets, type HostSocket } from '../../net/socket-set.js';

export class OutgoingSockets {
  private frozen: FrozenSockets | null = null;
  /** The SOCKETS blob, once frozen. */
  bytes: Buffer | null = null;

  private constructor(private undoRelease: (() => void) | null) {}

  /** The service address leaves this host (the guest is paused: nobody answers for it meanwhile). */
  static releaseFirst(move: AddressMove): OutgoingSockets {
    return new OutgoingSockets(move.addresses.length > 0 || move.hook !== undefined ? release(move) : null);
  }

  /** Freezes the sockets of the paused guest whose state is `state`. */
  freeze(guest: Guest, state: GuestState): void {
    const kinds = new Map(state.wasi.fds.map((f) => [f.fd, f]));
    const sockets: Record<number, HostSocket> = {};
    for (const [fd, s] of Object.entries(guest.hostSockets())) sockets[Number(fd)] = { ...s, listening: kinds.get(Number(fd))?.kind === 'listener' };
    this.frozen = FrozenSockets.freeze(sockets, (fd) => {
      const s = kinds.get(fd)?.socket;
      if (s === undefined) throw new Error(`guest fd ${fd} is a live socket the state does not describe`);
      return { family: s.family, address: s.address, port: s.port };
    });
    this.bytes = encodeSocketSet(this.frozen.image);
  }

  /** Counts for the trace. */
  describe(): string {
    if (!this.frozen) return 'none';
    const { listeners, connections } = this.frozen.image;
    const queued = Object.values(listeners).reduce((n, l) => n + l.queued.length, 0);
    return `${Object.keys(listeners).length} listeners (${queued} queued), ${Object.keys(connections).length} connections, ${this.bytes?.length ?? 0} bytes`;
  }

  /** Before the commit, on a failure: the address back, the sockets thawed; what the guest must adopt. */
  rollback(): Record<number, number[]> {
    this.undoRelease?.();
    this.undoRelease = null;
    const taken = this.frozen?.thaw();
    this.frozen = null;
    return taken ? Object.fromEntries(taken) : {};
  }

  /** After the commit: closes what was taken from accept queues (silently, in repair mode). */
  committed(): void {
    this.frozen?.release();
  }
}
