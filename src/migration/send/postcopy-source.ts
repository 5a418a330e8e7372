// Postcopy, source side: after the commit the guest runs on the destination and this side holds
// the pages it still lacks (`pending`). Two streams serve them:
//  - urgent: each PAGE_REQUEST (a fault on the destination) is answered at once by the urgent
//    channel's own thread (send/urgent/answer-thread.ts), on its own connection;
//  - bulk (here): every other pending page in address order, continuing just after the last
//    requested page (a guest that faults at an address tends to touch what follows next).
// Each page crosses once: both streams claim a page atomically before sending it.
// With the native fault path the answer thread (native/dataplane/dp_answer.c) answers requests, and
// in bulk mode it is the bulk stream too, on the data plane connection: this class then only waits
// for it to report every page sent.
import { HOST_PAGE_SIZE } from '../../memory/guest-memory.js';
import type { PageBitmap } from '../../memory/page-bitmap.js';
import type { FramedChannel } from '../transport/index.js';
import type { UrgentChannel } from './urgent/channel.js';
import type { PostcopyReport } from '../session/report.js';
import type { PageReader } from './page-provider.js';
import { AnswerPlane } from '../dataplane/answer-plane.js';
import { UrgentChannelError } from '../session/failures.js';

/**
 * The native fault path's connection (Feature.NATIVE_FAULTS): a socket to the destination, the
 * session's data plane secret, and the paused guest's memory the answer thread reads pages from
 * (a live source only: a snapshot's pages are not in memory).
 */
export interface AnswerLink {
  fd: number;
  secret: Uint8Array;
  memory: Uint8Array;
  /** The answer thread streams the bulk too (this thread sends no pages). */
  bulk: boolean;
  /** --max-bandwidth (bytes/s): the answer thread paces its bulk frames (never its answers). */
  maxBandwidth?: number | undefined;
}

/**
 * Pages per bulk frame after the switchover. Smaller than precopy's runs: the destination's main
 * thread places a whole frame at a time, and an urgent page that arrives meanwhile waits for it.
 * 128 KiB keeps that wait near 0.1 ms for 12 bytes of header per frame.
 */
const POSTCOPY_RUN_PAGES = 32;
const BULK_IN_FLIGHT = 2;
/** How often run() looks at a native bulk stream's progress. */
const NATIVE_BULK_POLL_MS = 5;

export class PostcopySource {
  private cursor = 0;
  private lastUrgentCursor = 0;
  private pagesPushed = 0;
  private priorUrgentPages = 0;
  private readonly t0 = performance.now();
  private endMs: number | null = null;
  private failure: Error | null = null;
  private remote: PostcopyReport | null = null;
  /** The native answer thread, when the fault path is native: it answers requests instead of the urgent thread. */
  private plane: AnswerPlane | null = null;
  private priorPlanePages = 0;
  private priorPlanePushed = 0;
  /** The current answer thread streams the bulk. */
  private planeBulk = false;
  private priorPlaneBytes = { sent: 0, received: 0 };
  /** Whether a native answer thread ever ran (the report then says what it carried). */
  private planeUsed = false;

  constructor(
    private readonly pages: PageReader,
    private readonly pending: PageBitmap,
    private readonly pageCount: number,
    private bulk: FramedChannel,
    private urgent: UrgentChannel,
    /** The bulk connection's kernel buffers from now on (session/bulk-buffers.ts). */
    private readonly bufferBytes: number,
    native: AnswerLink | null = null,
  ) {
    urgent.activate(pending, pageCount);
    bulk.limitKernelBuffers(bufferBytes);
    if (native) this.startPlane(native);
  }

