// A source from its COMMIT on: the guest runs (or is about to) on the destination, and this side
// never resumes it. Waits for RUNNING (the end of the downtime, and the destination's choice of
// bulk buffer size), serves postcopy until the destination holds every page, and takes the closing
// figures (FAULT_STATS, DIGEST, DONE). In postcopy a lost connection is not the end: this side
// keeps the pages and reconnects — with backoff, or at once on `ferry migrate --resume` — until
// the destination has them all or the recovery timeout passes.
import type { PageBitmap } from '../../memory/page-bitmap.js';
import type { Security } from '../transport/index.js';
import { isChannelFailure } from '../session/failures.js';
import { MIN_POSTCOPY_BUFFER, clampPostcopyBuffer } from '../session/bulk-buffers.js';
import type { PhaseLog } from '../session/phases.js';
import { MigrationError } from '../session/report.js';
import { PostcopySource } from './postcopy-source.js';
import type { SourceLink } from './link.js';
import type { PageReader } from './page-provider.js';

/**
 * How long a source whose destination already holds every page (FAULT_STATS came) tries to get the
 * rest of the closing messages after a loss, at most: what is left is the digest check, and a
 * destination that completed may be gone (its guest ended, its process with it).
 */
export const CLOSING_RECOVER_S = 30;

export interface AfterCommitOptions {
  link: SourceLink;
  phases: PhaseLog;
  recoverTimeoutS: number;
  /** Something worth a progress report changed. */
  report: () => void;
}

export class AfterCommit {
  postcopy: PostcopySource | null = null;
  /** From the pause to RUNNING (to the reconnection, when the connection was lost before RUNNING). */
  downtimeMs: number | null = null;
  outages = 0;
  errorText: string | null = null;
  private lost: Error | null = null;
  private tPause = 0;
  private pausedSince: number | null = null;
  private pausedTotal = 0;
  private abandoned = false;
  private wake: (() => void) | null = null;
  /**
   * Since when reconnections have brought no page to the destination (null: the last one did).
   * A reconnection that succeeds and is lost again at once, over and over, must not restart the
   * recovery timeout each time: the migration would then never end (seen: a data plane refused
   * on every reconnection, 19 177 outages in 50 minutes).
   */
  private fruitlessSince: number | null = null;
  private lastHeld = -1;
  /**
   * What of the closing exchange was lost after the destination held every page (null: nothing).
   * The migration completed anyway; the report says what could not be confirmed.
   */
  closingLost: string | null = null;
  /** The guest memory the native answer thread reads (null: a source without it, or no native path). */
  private nativeMemory: Uint8Array | null = null;

  constructor(private readonly opts: AfterCommitOptions) {}

  /** Milliseconds spent without a connection after the commit, the current outage included. */
  get pausedMs(): number {
    return Math.round(this.pausedTotal + (this.pausedSince === null ? 0 : performance.now() - this.pausedSince));
  }

  /**
   * Waits for RUNNING: the guest runs on the destination, and the downtime since `tPause` ends.
   * Returns the bulk buffer size the destination chose. In postcopy a connection lost meanwhile is
   * recovered in finish() (the downtime is known then); otherwise it fails the migration.
   */
  async awaitRunning(tPause: number, postcopy: boolean): Promise<{ bufferBytes: number }> {
    this.tPause = tPause;
    try {
      const running = await this.opts.link.bulk!.expect('RUNNING', 60_000);
      this.downtimeMs = performance.now() - tPause;
      return { bufferBytes: clampPostcopyBuffer(running.bulkBufferBytes) };
    } catch (err) {
      if (!postcopy || !isChannelFailure(err)) throw err;
      this.lost = err as Error; // the destination may well run the guest: recover, never resume here
      return { bufferBytes: MIN_POSTCOPY_BUFFER };
    }
  }

  /**
   * Postcopy: the destination lacks `pending`, to be read from `pages`. `memory` (a live source's
   * paused guest memory) lets the native answer thread serve faults when both sides run it.
   */
  startPostcopy(pages: PageReader, pending: PageBitmap, pageCount: number, bufferBytes: number, memory: Uint8Array | null = null): void {
    const { link } = this.opts;
    this.nativeMemory = memory;
    const native = memory ? link.takeAnswerLink(memory) : null;
    const postcopy = (this.postcopy = new PostcopySource(pages, pending, pageCount, link.bulk!, link.urgent!, bufferBytes, native));
    link.dataplaneBytes = () => postcopy.dataplaneBytes;
    if (native) this.opts.phases.note('postcopy (native answer thread started)');
  }

