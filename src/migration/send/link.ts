// The source's two connections to one destination — bulk on this thread, urgent on a thread of its
// own (urgent/channel.ts) — kept across reconnections: opening them (the urgent one with a few
// retries), the SETUP handshake, the PING barrier, one reconnection attempt after a cut, and the
// bytes both carried over every connection of the migration. Every source (a live guest, a
// snapshot) talks to its destination through this.
import { connect, newSessionId, type FramedChannel, type Security } from '../transport/index.js';
import type { MessageOf, ReceivedSet } from '../wire/index.js';
import { sendBlob } from '../session/bulk-messages.js';
import { MigrationError } from '../session/report.js';
import { UrgentChannel } from './urgent/channel.js';
import type { PageReaderSpec } from './page-provider.js';
import { Feature } from '../wire/index.js';
import { connectDataplane, nativeBulkEnabled } from '../dataplane/connect.js';
import { dataplaneSecret } from '../dataplane/keys.js';
import { close as closeFd, dup } from '../../sys/fd.js';
import type { AnswerLink } from './postcopy-source.js';

/** Attempts at the urgent channel (and the data plane connection) before the migration fails, and the wait after the first. */
const URGENT_OPEN_ATTEMPTS = 3;
const URGENT_RETRY_MS = 100;

export interface LinkTarget {
  host: string;
  port: number;
  security: Security;
}

export interface LinkOptions {
  /** Feature bits offered in HELLO. */
  features: number;
  /** Bytes/s cap on the bulk channel. */
  maxBandwidth?: number | undefined;
  /** The pages the urgent thread answers from, and how many there can be. */
  pages: PageReaderSpec;
  maxPages: number;
  /** A step worth a line in the phase trace. */
  note: (what: string) => void;
  /** True once the migration is cancelled: no more retries. */
  cancelled: () => boolean;
}

export type SetupFields = Omit<MessageOf<'SETUP'>, 'type'>;

export class SourceLink {
  readonly sessionId = newSessionId();
  bulk: FramedChannel | null = null;
  urgent: UrgentChannel | null = null;
  /** The urgent channel's opening, from open() until urgentReady(). */
  private urgentOpening: Promise<UrgentChannel> | null = null;
  private priorBytesSent = 0;
  private priorBytesReceived = 0;
  /**
   * Bytes the native answer thread carried over every data plane connection (set by whoever runs
   * it): counted in bytesSent()/bytesReceived(), and never folded into the priors below, because
   * the thread's owner keeps its own total across reconnections.
   */
  dataplaneBytes: () => { sent: number; received: number } = () => ({ sent: 0, received: 0 });
  /** Bytes of the native precopy stream on the data plane connection (set while it runs, kept after). */
  precopyBytes: () => { sent: number; received: number } = () => ({ sent: 0, received: 0 });
  /** The native data plane connection (Feature.NATIVE_FAULTS) until takeAnswerLink() hands it on; -1: none. */
  private dataplaneFd = -1;

  constructor(
    public target: LinkTarget,
    private readonly opts: LinkOptions,
  ) {}

  /**
   * Connects the bulk channel and starts the urgent one. The urgent channel starts a thread of its
   * own, tens of ms: the stream starts on the bulk channel without it (urgentReady() waits for it).
   * Until then a failed attempt is tried again; if the last one fails, the bulk channel is ended
   * with its error, so the migration stops at once.
   */
  async open(): Promise<FramedChannel> {
    const opening = (this.urgentOpening = this.openUrgent());
    let urgentFailure: Error | null = null;
    opening.catch((err: Error) => {
      urgentFailure = err;
      this.bulk?.destroy(err);
    });
    this.bulk = await connect({ ...this.common(), channel: 'bulk', maxBandwidth: this.opts.maxBandwidth });
    this.opts.note('(bulk connected)');
    if (urgentFailure) throw urgentFailure;
    // Small control frames (STATE, COMMIT, PING) must not wait for a delayed ACK (Nagle).
    this.bulk.setNoDelay(true);
    // The native fault path, when both sides run it: its connection opens now, its threads start at the commit.
    await this.openDataplane(this.bulk);
    return this.bulk;
  }

  /** The urgent channel, once open (needed from the switchover on). */
  async urgentReady(): Promise<UrgentChannel> {
    this.urgent ??= await this.urgentOpening!;
    return this.urgent;
  }

  /** SETUP → SETUP_ACK, then the module if the destination does not have it. */
  async handshake(setup: SetupFields, moduleSource: Uint8Array): Promise<void> {
    const bulk = this.bulk!;
    await bulk.sendMessage({ type: 'SETUP', ...setup });
    const ack = await bulk.expect('SETUP_ACK', 30_000);
    if (ack.needModule) await sendBlob(bulk, 'MODULE', moduleSource);
  }

  /** Resolves when the destination has handled everything sent before (PING → PONG). */
  async drainBarrier(): Promise<void> {
    const nonce = (Math.random() * 0xffffffff) >>> 0;
    await this.bulk!.sendMessage({ type: 'PING', nonce });
    const pong = await this.bulk!.expect('PONG', 120_000);
    if (pong.nonce !== nonce) throw new MigrationError('protocol', `PONG ${pong.nonce} does not answer PING ${nonce}`);
  }

