// Page placement on the destination, and postcopy. The memory is registered with userfaultfd as
// soon as the migration is set up, so every page is placed with UFFDIO_COPY from the bytes as they
// arrive (this thread never writes a hole; it overwrites only pages already present) and the page
// state table is current at the commit: nothing is left to do inside the downtime.
// After the commit the guest runs over memory with holes:
//  - the FaultServer's worker reads every fault; a known-zero page is filled locally
//    (UFFDIO_ZEROPAGE), a pending one becomes a request in the RequestRing;
//  - the urgent thread (receive/urgent/request-thread.ts), woken by the ring's eventfd, sends each request on
//    the urgent channel and places the answers itself;
//  - this (main) thread places the bulk stream; both go through PagePlacer, so a page is placed
//    and counted once whichever channel brings it first.
// This thread never reads or writes guest memory: page bytes go from the socket's buffers to the
// kernel, and the verify digest is computed from those same bytes.
import { fileURLToPath } from 'node:url';
import { FaultServer } from '../../memory/fault-server.js';
import type { FaultStats } from '../../memory/fault-stats.js';
import { HOST_PAGE_SIZE, type GuestMemory } from '../../memory/guest-memory.js';
import { PageState, type PageStateTable } from '../../memory/page-state.js';
import { eventfd, close, dup, EFD_NONBLOCK, EFD_CLOEXEC } from '../../sys/fd.js';
import type { PageFrameChecker, MessageOf } from '../wire/index.js';
import { PageDigest } from '../verify/digest.js';
import { RequestRing } from './urgent/request-ring.js';
import { PagePlacer, createRequests } from './page-placer.js';
import type { UrgentRequests } from './urgent/requests.js';
import { latencySummary, type PostcopyReport } from '../session/report.js';
import { Userfaultfd, REGISTER_MODE, UFFD_FEATURE } from '../../sys/uffd.js';
import { registerReservation, type Registration } from '../../memory/uffd-registration.js';
import { FaultPlane } from '../dataplane/fault-plane.js';
import { PrecopyReceiver } from '../dataplane/precopy-plane.js';
import { nativeFaultAround } from '../dataplane/connect.js';
import { UrgentChannelError } from '../session/failures.js';

/** The native fault path's connection: a socket taken from the listener and the session's data plane secret. */
export interface DataplaneLink {
  fd: number;
  secret: Uint8Array;
}

export class IncomingMemory {
  private server: FaultServer | null = null;
  private placer: PagePlacer | null = null;
  private readonly eventFd: number;
  private stopped = false;
  private readonly ring = RequestRing.create();
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
  // ---- the native fault path (Feature.NATIVE_FAULTS): no fault worker, no urgent thread work ----
  /** This side's own userfaultfd and registration when the fault path is native (no FaultServer). */
  private ownUffd: Userfaultfd | null = null;
  private registration: Registration | null = null;
  private shared: { requests: ReturnType<typeof createRequests> } | null = null;
  private plane: FaultPlane | null = null;
  private planeLatencyFrom = 0;
  /** Counts of planes ended (a reconnection starts a new one). */
  private priorNative = { faults: 0, placed: 0, asked: 0, bytesSent: 0, bytesReceived: 0 };
  /** Pages the native thread placed unasked (a bulk stream on the data plane), counted with pagesPushed. */
  private nativePushed = 0;
  /** Set at activate(): pages were pending at the commit (see isPostcopy). */
  private pendingAtCommit = false;
  private activePages = 0;
  private nativeFailure: Error | null = null;
  private nativeLost: ((e: Error) => void) | null = null;
  private completionTimer: NodeJS.Timeout | null = null;

  constructor(
    private readonly mem: GuestMemory,
    private readonly states: PageStateTable,
    /** The urgent thread: it takes the fault worker's requests and places their answers. */
    private readonly urgent: UrgentRequests,
    private readonly checker: PageFrameChecker,
    /** Null when the source did not ask for --verify: hashing every page costs the stream time. */
    private readonly digest: PageDigest | null,
    /** Serve faults with the native data plane (native/dataplane/) instead of the fault worker and urgent thread. */
    readonly native = false,
  ) {
    this.eventFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    this.complete = new Promise((resolve) => (this.done = resolve));
  }

