// Precopy, source side: pass 0 over every present page (zero pages as markers, never-touched
// ranges as ranges), then passes of the pages written since the previous one, until the
// convergence decision (convergence.ts) says stop-and-copy, postcopy, or give up.
import { HOST_PAGE_SIZE } from '../../memory/guest-memory.js';
import type { DirtyTracker } from '../../memory/dirty-tracker.js';
import type { FramedChannel } from '../transport/index.js';
import { MigrationError, type MigrationMode } from '../session/report.js';
import { decideAfterPass, passZeroFutile } from './convergence.js';
import type { AnnouncedSize } from './memory-size.js';
import type { PageProvider } from './page-provider.js';
import type { PageSender } from './page-sender.js';
import { PageBitmap } from '../../memory/page-bitmap.js';
import type { PrecopySender } from '../dataplane/precopy-plane.js';

export interface PrecopyContext {
  bulk: FramedChannel;
  sender: PageSender;
  /** Native precopy (Feature.NATIVE_PRECOPY): the passes' pages go on the data plane through this thread; null: on the bulk channel. */
  native: PrecopySender | null;
  tracker: DirtyTracker;
  pages: PageProvider;
  size: AnnouncedSize;
  opts: { mode: MigrationMode; downtimeTargetMs: number; precopyTimeoutS: number };
  /** When the migration started (performance.now()). */
  t0: number;
  bytesSent: () => number;
  /** Throws if the migration was cancelled. */
  checkCancelled: () => void;
  /** A trace line (FERRY_TRACE=phases). */
  note?: (what: string) => void;
  /** The figures below changed. */
  report: () => void;
}

/** How often a native pass 0 is looked at for futility (a walk of the written bits below its cursor). */
const WATCH_MS = 50;

/** Whether a futile pass 0 is cut short (convergence.ts): yes unless FERRY_PRECOPY_CUT=0. */
const cutEnabled = () => process.env['FERRY_PRECOPY_CUT'] !== '0';

export class Precopy {
  /** The pass being sent (0 first). */
  pass = 0;
  dirtyPages = 0;
  rate = 0;
  dirtyRate = 0;
  expectedDowntimeMs: number | null = null;
  /** Pass 0 cut short as futile: from which page, and how many of its pages it left to postcopy. */
  cut: { atPage: number; leftOutPages: number } | null = null;

  constructor(private readonly c: PrecopyContext) {}

  /** Runs the passes; resolves with the pages written since the last one and whether the rest fits the downtime target. */
  async run(): Promise<{ dirty: PageBitmap; converged: boolean }> {
    const { bulk, sender, tracker, size, opts } = this.c;
    tracker.start();
    this.bytesAtStart = this.c.bytesSent();
    let passStart = performance.now();
    let bytesAtPassStart = this.c.bytesSent();
    // Pass 0 covers the memory as scanned, which may have grown since SETUP (a guest that
    // allocates as it starts: cmark reading its input): announce that size before its pages.
    const residency = this.c.pages.residency();
    await size.grow(residency.present.size * HOST_PAGE_SIZE);
    let leftOut: PageBitmap | null = null;
    if (this.c.native) leftOut = await this.nativePassZero(this.c.native, residency.present, residency.zero, residency.present.size);
    else {
      await sender.sendLayout(residency.present, residency.zero, residency.present.size, { between: this.c.checkCancelled });
      await sender.flush();
    }
    await bulk.sendMessage({ type: 'PASS_END', pass: 0, dirtyPages: sender.counters.pagesSent });
    this.notePass(passStart, sender.counters.pagesSent);
    if (leftOut) {
      // Cut short: postcopy now (not converged: a stop-and-copy would leave the pages it left out
      // behind). Those pages are DISCARDed with the ones written since they were sent, and streamed:
      // a destination takes a page it was never sent for known-zero (a fresh memory's state) until
      // a DISCARD makes it pending.
      return { dirty: this.measurePass(passStart, bytesAtPassStart, leftOut).dirty, converged: false };
    }

    // Passes 1..n: pages written since the previous pass.
    let minDirty = Infinity;
    let stalled = 0;
    for (;;) {
      this.c.checkCancelled();
      const { dirty, expectedDowntimeMs } = this.measurePass(passStart, bytesAtPassStart);
      if (this.dirtyPages < minDirty) {
        minDirty = this.dirtyPages;
        stalled = 0;
      } else stalled++;
      const elapsedS = (performance.now() - this.c.t0) / 1000;
      const decision = decideAfterPass({
        mode: opts.mode, expectedDowntimeMs, downtimeTargetMs: opts.downtimeTargetMs,
        stalledPasses: stalled, elapsedS, precopyTimeoutS: opts.precopyTimeoutS,
        nextTotalBytes: this.c.bytesSent() + this.dirtyPages * HOST_PAGE_SIZE, memoryBytes: this.c.pages.pageCount * HOST_PAGE_SIZE,
      });
      if (decision === 'stop-and-copy' || decision === 'postcopy') {
        return { dirty, converged: expectedDowntimeMs <= opts.downtimeTargetMs };
      }
      if (decision === 'give-up') {
        throw new MigrationError(
          'not-converged',
          `precopy did not converge: ${this.dirtyPages} pages dirty after ${this.pass + 1} passes (${elapsedS.toFixed(1)} s); the guest keeps running here`,
          { converged: false, precopyPasses: this.pass + 1, bytesSent: this.c.bytesSent(), mode: 'precopy' },
        );
      }
      this.pass++;
      passStart = performance.now();
      bytesAtPassStart = this.c.bytesSent();
      // One read of the size for the announcement and the pass: the guest may grow meanwhile.
      const pageCount = this.c.pages.pageCount;
      await size.grow(pageCount * HOST_PAGE_SIZE);
      const sent = this.c.native ? await this.nativePass(this.c.native, dirty, pageCount) : await sender.sendSet(dirty, pageCount);
      await sender.flush();
      await bulk.sendMessage({ type: 'PASS_END', pass: this.pass, dirtyPages: sent });
      this.notePass(passStart, sent);
    }
  }