  /**
   * Serves postcopy (if started) and takes the closing figures; resolves after DONE both ways.
   * `verifyAgainst` is the digest the destination's DIGEST must equal (null: none asked for);
   * `pushed` runs once every pending page is sent.
   */
  async finish(args: { pageCount: number; verifyAgainst: Promise<string> | null; pushed?: () => void }): Promise<{ verified: boolean | null }> {
    const { phases } = this.opts;
    let verified: boolean | null = null;
    // The destination sends FAULT_STATS only once it holds every page, and DONE after DIGEST: from
    // the first, the migration has completed whatever happens to the connections; what a loss can
    // still cost is the digest check and the destination's wait for our acknowledgement.
    let holdsEveryPage = false;
    let destinationDone = false;
    for (;;) {
      try {
        if (this.lost) {
          try {
            await this.reconnect(this.lost, holdsEveryPage ? Math.min(this.opts.recoverTimeoutS, CLOSING_RECOVER_S) : this.opts.recoverTimeoutS);
          } catch (err) {
            if (!holdsEveryPage || this.abandoned || !(err instanceof MigrationError)) throw err;
            // The destination holds every page (it may have ended since: a guest that exits, its
            // process with it): complete, saying what could not be checked.
            this.closingLost = `the destination holds every page (FAULT_STATS came), but its closing ${verified === null && args.verifyAgainst ? 'DIGEST and ' : ''}DONE did not: ${(err as Error).message}`;
            phases.note(`completed without the closing messages (${this.closingLost})`);
            this.errorText = null;
            this.pausedTotal += this.pausedSince === null ? 0 : performance.now() - this.pausedSince;
            this.pausedSince = null;
            this.postcopy?.stopNative();
            return { verified };
          }
          this.lost = null;
          this.downtimeMs ??= performance.now() - this.tPause;
        }
        const bulk = () => this.opts.link.bulk!;
        if (this.postcopy) {
          phases.enter('postcopy');
          await this.postcopy.run();
          args.pushed?.(); // while the destination makes its closing reports
          phases.enter('verifying');
          const st = await bulk().expect('FAULT_STATS', 600_000);
          this.postcopy.setRemoteReport({
            pagesRequested: st.pagesRequested,
            pagesPushed: st.pagesPushed,
            faults: st.faults,
            faultLatencyUs: st.latencyUs,
            guestBlockedMs: Math.round(st.guestBlockedUs / 100) / 10,
            durationMs: st.durationMs,
          });
          holdsEveryPage = true;
        }
        phases.enter('verifying');
        if (args.verifyAgainst) {
          const digestMsg = await bulk().expect('DIGEST', 600_000);
          verified = digestMsg.pageCount === args.pageCount && (await args.verifyAgainst) === digestMsg.hex;
        }
        await bulk().expect('DONE', 60_000);
        destinationDone = true;
        this.postcopy?.stopNative();
        // Acknowledge: until it sees this, the destination keeps listening for a reconnection
        // (its closing messages may not have reached this side).
        await bulk().sendMessage({ type: 'DONE' });
        return { verified };
      } catch (err) {
        if (!this.postcopy || !isChannelFailure(err)) throw err;
        if (destinationDone) {
          // Everything came; only our acknowledgement did not leave. Reconnecting would find a
          // destination that may have completed and gone: the migration is complete.
          this.closingLost = `the acknowledgement of the destination's DONE could not be sent: ${(err as Error).message}`;
          phases.note(`completed; ${this.closingLost}`);
          this.opts.link.drop();
          return { verified };
        }
        this.lost = err as Error;
      }
    }
  }

  /** Retry now (and, given one, at another address) instead of waiting for the next backoff. */
  resumeNow(to?: { host: string; port: number; security?: Security }): boolean {
    if (this.opts.phases.current !== 'postcopy-paused') return false;
    const { link } = this.opts;
    if (to) link.target = { host: to.host, port: to.port, security: to.security ?? link.target.security };
    this.wake?.();
    return true;
  }

  /** Gives up a migration stuck after its commit point. */
  abandon(): void {
    this.abandoned = true;
    this.wake?.();
    this.postcopy?.stopNative();
    this.opts.link.destroy();
  }

  /**
   * Reconnects both channels with the same session until the recovery timeout, then takes the
   * destination's RECEIVED_SET: the pages it holds are done, every other pending page is sent
   * (again, if the lost connection swallowed it).
   */
  private async reconnect(cause: Error, recoverTimeoutS: number): Promise<void> {
    const { link, phases } = this.opts;
    phases.enter('postcopy-paused');
    this.outages++;
    this.errorText = `connection lost: ${cause.message}`;
    const since = performance.now();
    this.pausedSince = since;
    link.drop();
    this.opts.report();
    this.fruitlessSince ??= since;
    const deadline = this.fruitlessSince + recoverTimeoutS * 1000;
    let delay = 100;
    for (let attempt = 1; ; attempt++) {
      if (this.abandoned) throw new MigrationError('after-commit', 'abandoned by the operator');
      if (performance.now() > deadline) {
        throw new MigrationError('after-commit', `could not reconnect to the destination within ${recoverTimeoutS} s, or no reconnection in that time brought it a page (${this.outages} outages; last error: ${this.errorText})`);
      }
      try {
        const held = await link.reconnect();
        const heldPages = countBits(held.bits, held.pageCount);
        if (heldPages > this.lastHeld) this.fruitlessSince = null; // progress since the last one
        this.lastHeld = heldPages;
        const native = this.nativeMemory ? link.takeAnswerLink(this.nativeMemory) : null;
        this.postcopy?.resume(link.bulk!, link.urgent!, held.bits, held.pageCount, native);
        this.pausedTotal += performance.now() - since;
        this.pausedSince = null;
        this.errorText = null;
        phases.enter('postcopy');
        this.opts.report();
        return;
      } catch (err) {
        if (err instanceof MigrationError) throw err;
        this.errorText = `reconnect attempt ${attempt}: ${(err as Error).message}`;
        link.drop();
        await this.sleepUnlessWoken(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  private sleepUnlessWoken(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = done;
    });
  }
}

/** Set bits among the first `n` of a bitmap (bit p of byte p >> 3). */
function countBits(bits: Uint8Array, n: number): number {
  let c = 0;
  for (let p = 0; p < n; p++) if ((bits[p >>> 3]! & (1 << (p & 7))) !== 0) c++;
  return c;
}