  /** Registers the memory with userfaultfd and starts the fault worker. Call before any page arrives. */
  async start(): Promise<void> {
    let uffdFd: number;
    if (this.native) {
      // The native fault thread reads this uffd from the commit on; until then nothing faults.
      this.ownUffd = openWithMove();
      try {
        this.registration = registerReservation(this.ownUffd, this.mem, REGISTER_MODE.MISSING, 'native fault path');
      } catch (e) {
        this.ownUffd.close();
        this.ownUffd = null;
        throw e;
      }
      uffdFd = this.ownUffd.fd;
    } else {
      this.server = await FaultServer.start(this.mem, this.states, {
        kind: 'module',
        module: fileURLToPath(new URL('./urgent/remote-page-source.js', import.meta.url)),
        options: { ring: this.ring.buffer, eventFd: this.eventFd },
      });
      uffdFd = this.server.uffdFd;
    }
    const shared = {
      uffd: uffdFd,
      base: this.mem.base,
      states: this.states.shared(),
      requests: createRequests(this.mem.maxPageCount),
      digest: this.digest ? { maxBytes: this.digest.pageCapacity * HOST_PAGE_SIZE, buffer: this.digest.buffer } : null,
    };
    this.placer = new PagePlacer(shared);
    this.shared = shared;
    // The urgent thread gets its own descriptor of the eventfd, closed when it stops watching it:
    // stop() below may close ours while that thread still polls.
    this.urgent.setup({ placer: shared, checker: { maxBytes: this.checker.maxBytes, seen: this.checker.seenBuffer }, ring: this.ring.buffer, ringFd: dup(this.eventFd) });
    this.urgent.onPlaced = (pages, latenciesUs) => this.notePlaced(pages, latenciesUs);
  }

  /**
   * Native precopy (Feature.NATIVE_PRECOPY): a native thread places the passes' pages from the data
   * plane connection `link` (a descriptor of its own, taken) through this side's userfaultfd, with
   * the same rules as placeData()/placeZero(), until the source's CLOSE.
   */
  startNativePrecopy(link: DataplaneLink): PrecopyReceiver {
    if (!this.ownUffd) {
      close(link.fd);
      throw new Error('native precopy needs the native fault path');
    }
    const shared = this.states.shared();
    return new PrecopyReceiver({
      sock: link.fd, secret: link.secret, uffd: this.ownUffd.fd, base: this.mem.base,
      states: new Uint8Array(shared.states, 0, shared.pageCount), stateCounts: new Int32Array(shared.counts, 0, 3),
      pageCount: this.mem.pageCount, ...(this.digest ? { digest: new Uint32Array(this.digest.buffer) } : {}),
      movePool: this.movePool('precopy'),
    });
  }

  /**
   * Whether a native thread places holes by moving pages in from a pool made ahead (dp_pool.c):
   * only where this side's uffd can move. Postcopy's fault thread does unless FERRY_MOVE_POOL=0.
   * The precopy receiver does only with FERRY_PRECOPY_MOVE_POOL=1: a pass keeps both cores busy
   * (sender and receiver), so the pool's thread only took CPU from them, and each move's TLB flush
   * costs too (part dataplane, two runs each: 611-643 MB/s and 3.07-3.24 CPU s/GiB with the pool,
   * 669-768 MB/s and 2.60-2.89 without).
   */
  private movePool(thread: 'postcopy' | 'precopy'): boolean {
    return this.ownUffd !== null && (this.ownUffd.features & UFFD_FEATURE.MOVE) !== 0 && movePoolWanted(thread);
  }

  /** Precopy data: pages [first, first+count) get `bytes` (newer copies replace older ones). */
  placeData(first: number, count: number, bytes: Buffer): void {
    for (const [s, e] of this.runsBy(first, first + count)) {
      const at = (s - first) * HOST_PAGE_SIZE;
      if (this.isPresent(s)) {
        this.mem.view().set(bytes.subarray(at, at + (e - s) * HOST_PAGE_SIZE), s * HOST_PAGE_SIZE); // present: never blocks
      } else {
        this.fill(s, e - s, bytes, at); // marks them received
      }
    }
    this.digest?.set(first, bytes, count);
  }

  /**
   * Runs the switchover's placement code once before the pause, on nothing that matters. With the
   * native precopy the bulk channel places no page before the switchover, so its first pages (the
   * guest's runtime pages, inside the downtime) ran cold: 0.15 ms hashing the first page for the
   * digest, 0.28 ms placing the first hole (a demo run, 2026-12-07 late). Here: a hash into a
   * scratch digest, and a UFFDIO_COPY onto a page already present, which writes nothing (EEXIST)
   * but takes the copy's whole path. Call it before the pause barrier's answer.
   */
  rehearsePlacement(): void {
    const page = Buffer.alloc(HOST_PAGE_SIZE);
    if (this.digest) new PageDigest(HOST_PAGE_SIZE).set(0, page);
    if (!this.ownUffd) return;
    for (let p = 0; p < this.mem.pageCount; p++) {
      if (!this.isPresent(p)) continue;
      this.ownUffd.copyAll(this.mem.pageAddress(p), page, 0, HOST_PAGE_SIZE);
      return;
    }
  }