  /**
   * After a pass: the pages written since the previous look (plus `unsent`, a cut pass's pages
   * that never crossed), and the figures the report and the decision use — the pass's rate, the
   * guest's dirty rate (written pages only), the dirty set and the downtime it would take.
   */
  private measurePass(passStart: number, bytesAtPassStart: number, unsent?: PageBitmap): { dirty: PageBitmap; expectedDowntimeMs: number } {
    const passMs = Math.max(1, performance.now() - passStart);
    this.rate = ((this.c.bytesSent() - bytesAtPassStart) / passMs) * 1000;
    const dirty = this.c.tracker.collect();
    this.dirtyRate = (dirty.count() / passMs) * 1000;
    for (const [first, end] of unsent?.runs() ?? []) dirty.addRange(first, end);
    this.dirtyPages = dirty.count();
    const expectedDowntimeMs = ((this.dirtyPages * HOST_PAGE_SIZE) / Math.max(this.rate, 1)) * 1000;
    this.expectedDowntimeMs = expectedDowntimeMs;
    this.c.report();
    return { dirty, expectedDowntimeMs };
  }

  /** FERRY_TRACE=phases: each pass's pages, time and rate (where precopy's time goes). */
  private notePass(start: number, pages: number): void {
    const ms = performance.now() - start;
    this.c.note?.(`precopy (pass ${this.pass}: ${pages} pages in ${ms.toFixed(1)} ms, ${((this.c.bytesSent() - this.bytesAtStart) / 1e6).toFixed(1)} MB so far${this.c.native ? ', native' : ''})`);
  }
  private bytesAtStart = 0;

  /**
   * Pass 0 natively: the present pages that are not mapped to the zero page as data (those that
   * read as zero go as ZERO), every other page below `pageCount` as ZERO (never touched or
   * zero-mapped). The counters say what the JavaScript sender's would. In postcopy and auto modes
   * it is watched while it runs and cut short once futile (convergence.ts); returns the pages it
   * then left out (they never crossed), or null when it ran to its end.
   */
  private async nativePassZero(native: PrecopySender, present: PageBitmap, zero: PageBitmap, pageCount: number): Promise<PageBitmap | null> {
    const data = new PageBitmap(pageCount);
    for (let w = 0; w < data.words.length; w++) data.words[w] = (present.words[w] ?? 0) & ~(zero.words[w] ?? 0);
    const presentPages = countBelow(present, pageCount);
    const before = native.read();
    const pass = native.sendPass(0, data, pageCount, true);
    if (this.c.opts.mode !== 'precopy' && cutEnabled()) await this.watchPassZero(native, pass, present, presentPages, pageCount);
    await pass;
    this.c.checkCancelled();
    const after = native.read();
    const cutAt = Math.min(native.cutAt(), pageCount);
    const leftOut = cutAt < pageCount ? data.clone().deleteRange(0, cutAt) : null;
    const leftOutPages = leftOut?.count() ?? 0;
    if (leftOut) {
      this.cut = { atPage: cutAt, leftOutPages };
      this.c.note?.(`precopy (pass 0 cut at page ${cutAt} of ${pageCount}: ${leftOutPages} pages left to postcopy)`);
    }
    const counters = this.c.sender.counters;
    counters.pagesSent += pageCount - leftOutPages;
    counters.untouchedPages += pageCount - presentPages;
    counters.dataPages += after.dataPages - before.dataPages;
    counters.zeroPages += after.zeroPages - before.zeroPages - (pageCount - presentPages);
    return leftOut;
  }

  /** Looks at pass 0 every WATCH_MS until it ends, and cuts it once it is futile. */
  private async watchPassZero(native: PrecopySender, pass: Promise<void>, present: PageBitmap, presentPages: number, pageCount: number): Promise<void> {
    let ended = false;
    void pass.then(() => (ended = true), () => (ended = true));
    while (!ended) {
      await new Promise((r) => setTimeout(r, WATCH_MS));
      if (ended) return;
      const covered = Math.min(native.cursor(), pageCount);
      const written = this.c.tracker.peekWrittenAround(covered);
      const presentCovered = countBelow(present, covered);
      const measure = {
        mode: this.c.opts.mode, coveredPages: covered, pageCount,
        presentCovered, writtenCovered: written.below, presentAhead: presentPages - presentCovered, writtenAhead: written.from,
      };
      if (passZeroFutile(measure)) {
        native.cut();
        this.c.note?.(
          `precopy (pass 0 futile at page ${covered}: written again ${written.below} of the ${presentCovered} present pages it covered, ${written.from} of the ${measure.presentAhead} ahead)`,
        );
        return;
      }
    }
  }

  /** A later pass natively: every page of `dirty` below `pageCount`; returns how many. */
  private async nativePass(native: PrecopySender, dirty: PageBitmap, pageCount: number): Promise<number> {
    const before = native.read();
    await native.sendPass(this.pass, dirty, pageCount, false);
    const after = native.read();
    const sent = countBelow(dirty, pageCount);
    const counters = this.c.sender.counters;
    counters.pagesSent += sent;
    counters.dataPages += after.dataPages - before.dataPages;
    counters.zeroPages += after.zeroPages - before.zeroPages;
    return sent;
  }
}

function countBelow(set: PageBitmap, limit: number): number {
  let n = 0;
  for (const [s, e] of set.runs()) {
    if (s >= limit) break;
    n += Math.min(e, limit) - s;
  }
  return n;
}
