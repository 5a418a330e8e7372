// The destination's connections to its source, kept across reconnections: the bulk channel (on
// this thread), the urgent thread and the session's urgent connection it holds, the native data
// plane connection when the session runs the native fault path, and the bytes all of them carried
// over every connection of the migration. The destination's counterpart of send/link.ts.
import { TransportError, type FramedChannel, type RemoteChannel } from '../transport/index.js';
import type { UrgentRequests } from './urgent/requests.js';
import type { DataplaneLink } from './incoming-memory.js';
import { dataplaneSecret } from '../dataplane/keys.js';
import { close as closeFd } from '../../sys/fd.js';
import { MigrationError } from '../session/report.js';

/** How long after its bulk channel a session's urgent channel (or data plane connection) may take to join, at most. */
export const URGENT_JOIN_MS = 30_000;

export class DestinationLink {
  bulk: FramedChannel | null = null;
  /** The thread that holds the urgent connections (from listen() on). */
  urgentThread: UrgentRequests | null = null;
  /** The session's urgent connection, held by that thread. */
  private urgent: RemoteChannel | null = null;
  /** Until the session's urgent connection has joined: its arrival. */
  private urgentArrival: Promise<void> | null = null;
  private priorBytesReceived = 0;
  private priorBytesSent = 0;
  /** The latest native data plane connection handed over by the listener, not yet in use (-1: none). */
  private dataplaneFd = -1;
  /** The session the kept data plane connection proved itself for (its key confirmation). */
  private dataplaneSession = '';
  private dataplaneArrived: (() => void) | null = null;
  /** The native fault thread's bytes over every data plane connection (set once pages can move). */
  dataplaneBytes: () => { sent: number; received: number } = () => ({ sent: 0, received: 0 });

  /** The session's urgent connection: in use now, or once `arrival` brings it. */
  expectUrgent(urgent: RemoteChannel | FramedChannel | null, arrival: () => Promise<RemoteChannel | FramedChannel>): void {
    if (urgent) this.useUrgent(urgent);
    else {
      this.urgentArrival = arrival().then((u) => this.useUrgent(u));
      this.urgentArrival.catch(() => undefined);
    }
  }

  /**
   * The session's urgent channel is in use. The source opens it before it pauses its guest (and
   * its PING before the pause waits here), so this waits only for a source that never opens it.
   */
  async urgentJoined(peer: string): Promise<void> {
    if (!this.urgentArrival) return;
    try {
      await withTimeout(this.urgentArrival, URGENT_JOIN_MS, peer);
    } catch (err) {
      throw new MigrationError('transport', `the source's urgent channel did not join its session: ${(err as Error).message}`);
    }
    this.urgentArrival = null;
  }

  useUrgent(urgent: RemoteChannel | FramedChannel): void {
    if (!('remote' in urgent)) throw new Error('internal: the urgent channel was not handed to the urgent thread');
    this.urgent = urgent;
    this.urgentThread!.use(urgent);
  }

  /**
   * A data plane connection arrived, its key confirmation passed in the listener (bound to a
   * session whose bulk channel was authenticated there; its native thread checks the keys again
   * with FINISHED frames): the newest replaces an unused older one.
   */
  onDataplane(fd: number, sessionHex: string): void {
    // Once this side has its session, another session's connection never replaces its own.
    const mine = this.bulk?.session?.sessionHex;
    if (mine !== undefined && sessionHex !== mine) {
      closeFd(fd);
      return;
    }
    if (this.dataplaneFd >= 0) closeFd(this.dataplaneFd);
    this.dataplaneFd = fd;
    this.dataplaneSession = sessionHex;
    this.dataplaneArrived?.();
  }

  /** The data plane connection for the session on `bulk`, with its keys: waits for it to arrive. */
  async takeDataplane(bulk: FramedChannel): Promise<DataplaneLink> {
    const session = bulk.session!.sessionHex;
    // Another session's connection (one that proved itself for a source refused since) is no use.
    if (this.dataplaneFd >= 0 && this.dataplaneSession !== session) this.dropDataplane();
    if (this.dataplaneFd < 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve, reject) => {
        this.dataplaneArrived = () => {
          if (this.dataplaneSession === session) resolve();
          else this.dropDataplane();
        };
        timer = setTimeout(() => reject(new MigrationError('transport', `the source's native data plane connection did not arrive within ${URGENT_JOIN_MS / 1000} s`)), URGENT_JOIN_MS);
      }).finally(() => {
        clearTimeout(timer);
        this.dataplaneArrived = null;
      });
    }
    const fd = this.dataplaneFd;
    this.dataplaneFd = -1;
    return { fd, secret: dataplaneSecret(bulk.tlsSocket, bulk.session!.sessionId) };
  }

  dropDataplane(): void {
    if (this.dataplaneFd >= 0) closeFd(this.dataplaneFd);
    this.dataplaneFd = -1;
  }

  /** The connections are lost: count what they carried, and close them. */
  lose(): void {
    // The urgent thread counts its own bytes, over all its connections.
    this.priorBytesReceived += this.bulk?.bytesReceived ?? 0;
    this.priorBytesSent += this.bulk?.bytesSent ?? 0;
    this.destroy();
  }

  destroy(): void {
    this.bulk?.destroy();
    this.urgent?.destroy();
  }

  get bytesReceived(): number {
    return this.priorBytesReceived + (this.bulk?.bytesReceived ?? 0) + (this.urgentThread?.bytesReceived ?? 0) + this.dataplaneBytes().received;
  }

  get bytesSent(): number {
    return this.priorBytesSent + (this.bulk?.bytesSent ?? 0) + (this.urgentThread?.bytesSent ?? 0) + this.dataplaneBytes().sent;
  }
}

export function withTimeout<T>(p: Promise<T>, ms: number, peer: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new TransportError('TIMEOUT', peer, `no answer within ${ms} ms`)), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