  /** Places a run of holes with one UFFDIO_COPY and marks them received (FaultServer.fill without a server). */
  private fill(first: number, count: number, bytes: Buffer, at: number): void {
    if (this.server) {
      this.server.fill(first, count, bytes, at);
      return;
    }
    this.ownUffd!.copyAll(this.mem.pageAddress(first), bytes, at, count * HOST_PAGE_SIZE);
    for (let p = first; p < first + count; p++) this.states.markReceived(p);
  }

  /** Zero or never-touched pages: they must read as zero, so earlier copies are dropped. */
  placeZero(first: number, count: number): void {
    this.dropPopulated(first, first + count);
    for (let p = first; p < first + count; p++) this.states.markZero(p);
    this.digest?.setZero(first, count);
  }

  /** Pages the source will send again after the commit: holes, pending. */
  discard(first: number, count: number): void {
    this.dropPopulated(first, first + count);
    this.states.markPendingRange(first, first + count);
  }

  /** Called at the commit: from now on faults on pending pages go to the source. */
  activate(pageCount: number, dataplane: DataplaneLink | null = null): void {
    this.active = true;
    this.pendingAtCommit = this.pendingPages > 0;
    this.activePages = pageCount;
    this.urgent.activate(pageCount);
    if (this.native && dataplane && this.pendingPages > 0) {
      this.attachDataplane(dataplane);
      // The native thread places pages without a call here: look for the last one now and then.
      this.completionTimer = setInterval(() => this.checkDone(), 10);
      this.completionTimer.unref();
    } else if (dataplane) close(dataplane.fd);
    if (this.pendingPages === 0) this.finish();
  }

  /**
   * Starts the native fault thread on a data plane connection (at the commit, and again after a
   * reconnection: the new thread asks again for every page a fault still waits on).
   */
  attachDataplane(link: DataplaneLink): void {
    if (this.stopped || !this.ownUffd) {
      // Every page was placed before the connection was lost: only the closing messages are left.
      close(link.fd);
      return;
    }
    this.stopPlane();
    this.nativeFailure = null;
    const plane = new FaultPlane({
      uffd: this.ownUffd!.fd, sock: link.fd, base: this.mem.base, pageCount: this.activePages, states: this.states,
      requests: this.shared!.requests, secret: link.secret, faultAround: nativeFaultAround(), ...(this.digest ? { digest: this.digest.buffer } : {}),
      movePool: this.movePool('postcopy'),
    });
    this.plane = plane;
    void plane.ended.then((err) => {
      if (err === null || this.plane !== plane || this.stopped) return;
      const e = new UrgentChannelError(`native data plane: ${err}`);
      this.nativeFailure = e;
      this.nativeLost?.(e);
      this.nativeLost = null;
    });
  }

  /** Rejects when the native fault thread fails (its connection lost or refused); never without it. */
  whenNativeLost(): Promise<never> {
    return new Promise<never>((_, reject) => {
      if (this.nativeFailure) return reject(this.nativeFailure);
      this.nativeLost = reject;
    });
  }

  /** Takes the native thread's figures into this side's: pages it placed and its faults' latencies. */
  private collectNative(): void {
    if (!this.plane) return;
    const { samples, next } = this.plane.latenciesSince(this.planeLatencyFrom);
    this.planeLatencyFrom = next;
    for (const l of samples) this.latenciesUs.push(l);
    const s = this.plane.read();
    // Placed pages a request asked for are requested ones; the others came with the bulk stream.
    this.pagesRequested = this.priorNative.asked + s.placedAsked;
    this.nativePushed = this.priorNative.placed - this.priorNative.asked + (s.pagesPlaced - s.placedAsked);
  }

  /** Bytes the native fault thread carried over every data plane connection so far. */
  get dataplaneBytes(): { sent: number; received: number } {
    const s = this.plane?.read();
    return { sent: this.priorNative.bytesSent + (s?.bytesSent ?? 0), received: this.priorNative.bytesReceived + (s?.bytesReceived ?? 0) };
  }

  private stopPlane(): void {
    if (!this.plane) return;
    this.collectNative();
    const s = this.plane.read();
    this.plane.stop();
    this.priorNative.faults += s.faults;
    this.priorNative.placed += s.pagesPlaced;
    this.priorNative.asked += s.placedAsked;
    this.priorNative.bytesSent += s.bytesSent;
    this.priorNative.bytesReceived += s.bytesReceived;
    this.plane = null;
    this.planeLatencyFrom = 0;
  }

