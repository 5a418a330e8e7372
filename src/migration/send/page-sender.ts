// Sends runs of guest pages on a channel; pages that turn out to hold only zeros go as zero markers.
// Page bytes are copied once into a staging buffer before they are framed: the frame checksum is computed over the copy, so a guest that keeps writing the
// page while the frame waits in a socket buffer cannot make the frame fail its check (the dirty
// tracker sends the newer content again). A few sends stay in flight to keep the pipe full.
import type { FramedChannel } from '../transport/index.js';
import type { PageBitmap } from '../../memory/page-bitmap.js';
import { HOST_PAGE_SIZE } from '../../memory/guest-memory.js';
import { RECOMMENDED_RUN_PAGES } from '../wire/index.js';
import { forEachZeroRun } from '../../memory/zero-pages.js';
import type { PageReader } from './page-provider.js';

const MAX_IN_FLIGHT = 4;

export interface SendCounters {
  pagesSent: number;
  dataPages: number;
  zeroPages: number;
  untouchedPages: number;
}

export class PageSender {
  private inFlight: Promise<void>[] = [];
  readonly counters: SendCounters = { pagesSent: 0, dataPages: 0, zeroPages: 0, untouchedPages: 0 };

  constructor(
    private readonly channel: FramedChannel,
    /** Where the page bytes come from (a PageProvider). */
    private readonly pages: PageReader,
  ) {}

  /** Sends pages [start, end) as data, in runs of at most RECOMMENDED_RUN_PAGES. */
  async sendData(start: number, end: number): Promise<void> {
    for (let s = start; s < end; s += RECOMMENDED_RUN_PAGES) {
      await this.push(this.sendRun(s, Math.min(end, s + RECOMMENDED_RUN_PAGES)));
    }
  }

  /**
   * Sends pages [start, end) as data with every frame handed to the channel before this returns
   * (no backpressure): for the few pages of a switchover, which nothing sent after may overtake.
   */
  sendDataAtOnce(start: number, end: number): Promise<void> {
    const sends: Promise<void>[] = [];
    for (let s = start; s < end; s += RECOMMENDED_RUN_PAGES) sends.push(this.sendRun(s, Math.min(end, s + RECOMMENDED_RUN_PAGES)));
    return Promise.all(sends).then(() => undefined);
  }

  /**
   * Runs the read-and-sort half of sendRun() on page 0 (the runtime's page, always there) and sends
   * nothing: before a switchover, whose runtime pages are the first this process sends from
   * JavaScript when the rest went on the native data plane (see FramedChannel.rehearseEncoding).
   */
  rehearseRead(): void {
    const copy = Buffer.allocUnsafe(HOST_PAGE_SIZE);
    for (let i = 0; i < 3; i++) {
      this.pages.readPages(0, 1, copy);
      forEachZeroRun(copy, 0, 1, () => undefined);
    }
  }

  private sendRun(s: number, e: number): Promise<void> {
    const copy = Buffer.allocUnsafe((e - s) * HOST_PAGE_SIZE);
    this.pages.readPages(s, e - s, copy);
    this.counters.pagesSent += e - s;
    // Pages of zeros go as zero markers (see memory/zero-pages.ts: on kernels that map a real page
    // for a read fault, residency cannot tell a read-only page from a written one).
    const sends: Promise<void>[] = [];
    forEachZeroRun(copy, 0, e - s, (a, b, zero) => {
      if (zero) {
        this.counters.zeroPages += b - a;
        sends.push(this.channel.sendPages((s + a) * HOST_PAGE_SIZE, b - a, 'zero'));
      } else {
        this.counters.dataPages += b - a;
        sends.push(this.channel.sendPages((s + a) * HOST_PAGE_SIZE, b - a, 'data', copy.subarray(a * HOST_PAGE_SIZE, b * HOST_PAGE_SIZE)));
      }
    });
    return sends.length === 1 ? sends[0]! : Promise.all(sends).then(() => undefined);
  }

  /** Sends [start, end) as a zero or never-touched range (no bytes). */
  async sendEmpty(start: number, end: number, kind: 'zero' | 'untouched'): Promise<void> {
    await this.push(this.channel.sendPages(start * HOST_PAGE_SIZE, end - start, kind));
    this.counters.pagesSent += end - start;
    if (kind === 'zero') this.counters.zeroPages += end - start;
    else this.counters.untouchedPages += end - start;
  }

  /**
   * Pass 0: the whole memory as alternating runs — never touched (not present), zero-page mapped,
   * data — with the data runs sent unless `deferData` (a source that leaves them to postcopy).
   * `between` runs after each present run (a cancellation check).
   */
  async sendLayout(present: PageBitmap, zero: PageBitmap, pageCount: number, opts: { deferData?: boolean; between?: () => void } = {}): Promise<void> {
    let p = 0;
    for (const [s, e] of present.runs()) {
      if (s >= pageCount) break;
      if (s > p) await this.sendEmpty(p, s, 'untouched');
      const end = Math.min(e, pageCount);
      for (let q = s; q < end; ) {
        const isZero = zero.has(q);
        let r = q + 1;
        while (r < end && zero.has(r) === isZero) r++;
        if (isZero) await this.sendEmpty(q, r, 'zero');
        else if (!opts.deferData) await this.sendData(q, r);
        q = r;
      }
      p = end;
      opts.between?.();
    }
    if (p < pageCount) await this.sendEmpty(p, pageCount, 'untouched');
  }

  /** Sends every page of `pages` below `limit` as data. */
  async sendSet(pages: PageBitmap, limit: number): Promise<number> {
    let n = 0;
    for (const [s, e] of pages.runs()) {
      const end = Math.min(e, limit);
      if (s >= end) continue;
      await this.sendData(s, end);
      n += end - s;
    }
    return n;
  }

  /** Waits until every frame handed to the channel has been written. */
  async flush(): Promise<void> {
    const all = this.inFlight;
    this.inFlight = [];
    await Promise.all(all);
  }

  private async push(p: Promise<void>): Promise<void> {
    p.catch(() => undefined); // observed in flush()/push(); avoids an unhandled rejection meanwhile
    this.inFlight.push(p);
    if (this.inFlight.length >= MAX_IN_FLIGHT) await this.inFlight.shift();
  }
}
