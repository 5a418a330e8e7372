// Every TCP socket of one guest, moved with TCP_REPAIR: its listeners (re-created listening on the
// same address) with the connections waiting in their accept queues, and its established
// connections (tcp-image.ts for each). The source freezes them (repair mode: they send nothing,
// and a close sends nothing either), the image crosses, the destination re-creates them in repair
// mode and resumes them at the commit. Before the commit the source thaws them instead and the
// guest continues there.
import { dumpTcp, restoreTcp, resumeTcp, type TcpImage } from './tcp-image.js';
import { close as closeFd } from '../sys/fd.js';
import { isAgain } from '../sys/errors.js';
import { accept, tcpListen } from '../sys/socket.js';
import { setRepair } from '../sys/tcp-repair.js';

export const SOCKET_SET_VERSION = 1;

/** A guest socket on this host: its host fd, and for a listener the connections already taken from its queue. */
export interface HostSocket { hostFd: number; accepted: number[]; listening: boolean }

export interface MovedListener {
  family: 4 | 6;
  address: string;
  port: number;
  /** The connections that waited in its accept queue (and those a previous move brought), oldest first. */
  queued: TcpImage[];
}

/** What crosses: by guest fd (JSON as it is; the queues are base64 inside each TcpImage). */
export interface SocketSetImage {
  version: typeof SOCKET_SET_VERSION;
  listeners: Record<number, MovedListener>;
  connections: Record<number, TcpImage>;
}

function closeQuietly(fd: number): void {
  try {
    closeFd(fd);
  } catch {
    // already closed
  }
}


/** The source's side: the guest's sockets frozen in repair mode, and what to do at the end. */
export class FrozenSockets {
  private constructor(
    readonly image: SocketSetImage,
    /** Every fd put in repair mode, guest-owned or taken here from an accept queue. */
    private readonly repaired: number[],
    /** Connections this side took from accept queues (the guest never saw them), by listener guest fd. */
    private readonly taken: Map<number, number[]>,
  ) {}

  /**
   * Freezes the sockets of a paused guest: every connection goes into repair mode and is read, and
   * every listener's accept queue is emptied into repair mode too. On any failure what was frozen
   * is thawed again and the error thrown.
   */
  static freeze(sockets: Record<number, HostSocket>, addressOf: (fd: number) => { family: 4 | 6; address: string; port: number }): FrozenSockets {
    const image: SocketSetImage = { version: SOCKET_SET_VERSION, listeners: {}, connections: {} };
    const frozen = new FrozenSockets(image, [], new Map());
    try {
      for (const [key, s] of Object.entries(sockets)) {
        const fd = Number(key);
        if (!s.listening) {
          image.connections[fd] = frozen.repairAndDump(s.hostFd);
          continue;
        }
        const taken: number[] = [];
        frozen.taken.set(fd, taken);
        for (;;) {
          let conn: number;
          try {
            conn = accept(s.hostFd);
          } catch (err) {
            if (isAgain(err)) break;
            throw err;
          }
          taken.push(conn);
        }
        const queued = [...s.accepted, ...taken].map((c) => frozen.repairAndDump(c));
        image.listeners[fd] = { ...addressOf(fd), queued };
      }
    } catch (err) {
      frozen.thaw();
      throw err;
    }
    return frozen;
  }

  private repairAndDump(fd: number): TcpImage {
    setRepair(fd, 'on');
    this.repaired.push(fd);
    return dumpTcp(fd);
  }

  /**
   * Before the commit, when the migration fails: every connection leaves repair mode and carries on
   * here, nothing lost (repair mode only held back what it would have sent). Returns the
   * connections taken from accept queues, by listener guest fd: the guest must adopt them.
   */
  thaw(): Map<number, number[]> {
    for (const fd of this.repaired.splice(0)) {
      try {
        setRepair(fd, 'off');
      } catch {
        // closed meanwhile: nothing to carry on
      }
    }
    return this.taken;
  }

  /**
   * After the commit: closes what this side took from accept queues (in repair mode: no packet);
   * the guest's own fds close with the guest, silently too while in repair mode.
   */
  release(): void {
    for (const fds of this.taken.values()) for (const fd of fds.splice(0)) closeQuietly(fd);
  }
}

/** The destination's side: the sockets re-created in repair mode, handed to the guest by guest fd. */
export class RestoredSockets {
  private constructor(
    readonly adopted: Record<number, { hostFd: number; accepted: number[] }>,
    private readonly pending: Array<{ fd: number; image: TcpImage }>,
    private readonly listeners: number[],
  ) {}

  /**
   * Re-creates every socket of `image` on this host: listeners listening, connections in repair
   * mode (they send nothing until resume()). The local addresses must be on this host (or
   * net.ipv4.ip_nonlocal_bind set), but those `foreign` accepts, for an address added right
   * after: listeners get IP_FREEBIND, connections IP_TRANSPARENT (until resume()). On a failure everything made so far is closed, silently.
   */
  static restore(image: SocketSetImage, foreign: (address: string) => boolean = () => false): RestoredSockets {
    if (image.version !== SOCKET_SET_VERSION) throw new Error(`socket set version ${String(image.version)} is not ${SOCKET_SET_VERSION}`);
    const made = new RestoredSockets({}, [], []);
    try {
      for (const [key, l] of Object.entries(image.listeners)) {
        const hostFd = tcpListen(l.family, l.address, l.port, 511, foreign(l.address));
        made.listeners.push(hostFd);
        const accepted = l.queued.map((q) => made.connection(q, foreign));
        made.adopted[Number(key)] = { hostFd, accepted };
      }
      for (const [key, c] of Object.entries(image.connections)) made.adopted[Number(key)] = { hostFd: made.connection(c, foreign), accepted: [] };
    } catch (err) {
      made.abort();
      throw err;
    }
    return made;
  }

  private connection(image: TcpImage, foreign: (address: string) => boolean): number {
    const fd = restoreTcp(image, foreign(image.local.address));
    this.pending.push({ fd, image });
    return fd;
  }

  /** At the commit: every connection leaves repair mode (a window probe tells its peer) and queues its unsent bytes. */
  resume(): void {
    for (const { fd, image } of this.pending.splice(0)) resumeTcp(fd, image);
  }

  /** Before the commit, when the migration fails: closes everything (repair mode: no packet reaches a peer). */
  abort(): void {
    for (const { fd } of this.pending.splice(0)) closeQuietly(fd);
    for (const fd of this.listeners.splice(0)) closeQuietly(fd);
  }
}

/** Bytes of a socket set image on the wire (UTF-8 JSON). */
export function encodeSocketSet(image: SocketSetImage): Buffer {
  return Buffer.from(JSON.stringify(image), 'utf8');
}

export function decodeSocketSet(bytes: Uint8Array): SocketSetImage {
  const v = JSON.parse(Buffer.from(bytes).toString('utf8')) as SocketSetImage;
  if (typeof v !== 'object' || v === null || v.version !== SOCKET_SET_VERSION || typeof v.listeners !== 'object' || typeof v.connections !== 'object') {
    throw new Error('not a socket set image of version ' + SOCKET_SET_VERSION);
  }
  return v;
}
