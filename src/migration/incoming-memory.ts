// Page placement on the destination, and postcopy. The memory is registered with userfaultfd as
// soon as the migration is set up, so every page is placed with UFFDIO_COPY from the bytes as they
// arrive (this thread never writes a hole; it overwrites only pages already present) and the page
// state table is current at the commit: nothing is left to do inside the downtime.
// After the commit the guest runs over memory with holes:
//  - the FaultServer's worker reads every fault; a known-zero page is filled locally
//    (UFFDIO_ZEROPAGE), a pending one becomes a request in the RequestRing;
//  - this (main) thread, woken by the ring's eventfd, sends each request on the urgent channel;
//  - pages arriving on either channel are placed with UFFDIO_COPY, which wakes every thread
//    blocked on them; a page is placed once (EEXIST from a race is success).
// This thread never reads or writes guest memory: page bytes go from the socket's buffers to the
// kernel, and the verify digest is computed from those same bytes.
import { fileURLToPath } from 'node:url';
import { FaultServer } from '../memory/fault-server.js';
import type { FaultStats } from '../memory/fault-stats.js';
import { HOST_PAGE_SIZE, type GuestMemory } from '../memory/guest-memory.js';
import { PageState, type PageStateTable } from '../memory/page-state.js';
import { eventfd, eventfdDrain, close, FdWatcher, POLLIN, EFD_NONBLOCK, EFD_CLOEXEC } from '../sys/fd.js';
import { TransportError, type FramedChannel } from './transport/index.js';
import type { PageFrameChecker, MessageOf } from './wire/index.js';
import type { PageDigest } from './digest.js';
import { RequestRing } from './request-ring.js';
import { latencySummary, type PostcopyReport } from './report.js';

export class IncomingMemory {
  private server: FaultServer | null = null;
  private watcher: FdWatcher | null = null;
  private readonly eventFd: number;
  private readonly ring = RequestRing.create();
  private remaining = 0;
  private readonly requestedAt = new Map<number, number>();
  private readonly latenciesUs: number[] = [];
  private pagesRequested = 0;
  private pagesPushed = 0;
  private readonly t0 = performance.now();
  private endMs: number | null = null;
  private done!: () => void;
  /** Resolves when every pending page is placed. */
  readonly complete: Promise<void>;

  private active = false;
  private finalStats: FaultStats | null = null;

  constructor(
    private readonly mem: GuestMemory,
    private readonly states: PageStateTable,
    private urgent: FramedChannel,
    private readonly checker: PageFrameChecker,
    /** Null when the source did not ask for --verify: hashing every page costs the stream time. */
    private readonly digest: PageDigest | null,
  ) {
    this.eventFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.complete = new Promise((resolve) => (this.done = resolve));
  }

  /** Registers the memory with userfaultfd and starts the fault worker. Call before any page arrives. */
  async start(): Promise<void> {
    this.watcher = new FdWatcher(this.eventFd, POLLIN, () => this.forwardRequests());
    this.server = await FaultServer.start(this.mem, this.states, {
      kind: 'module',
      module: fileURLToPath(new URL('./remote-page-source.js', import.meta.url)),
      options: { ring: this.ring.buffer, eventFd: this.eventFd },
    });
  }

  /** Precopy data: pages [first, first+count) get `bytes` (newer copies replace older ones). */
  placeData(first: number, count: number, bytes: Buffer): void {
    this.unpend(first, first + count);
    for (const [s, e] of this.runsBy(first, first + count)) {
      const at = (s - first) * HOST_PAGE_SIZE;
      if (this.isPresent(s)) {
        this.mem.view().set(bytes.subarray(at, at + (e - s) * HOST_PAGE_SIZE), s * HOST_PAGE_SIZE); // present: never blocks
      } else {
        this.server!.fill(s, e - s, bytes, at); // marks them received
      }
    }
    this.digest?.set(first, bytes, count);
  }

  /** Zero or never-touched pages: they must read as zero, so earlier copies are dropped. */
  placeZero(first: number, count: number): void {
    this.unpend(first, first + count);
    this.dropPopulated(first, first + count);
    for (let p = first; p < first + count; p++) this.states.markZero(p);
    this.digest?.setZero(first, count);
  }

  /** Pages the source will send again after the commit: holes, pending. */
  discard(first: number, count: number): void {
    this.dropPopulated(first, first + count);
    for (let p = first; p < first + count; p++) {
      if (this.states.get(p) !== PageState.PENDING) this.remaining++;
      this.states.markPending(p);
    }
  }

  /** Called at the commit: from now on faults on pending pages go to the source. */
  activate(): void {
    this.active = true;
    if (this.remaining === 0) this.finish();
  }

  get isPostcopy(): boolean {
    return this.remaining > 0 || this.pagesRequested + this.pagesPushed > 0;
  }

  private unpend(start: number, end: number): void {
    for (let p = start; p < end; p++) if (this.states.get(p) === PageState.PENDING) this.remaining--;
  }

  /** Callers mark the dropped pages zero or pending right after: a dropped page is a hole. */
  private dropPopulated(start: number, end: number): void {
    for (const [s, e] of this.runsBy(start, end)) if (this.isPresent(s)) this.mem.dropPages([[s, e]]);
  }

  // Before the commit, the pages placed with data are exactly the received ones (zero pages are
  // holes, pending pages were dropped): the page-state table says which pages are present.
  private isPresent(p: number): boolean {
    return this.states.get(p) === PageState.RECEIVED;
  }

