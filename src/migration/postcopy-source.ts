// Postcopy, source side: after the commit the guest runs on the destination and this side holds
// the pages it still lacks (`pending`). Two streams serve them:
//  - urgent: each PAGE_REQUEST (a fault on the destination) is answered at once on the urgent
//    connection, so it never queues behind bulk data in a socket buffer;
//  - bulk: every other pending page in address order, restarting just after the last requested
//    page (a guest that faults at an address tends to touch what follows it next).
// Each page crosses once: a page sent by either stream is never sent again.
import type { GuestMemory } from '../memory/guest-memory.js';
import { HOST_PAGE_SIZE } from '../memory/guest-memory.js';
import { PageBitmap } from '../memory/page-bitmap.js';
import type { FramedChannel } from './transport/index.js';
import { RECOMMENDED_RUN_PAGES } from './wire/index.js';
import { MigrationError, type PostcopyReport } from './report.js';

const BULK_IN_FLIGHT = 4;

export class PostcopySource {
  private readonly sent: PageBitmap;
  private remaining: number;
  private cursor = 0;
  private pagesRequested = 0;
  private pagesPushed = 0;
  private requests = 0;
  private readonly t0 = performance.now();
  private endMs: number | null = null;
  private failure: Error | null = null;
  /** Latest fault statistics reported by the destination (it measures them). */
  private remote: Partial<PostcopyReport> = {};

  constructor(
    private readonly mem: GuestMemory,
    private readonly pending: PageBitmap,
    private readonly pageCount: number,
    private readonly bulk: FramedChannel,
    private readonly urgent: FramedChannel,
  ) {
    this.sent = new PageBitmap(pending.size);
    this.remaining = pending.count();
  }

  get pagesSent(): number {
    return this.pagesRequested + this.pagesPushed;
  }

  report(): PostcopyReport {
    return {
      pagesRequested: this.pagesRequested,
      pagesPushed: this.pagesPushed,
      faults: this.remote.faults ?? this.requests,
      faultLatencyUs: this.remote.faultLatencyUs ?? { p50: 0, p99: 0, max: 0 },
      guestBlockedMs: this.remote.guestBlockedMs ?? 0,
      durationMs: Math.round((this.endMs ?? performance.now()) - this.t0),
    };
  }

  setRemoteStats(stats: Partial<PostcopyReport>): void {
    this.remote = stats;
  }

  /** Serves requests and pushes every pending page; resolves when all are sent. */
  async run(): Promise<void> {
    const serving = this.serveRequests();
    await this.push();
    this.endMs = performance.now();
    // Requests still in flight for pages already pushed are answered by the pages themselves.
    void serving;
    if (this.failure) throw this.failure;
  }

  private async serveRequests(): Promise<void> {
    try {
      for (;;) {
        const msg = await this.urgent.recv();
        if (!msg) return;
        if (msg.type !== 'PAGE_REQUEST') {
          throw new MigrationError('protocol', `unexpected ${msg.type} on the urgent channel`);
        }
        this.requests++;
        const first = msg.offset / HOST_PAGE_SIZE;
        const end = Math.min(first + msg.count, this.pageCount);
        for (let p = first; p < end; ) {
          if (!this.pending.has(p) || this.sent.has(p)) {
            p++;
            continue;
          }
          let q = p + 1;
          while (q < end && q - p < RECOMMENDED_RUN_PAGES && this.pending.has(q) && !this.sent.has(q)) q++;
          this.pagesRequested += this.sendRun(this.urgent, p, q);
          p = q;
        }
        this.cursor = end; // the bulk stream continues right after the fault
      }
    } catch (err) {
      if (this.remaining > 0) this.failure ??= err as Error;
    }
  }

  private async push(): Promise<void> {
    const inFlight: Promise<void>[] = [];
    while (this.remaining > 0) {
      if (this.failure) throw this.failure;
      const p = this.nextPending();
      if (p < 0) break;
      let q = p + 1;
      while (q < this.pageCount && q - p < RECOMMENDED_RUN_PAGES && this.pending.has(q) && !this.sent.has(q)) q++;
      const n = this.sendRun(this.bulk, p, q, inFlight);
      this.pagesPushed += n;
      this.cursor = q;
      if (inFlight.length >= BULK_IN_FLIGHT) await inFlight.shift();
      else await new Promise<void>((r) => setImmediate(r)); // let urgent requests in between runs
    }
    await Promise.all(inFlight);
  }

  /** The next pending, unsent page at or after the cursor (wrapping), or -1. */
  private nextPending(): number {
    for (let pass = 0; pass < 2; pass++) {
      const from = pass === 0 ? this.cursor : 0;
      const to = pass === 0 ? this.pageCount : this.cursor;
      for (let p = from; p < to; p++) if (this.pending.has(p) && !this.sent.has(p)) return p;
    }
    return -1;
  }

  private sendRun(channel: FramedChannel, p: number, q: number, inFlight?: Promise<void>[]): number {
    const view = this.mem.view();
    const copy = Buffer.allocUnsafe((q - p) * HOST_PAGE_SIZE);
    copy.set(view.subarray(p * HOST_PAGE_SIZE, q * HOST_PAGE_SIZE));
    this.sent.addRange(p, q);
    this.remaining -= q - p;
    const sending = channel.sendPages(p * HOST_PAGE_SIZE, q - p, 'data', copy);
    sending.catch((err: Error) => (this.failure ??= err));
    inFlight?.push(sending);
    return q - p;
  }
}