  /**
   * Postcopy: pages were pending at the commit. Kept from then on: the native thread places pages
   * without a call here, so pending and placed counts can read 0 and 0 for a while after the last
   * one (a small postcopy ended so within milliseconds, and the destination took it for precopy:
   * it skipped FAULT_STATS and its recovery, and the source, expecting them, broke the session).
   */
  get isPostcopy(): boolean {
    return this.pendingAtCommit || this.pendingPages > 0 || this.pagesRequested + this.pagesPushed + this.nativePushed > 0;
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

  /** A PAGES frame of the bulk stream after the commit. */
  onBulkPages(msg: MessageOf<'PAGES'>, frameOffset: number): void {
    this.checker.checkPages(msg, frameOffset);
    if (msg.kind !== 'data' || !msg.data) throw new Error(`postcopy pages must carry data (frame at byte ${frameOffset})`);
    const { placed, latenciesUs } = this.placer!.place(msg);
    this.pagesPushed += placed;
    for (const l of latenciesUs) this.latenciesUs.push(l);
    this.checkDone();
  }

  /** Pages the urgent thread placed (answers to requests). */
  private notePlaced(pages: number, latenciesUs: number[]): void {
    this.pagesRequested += pages;
    for (const l of latenciesUs) this.latenciesUs.push(l);
    this.checkDone();
  }

  private checkDone(): void {
    this.collectNative();
    if (this.active && this.pendingPages === 0) this.finish();
  }

  get pendingPages(): number {
    return this.states.pendingCount;
  }

  /** Pages placed after the commit (answers and the bulk stream): postcopy's share of the pages received. */
  get postcopyPlaced(): number {
    this.collectNative();
    return this.pagesRequested + this.pagesPushed + this.nativePushed;
  }

  /** Every fault's wait so far (µs), for GET /metrics' histogram. */
  get faultLatenciesUs(): readonly number[] {
    this.collectNative();
    return this.latenciesUs;
  }

  report(): PostcopyReport {
    this.collectNative();
    const stats = this.server?.stats() ?? this.finalStats;
    const lat = latencySummary(this.latenciesUs);
    const nativeFaults = this.native ? this.priorNative.faults + (this.plane?.read().faults ?? 0) : 0;
    return {
      pagesRequested: this.pagesRequested,
      pagesPushed: this.pagesPushed + this.nativePushed,
      faults: (stats?.faults ?? 0) + nativeFaults,
      faultLatencyUs: lat,
      guestBlockedMs: Math.round(this.latenciesUs.reduce((a, b) => a + b, 0) / 100) / 10,
      durationMs: Math.round((this.endMs ?? performance.now()) - this.t0),
    };
  }

  /** Stops serving faults. Only safe once every page is placed, or when the guest is gone. */
  async stop(): Promise<void> {
    // Once only: every postcopy session ends with a stop(), and a second close of the eventfd
    // would hit whatever reused its number (once, the urgent thread's new socket).
    if (this.stopped) return;
    this.stopPlane();
    this.stopped = true;
    if (this.completionTimer) clearInterval(this.completionTimer);
    if (this.registration) {
      try {
        this.registration.release();
      } finally {
        this.registration = null;
        this.ownUffd?.close();
        this.ownUffd = null;
      }
    }
    if (this.server) {
      const s = this.server;
      this.finalStats = s.stats();
      this.server = null;
      await s.stop();
    }
    close(this.eventFd);
  }

  /** Pages this side holds among the first pageCount, as a bitmap (bit i = page i, LSB first). */
  receivedBits(pageCount: number): Buffer {
    const bits = Buffer.alloc(Math.ceil(pageCount / 8));
    for (let p = 0; p < pageCount; p++) if (this.states.get(p) !== PageState.PENDING) bits[p >>> 3]! |= 1 << (p & 7);
    return bits;
  }

  /** Pages the guest waits for from the source (it is blocked while there are any). */
  get waitingFaults(): number {
    return this.placer?.waitingPages ?? 0;
  }

  private finish(): void {
    if (this.endMs !== null) return;
    if (this.completionTimer) clearInterval(this.completionTimer);
    this.endMs = performance.now();
    this.done();
  }
}

/**
 * The native fault path's userfaultfd, with UFFD_FEATURE_MOVE where the kernel has it (6.8 on): the
 * fault thread then places pages by moving them from a pool made ahead (dp_pool.c). Where the
 * kernel refuses the feature, without it: pages are copied, as before.
 */
function openWithMove(): Userfaultfd {
  try {
    return Userfaultfd.open({ nonblock: true, features: UFFD_FEATURE.MOVE });
  } catch {
    return Userfaultfd.open({ nonblock: true });
  }
}

/** The environment's part of IncomingMemory's pool rule (see movePool): FERRY_MOVE_POOL=0 turns it off, FERRY_PRECOPY_MOVE_POOL=1 on for precopy. */
export function movePoolWanted(thread: 'postcopy' | 'precopy', env: NodeJS.ProcessEnv = process.env): boolean {
  if (env['FERRY_MOVE_POOL'] === '0') return false;
  return thread === 'postcopy' || env['FERRY_PRECOPY_MOVE_POOL'] === '1';
}
