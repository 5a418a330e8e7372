// After the commit: the rest of the pages (postcopy: the bulk stream, and the faults the urgent
// thread or the native fault thread serve), then the closing figures — FAULT_STATS, DIGEST, DONE —
// and the source's DONE. Postcopy survives broken connections: the guest keeps running (it blocks
// only on pages still missing) while this side waits for the source to reconnect with the same
// session, tells it which pages it holds, and asks again for the pages its faults wait on.
import type { MigrationListener } from '../transport/index.js';
import { TransportError } from '../transport/index.js';
import { WireError, type Message } from '../wire/index.js';
import type { PageDigest } from '../verify/digest.js';
import type { IncomingMemory } from './incoming-memory.js';
import { withTimeout, type DestinationLink } from './link.js';
import { isChannelFailure } from '../session/failures.js';
import type { PhaseLog } from '../session/phases.js';
import { MigrationError } from '../session/report.js';

/** Silence on both channels, while the guest waits on a page, after which the connection is lost. */
const SILENCE_MS = 10_000;

export interface CompletionContext {
  link: DestinationLink;
  listener: MigrationListener;
  incoming: IncomingMemory;
  phases: PhaseLog;
  /** The session a reconnecting source must come back with. */
  sessionHex: string;
  recoverTimeoutMs: number;
  digest: PageDigest | null;
  pageCount: number;
  /** The error progress reports show (null: none). */
  setError: (text: string | null) => void;
  report: () => void;
}

export class SessionCompletion {
  /** Connections lost and recovered (or being recovered) after the commit. */
  outages = 0;
  private pausedSince: number | null = null;
  private pausedTotalMs = 0;
  /** Every page is placed and the closing messages went out at least once (a loss now costs no page). */
  private closing = false;
  /**
   * Set when this side completed without the source's acknowledgement: every page was placed and
   * DONE sent, the connection was lost, and no source came back within the recovery timeout.
   */
  closingLost: string | null = null;

  constructor(private readonly c: CompletionContext) {}

  /** Time spent waiting for the source to come back, so far. */
  get pausedMs(): number {
    return this.pausedTotalMs + (this.pausedSince === null ? 0 : performance.now() - this.pausedSince);
  }

  /** Returns once every page is placed and the source acknowledged the closing figures. */
  async run(): Promise<void> {
    const postcopy = this.c.incoming.isPostcopy;
    for (;;) {
      try {
        await this.serveSession(postcopy);
        return;
      } catch (err) {
        if (!postcopy || !isChannelFailure(err)) throw err;
        try {
          await this.awaitReconnection(err as Error);
        } catch (gone) {
          if (!this.closing || !(gone instanceof MigrationError)) throw gone;
          // The guest runs here with every page: the migration is complete, whether or not the
          // source saw our closing messages (it stops retrying after its own timeout).
          this.closingLost = `every page was placed and DONE sent, but the source's acknowledgement never came: ${gone.message}`;
          this.c.phases.note(`completed without the source's acknowledgement (${this.closingLost})`);
          this.pausedTotalMs += this.pausedSince === null ? 0 : performance.now() - this.pausedSince;
          this.pausedSince = null;
          this.c.setError(null);
          return;
        }
      }
    }
  }

  /** One connection's worth of postcopy (or just the closing messages): returns when done. */
  private async serveSession(postcopy: boolean): Promise<void> {
    const { link, incoming: pc } = this.c;
    const bulk = link.bulk!;
    // One reader of the bulk channel at a time: the page loop, once every page is placed, hands
    // over the next message (the source's DONE acknowledgement) instead of consuming it.
    let bulkTail: Promise<Message | null> | null = null;
    if (postcopy && pc.pendingPages > 0) {
      const urgent = pc.native ? Promise.race([link.urgentThread!.whenLost(), pc.whenNativeLost()]) : link.urgentThread!.whenLost();
      const bulkPages = (async (): Promise<Message | null> => {
        for (;;) {
          const r = await bulk.recvWithOffset();
          if (!r) throw new WireError('TRUNCATED', bulk.bytesReceived, 'the stream ended during postcopy');
          if (r.msg.type === 'PAGES') pc.onBulkPages(r.msg, r.offset);
          else if (pc.pendingPages === 0) return r.msg;
          else throw new WireError('BAD_ORDER', r.offset, `unexpected ${r.msg.type} during postcopy`);
        }
      })();
      urgent.catch(() => undefined);
      bulkPages.catch(() => undefined);
      const watchdog = this.silenceWatchdog();
      try {
        await Promise.race([pc.complete, urgent, bulkPages, watchdog.failed]);
      } finally {
        watchdog.stop();
      }
      bulkTail = bulkPages;
    }
    // Every page is in place: unregister (known-zero pages not yet touched become ordinary
    // zero-fill memory) and close the account.
    await pc.stop();
    this.closing = pc.pendingPages === 0;
    if (postcopy) {
      const r = pc.report();
      await bulk.sendMessage({
        type: 'FAULT_STATS',
        faults: r.faults,
        pagesRequested: r.pagesRequested,
        pagesPushed: r.pagesPushed,
        latencyUs: r.faultLatencyUs,
        guestBlockedUs: Math.round(r.guestBlockedMs * 1000),
        durationMs: r.durationMs,
      });
    }
    const { digest, pageCount } = this.c;
    if (digest) await bulk.sendMessage({ type: 'DIGEST', pageCount, hex: digest.digestHex(pageCount) });
    await bulk.sendMessage({ type: 'DONE' });
    // Complete only when the source says it got them: a connection cut after our DONE was written
    // but before it arrived must still end in a reconnection, not in a source retrying forever.
    const ack = bulkTail ? await withTimeout(bulkTail, 60_000, bulk.peer) : await bulk.expect('DONE', 60_000);
    if (ack?.type !== 'DONE') throw new WireError('BAD_ORDER', bulk.bytesReceived, `expected the source's DONE, got ${ack?.type ?? 'the end of the stream'}`);
  }