  /**
   * One attempt at both channels again, with the same session, after a cut; resolves with the
   * destination's RECEIVED_SET (the pages it holds). The channels are this link's once both are up.
   */
  async reconnect(): Promise<Extract<ReceivedSet, { encoding: 'bitmap' }>> {
    const bulk = await connect({ ...this.common(), channel: 'bulk', maxBandwidth: this.opts.maxBandwidth });
    bulk.setNoDelay(true);
    let urgent: UrgentChannel;
    try {
      urgent = await UrgentChannel.open({ ...this.common(), pages: this.opts.pages, maxPages: this.opts.maxPages });
    } catch (err) {
      bulk.destroy();
      throw err;
    }
    this.bulk = bulk;
    this.urgent = urgent;
    await this.openDataplane(bulk);
    const held = await bulk.expect('RECEIVED_SET', 30_000);
    if (held.set.encoding !== 'bitmap' || held.set.startPage !== 0) throw new MigrationError('protocol', 'RECEIVED_SET must be a bitmap from page 0');
    return held.set;
  }

  /** Ends both channels after a cut, keeping the bytes they carried in the totals. */
  drop(): void {
    this.priorBytesSent += (this.bulk?.bytesSent ?? 0) + (this.urgent?.bytesSent ?? 0);
    this.priorBytesReceived += (this.bulk?.bytesReceived ?? 0) + (this.urgent?.bytesReceived ?? 0);
    this.destroy();
    this.bulk = null;
    this.urgent = null;
  }

  /**
   * The data plane connection with its keys and the pages to answer from, for the native answer
   * thread (null when the fault path is not native). The link no longer owns the connection.
   */
  takeAnswerLink(memory: Uint8Array): AnswerLink | null {
    if (this.dataplaneFd < 0) return null;
    const fd = this.dataplaneFd;
    this.dataplaneFd = -1;
    // The bulk stream goes native too unless turned off; --max-bandwidth caps it there with the thread's own token bucket.
    const bulk = nativeBulkEnabled();
    return { fd, secret: dataplaneSecret(this.bulk!.tlsSocket, this.sessionId), memory, bulk, maxBandwidth: this.opts.maxBandwidth };
  }

  /**
   * For native precopy (Feature.NATIVE_PRECOPY granted): a descriptor of its own (dup) of the data
   * plane connection and the keys' secret; the link keeps the connection for the postcopy threads.
   */
  precopyLink(): { fd: number; secret: Uint8Array } | null {
    const features = this.bulk?.session?.features ?? 0;
    if (this.dataplaneFd < 0 || (features & Feature.NATIVE_PRECOPY) === 0 || (features & Feature.NATIVE_FAULTS) === 0) return null;
    return { fd: dup(this.dataplaneFd), secret: dataplaneSecret(this.bulk!.tlsSocket, this.sessionId) };
  }

  /** Ends both channels now (the urgent one still opening as soon as it opens). */
  destroy(err?: Error): void {
    this.closeDataplane();
    this.bulk?.destroy(err);
    this.urgent?.destroy();
    this.urgentOpening?.then((u) => u.destroy(), () => undefined);
  }

  async close(): Promise<void> {
    this.closeDataplane();
    await this.bulk?.close();
    await this.urgent?.close();
  }

  // Both count every connection of the migration, reconnections and the native data plane included.
  bytesSent(): number {
    return this.priorBytesSent + (this.bulk?.bytesSent ?? 0) + (this.urgent?.bytesSent ?? 0) + this.dataplaneBytes().sent + this.precopyBytes().sent;
  }

  bytesReceived(): number {
    return this.priorBytesReceived + (this.bulk?.bytesReceived ?? 0) + (this.urgent?.bytesReceived ?? 0) + this.dataplaneBytes().received + this.precopyBytes().received;
  }

  /** Opens the data plane connection (key-confirmed at once); a failed attempt is tried again, as the urgent channel's. */
  private async openDataplane(bulk: FramedChannel): Promise<void> {
    this.closeDataplane();
    if (((bulk.session?.features ?? 0) & Feature.NATIVE_FAULTS) === 0) return;
    const key = { secret: dataplaneSecret(bulk.tlsSocket, this.sessionId), sessionId: this.sessionId };
    for (let attempt = 1; ; attempt++) {
      try {
        this.dataplaneFd = await connectDataplane(this.target.host, this.target.port, key);
        return;
      } catch (err) {
        if (attempt >= URGENT_OPEN_ATTEMPTS || this.opts.cancelled()) throw err;
        this.opts.note(`(data plane connection failed: ${(err as Error).message}; trying again)`);
        await new Promise((r) => setTimeout(r, URGENT_RETRY_MS * attempt));
      }
    }
  }

  private closeDataplane(): void {
    if (this.dataplaneFd >= 0) closeFd(this.dataplaneFd);
    this.dataplaneFd = -1;
  }

  private common() {
    const { host, port, security } = this.target;
    return { host, port, security, sessionId: this.sessionId, features: this.opts.features };
  }

  /** Opens the urgent channel; a failed attempt is tried again after a short wait, a few times. */
  private async openUrgent(): Promise<UrgentChannel> {
    for (let attempt = 1; ; attempt++) {
      try {
        const urgent = await UrgentChannel.open({ ...this.common(), pages: this.opts.pages, maxPages: this.opts.maxPages });
        this.opts.note('(urgent channel connected)');
        return urgent;
      } catch (err) {
        if (attempt >= URGENT_OPEN_ATTEMPTS || this.opts.cancelled()) throw err;
        this.opts.note(`(urgent channel failed: ${(err as Error).message}; trying again)`);
        await new Promise((r) => setTimeout(r, URGENT_RETRY_MS * attempt));
      }
    }
  }
}