  /** Starts the native answer thread over the guest's (paused, complete) memory and the urgent channel's bitmaps. */
  private startPlane(link: AnswerLink): void {
    const plane = new AnswerPlane({
      sock: link.fd, memory: link.memory.subarray(0, this.pageCount * HOST_PAGE_SIZE), pageCount: this.pageCount,
      pending: this.urgent.pendingWords, claims: this.urgent.claims.words, secret: link.secret, bulk: link.bulk,
      maxBandwidth: link.maxBandwidth,
    });
    this.plane = plane;
    this.planeBulk = link.bulk;
    this.planeUsed = true;
    void plane.ended.then((err) => {
      // Once every pending page is claimed (sent, here or before a reconnection) the thread has
      // nothing left to carry, and the destination closes the data plane as soon as it holds every
      // page: its "peer closed" then is the normal end, not a loss. Taken for one, it sent a source
      // that had finished into recovery (the JavaScript bulk loop checks for failures after its
      // last send). A loss that matters still shows: the destination then closes bulk too.
      if (err !== null && this.plane === plane && !this.allClaimed()) this.failure ??= new UrgentChannelError(`native data plane: ${err}`);
    });
  }

  /** Stops the native answer thread (at the end, or when its connection is replaced). */
  stopNative(): void {
    if (!this.plane) return;
    this.plane.stop(); // joined: its counters are final
    const s = this.plane.read();
    this.priorPlanePages += s.pagesSent;
    this.priorPlanePushed += s.pushed;
    this.priorPlaneBytes = { sent: this.priorPlaneBytes.sent + s.bytesSent, received: this.priorPlaneBytes.received + s.bytesReceived };
    this.plane = null;
  }

  /** Bytes the native answer threads carried, every data plane connection included. */
  get dataplaneBytes(): { sent: number; received: number } {
    const s = this.plane?.read();
    return { sent: this.priorPlaneBytes.sent + (s?.bytesSent ?? 0), received: this.priorPlaneBytes.received + (s?.bytesReceived ?? 0) };
  }

  get maxPages(): number {
    return this.pending.size;
  }

  /**
   * Continues on new connections after a recovery. `held` is the destination's RECEIVED_SET: those
   * pages are done; every other pending page goes out again, whoever had claimed it before.
   */
  resume(bulk: FramedChannel, urgent: UrgentChannel, held: Uint8Array, heldPages: number, native: AnswerLink | null = null): void {
    this.stopNative();
    this.priorUrgentPages += this.urgent.pagesSent;
    this.bulk = bulk;
    this.urgent = urgent;
    this.failure = null;
    bulk.limitKernelBuffers(this.bufferBytes);
    for (let p = 0; p < Math.min(heldPages, this.pageCount); p++) {
      if ((held[p >>> 3]! & (1 << (p & 7))) !== 0) urgent.claims.claim(p);
    }
    urgent.activate(this.pending, this.pageCount);
    if (native) this.startPlane(native);
    this.cursor = 0;
    this.lastUrgentCursor = 0;
  }

  get pagesSent(): number {
    return this.priorUrgentPages + this.urgent.pagesSent + this.pagesPushed + this.priorPlanePages + (this.plane?.read().pagesSent ?? 0);
  }

  /** Pages the native answer threads pushed as the bulk stream. */
  private get planePushed(): number {
    return this.priorPlanePushed + (this.plane?.read().pushed ?? 0);
  }

  /** Pages this side sent, by stream (the destination's own counts come in its report). */
  get sentByStream(): { urgent: number; bulk: number } {
    return { urgent: this.priorUrgentPages + this.urgent.pagesSent, bulk: this.pagesPushed + this.planePushed };
  }

  report(): PostcopyReport {
    return {
      pagesRequested: this.remote?.pagesRequested ?? this.priorUrgentPages + this.urgent.pagesSent + this.priorPlanePages + (this.plane?.read().pagesSent ?? 0) - this.planePushed,
      pagesPushed: this.remote?.pagesPushed ?? this.pagesPushed + this.planePushed,
      faults: this.remote?.faults ?? this.urgent.requests,
      faultLatencyUs: this.remote?.faultLatencyUs ?? { p50: 0, p99: 0, max: 0 },
      guestBlockedMs: this.remote?.guestBlockedMs ?? 0,
      // The destination's figure when known: the postcopy ends when its last page is placed there.
      durationMs: this.remote?.durationMs ?? Math.round((this.endMs ?? performance.now()) - this.t0),
      ...(this.planeUsed ? { dataplane: { pagesSent: this.priorPlanePages + (this.plane?.read().pagesSent ?? 0), bytesSent: this.dataplaneBytes.sent, bytesReceived: this.dataplaneBytes.received } } : {}),
    };
  }