  /**
   * A connection can go silent without closing (a partition, a peer that hangs). While the guest
   * waits on a page, nothing arriving on either channel for SILENCE_MS means the connection is
   * lost: fail it, so recovery reconnects instead of leaving the guest blocked for ever.
   */
  private silenceWatchdog(): { failed: Promise<never>; stop(): void } {
    const { link, incoming: pc } = this.c;
    let fail!: (e: Error) => void;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    failed.catch(() => undefined);
    let last = link.bytesReceived;
    let quietSince = performance.now();
    const timer = setInterval(() => {
      const now = link.bytesReceived;
      if (now !== last || pc.waitingFaults === 0) {
        last = now;
        quietSince = performance.now();
      } else if (performance.now() - quietSince > SILENCE_MS) {
        fail(new TransportError('TIMEOUT', link.bulk?.peer ?? 'source', `nothing received for ${SILENCE_MS / 1000} s while the guest waits on a page`));
      }
    }, 500);
    return { failed, stop: () => clearInterval(timer) };
  }

  /** Waits (up to the recovery timeout) for the source to come back with the same session. */
  private async awaitReconnection(cause: Error): Promise<void> {
    const { link, incoming: pc, phases, pageCount } = this.c;
    phases.enter('postcopy-paused');
    this.pausedSince = performance.now();
    this.outages++;
    this.c.setError(`connection lost: ${cause.message}`);
    // A data plane connection held now came after the commit's was taken: it is the source's
    // reconnection (the source may notice the loss first and be back before this side notices).
    link.lose();
    this.c.report();
    const deadline = performance.now() + this.c.recoverTimeoutMs;
    for (;;) {
      const left = deadline - performance.now();
      if (left <= 0) throw new MigrationError('transport', `the source did not come back within ${Math.round(this.c.recoverTimeoutMs / 1000)} s after: ${cause.message}`);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), left)));
      const session = await Promise.race([this.c.listener.acceptSession(), timeout]).finally(() => clearTimeout(timer));
      if (!session) continue;
      if (session.sessionHex !== this.c.sessionHex) {
        await session.bulk.sendMessage({ type: 'REFUSE', reason: 'this destination is busy with another migration' }).catch(() => undefined);
        session.bulk.destroy();
        session.urgent.destroy();
        continue;
      }
      link.bulk = session.bulk;
      link.bulk.setNoDelay(true);
      let urgentInUse = false;
      try {
        await link.bulk.sendMessage({ type: 'RECEIVED_SET', set: { encoding: 'bitmap', startPage: 0, pageCount, bits: pc.receivedBits(pageCount) } });
        // The urgent thread asks again, on the new connection, for every page a fault still waits on
        // (the native fault thread too, on its new connection).
        link.useUrgent(session.urgent);
        urgentInUse = true;
        if (pc.native) pc.attachDataplane(await link.takeDataplane(link.bulk));
      } catch (err) {
        // A reconnection lost while it is set up (or whose data plane connection never came) is
        // one more loss within the same deadline, not the end of a migration the guest runs on.
        if (!isChannelFailure(err) && !(err instanceof MigrationError)) throw err;
        this.c.setError(`reconnection lost while set up: ${(err as Error).message}`);
        if (!urgentInUse) session.urgent.destroy();
        link.lose();
        continue;
      }
      this.pausedTotalMs += performance.now() - this.pausedSince;
      this.pausedSince = null;
      phases.enter('postcopy');
      this.c.setError(null);
      this.c.report();
      return;
    }
  }
}