  /** Splits [start, end) into runs of pages equally present or not. */
  private runsBy(start: number, end: number): Array<[number, number]> {
    const runs: Array<[number, number]> = [];
    let s = start;
    while (s < end) {
      const v = this.isPresent(s);
      let e = s + 1;
      while (e < end && this.isPresent(e) === v) e++;
      runs.push([s, e]);
      s = e;
    }
    return runs;
  }

  /** Receives pages the source sends on the urgent channel (answers to requests). */
  async serveUrgent(): Promise<void> {
    for (;;) {
      const r = await this.urgent.recvWithOffset();
      if (!r) {
        // The urgent channel ended while pages are missing: answers it carried may be lost with
        // it, and the bulk stream never sends a page twice — recover both channels.
        if (this.remaining > 0) throw new TransportError('CLOSED', this.urgent.peer, 'the urgent channel closed during postcopy');
        return;
      }
      if (r.msg.type !== 'PAGES') throw new Error(`unexpected ${r.msg.type} on the urgent channel`);
      this.onPages(r.msg, r.offset, true);
    }
  }

  /** A PAGES frame from either channel. */
  onPages(msg: MessageOf<'PAGES'>, frameOffset: number, urgent: boolean): void {
    this.checker.checkPages(msg, frameOffset);
    if (msg.kind !== 'data' || !msg.data) throw new Error(`postcopy pages must carry data (frame at byte ${frameOffset})`);
    const first = msg.offset / HOST_PAGE_SIZE;
    // Place each run of still-pending pages with one UFFDIO_COPY; a page is never placed twice.
    for (let i = 0; i < msg.count; ) {
      if (this.states.get(first + i) !== PageState.PENDING) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < msg.count && this.states.get(first + j) === PageState.PENDING) j++;
      this.server!.fill(first + i, j - i, msg.data, i * HOST_PAGE_SIZE);
      this.digest?.set(first + i, msg.data.subarray(i * HOST_PAGE_SIZE, j * HOST_PAGE_SIZE), j - i);
      this.remaining -= j - i;
      if (urgent) this.pagesRequested += j - i;
      else this.pagesPushed += j - i;
      i = j;
    }
    if (this.requestedAt.size > 0) {
      const placedAt = performance.timeOrigin + performance.now();
      for (let p = first; p < first + msg.count; p++) {
        const t = this.requestedAt.get(p);
        if (t === undefined) continue;
        this.latenciesUs.push((placedAt - t) * 1000);
        this.requestedAt.delete(p);
      }
    }
    if (this.remaining === 0 && this.active) this.finish();
  }


  get pendingPages(): number {
    return this.remaining;
  }

  report(): PostcopyReport {
    const stats = this.server?.stats() ?? this.finalStats;
    const lat = latencySummary(this.latenciesUs);
    return {
      pagesRequested: this.pagesRequested,
      pagesPushed: this.pagesPushed,
      faults: stats?.faults ?? 0,
      faultLatencyUs: lat,
      guestBlockedMs: Math.round(this.latenciesUs.reduce((a, b) => a + b, 0) / 100) / 10,
      durationMs: Math.round((this.endMs ?? performance.now()) - this.t0),
    };
  }

  /** Stops serving faults. Only safe once every page is placed, or when the guest is gone. */
  async stop(): Promise<void> {
    this.watcher?.stop();
    this.watcher = null;
    if (this.server) {
      const s = this.server;
      this.finalStats = s.stats();
      this.server = null;
      await s.stop();
    }
    try {
      close(this.eventFd);
    } catch {
      /* already closed */
    }
  }

  /**
   * After a reconnection: the new urgent channel, and every request still unanswered sent again
   * (the old connection may have lost them). Faults taken meanwhile were queued in the ring.
   */
  attach(urgent: FramedChannel): void {
    this.urgent = urgent;
    const waiting = [...this.requestedAt.keys()].sort((a, b) => a - b);
    for (let i = 0; i < waiting.length; ) {
      let j = i + 1;
      while (j < waiting.length && waiting[j] === waiting[j - 1]! + 1 && j - i < 256) j++;
      this.request(waiting[i]!, j - i);
      i = j;
    }
    this.forwardRequests();
  }

  /** Pages this side holds among the first pageCount, as a bitmap (bit i = page i, LSB first). */
  receivedBits(pageCount: number): Buffer {
    const bits = Buffer.alloc(Math.ceil(pageCount / 8));
    for (let p = 0; p < pageCount; p++) if (this.states.get(p) !== PageState.PENDING) bits[p >>> 3]! |= 1 << (p & 7);
    return bits;
  }

  /** Faults waiting for a page from the source (the guest is blocked while there are any). */
  get waitingFaults(): number {
    return this.requestedAt.size;
  }

  private forwardRequests(): void {
    try {
      eventfdDrain(this.eventFd);
    } catch {
      /* spurious wake */
    }
    this.ring.drain((first, count, faultTime) => {
      for (let p = first; p < first + count; p++) if (!this.requestedAt.has(p)) this.requestedAt.set(p, faultTime);
      this.request(first, count);
    });
  }

  // A request lost with a broken connection is sent again by attach() after the reconnection.
  private request(first: number, count: number): void {
    if (this.urgent.closed) return;
    this.urgent.sendMessage({ type: 'PAGE_REQUEST', offset: first * HOST_PAGE_SIZE, count }).catch(() => undefined);
  }

  private finish(): void {
    if (this.endMs !== null) return;
    this.endMs = performance.now();
    this.done();
  }
}