  /** Fault statistics measured by the destination (only it sees the faults). */
  setRemoteReport(r: PostcopyReport): void {
    this.remote = r;
  }

  /** Pushes every pending page not requested meanwhile; resolves when all are sent. */
  async run(): Promise<void> {
    if (this.plane && this.planeBulk) return this.awaitNativeBulk();
    const inFlight: Promise<void>[] = [];
    for (;;) {
      if (this.failure) throw this.failure;
      if (this.urgent.error) throw this.urgent.error;
      const c = this.plane ? this.plane.read().cursor : this.urgent.cursor;
      if (c !== this.lastUrgentCursor) this.cursor = this.lastUrgentCursor = c; // follow the faults
      const p = this.nextUnclaimed();
      if (p < 0) break;
      let q = p + 1;
      while (q < this.pageCount && q - p < POSTCOPY_RUN_PAGES && this.pending.has(q) && this.urgent.claims.claim(q)) q++;
      const copy = Buffer.allocUnsafe((q - p) * HOST_PAGE_SIZE);
      this.pages.readPages(p, q - p, copy);
      const sending = this.bulk.sendPages(p * HOST_PAGE_SIZE, q - p, 'data', copy);
      sending.catch((err: Error) => (this.failure ??= err));
      inFlight.push(sending);
      this.pagesPushed += q - p;
      this.cursor = q;
      if (inFlight.length >= BULK_IN_FLIGHT) await inFlight.shift();
    }
    await Promise.all(inFlight);
    this.endMs = performance.now();
    if (this.failure) throw this.failure;
  }

  /**
   * The answer thread is the bulk stream: wait until it has sent every pending page, failing as
   * soon as it or the connections do. A reconnection meanwhile makes the caller run this again
   * over the new thread (after resume()).
   */
  private async awaitNativeBulk(): Promise<void> {
    const plane = this.plane!;
    for (;;) {
      // Every pending page claimed means every one was sent, here or before a reconnection: what
      // the destination still lacks after a loss it names in RECEIVED_SET. Checked before the
      // thread's failure, because the destination closes the data plane as soon as it holds every
      // page, which ends the thread with an error before it may have noted that it is done.
      if (plane.read().bulkDone || this.allClaimed()) break;
      if (this.failure) throw this.failure;
      if (this.urgent.error) throw this.urgent.error;
      await new Promise((r) => setTimeout(r, NATIVE_BULK_POLL_MS));
    }
    this.endMs = performance.now();
  }

  /** Whether no pending page is left unclaimed (word by word: a scan of 32 pages at a time). */
  private allClaimed(): boolean {
    const pending = this.urgent.pendingWords;
    const claims = this.urgent.claims.words;
    const words = Math.ceil(this.pageCount / 32);
    for (let w = 0; w < words; w++) {
      let avail = (Atomics.load(pending, w) & ~Atomics.load(claims, w)) >>> 0;
      if (w === words - 1 && this.pageCount % 32 !== 0) avail &= (1 << this.pageCount % 32) - 1;
      if (avail !== 0) return false;
    }
    return true;
  }

  /** Claims and returns the next pending page at or after the cursor (wrapping), or -1. */
  private nextUnclaimed(): number {
    for (let pass = 0; pass < 2; pass++) {
      const from = pass === 0 ? this.cursor : 0;
      const to = pass === 0 ? this.pageCount : this.cursor;
      for (let p = from; p < to; p++) {
        if (this.pending.has(p) && this.urgent.claims.claim(p)) return p;
      }
    }
    return -1;
  }
}
