// FaultServer: serves userfaultfd MISSING faults on a GuestMemory from a PageSource, on a worker thread
// of its own (fault-worker.ts) that blocks in poll() on [uffd, wakeup eventfd, source fds...].
// Page states decide: known-zero → UFFDIO_ZEROPAGE locally; pending → one request per page however
// many threads fault on it; received → wake. place() puts background/bulk pages in from the caller's
// thread (the uffd is process-wide), with EEXIST counted as success.
import { Worker } from 'node:worker_threads';
import { Userfaultfd, REGISTER_MODE } from '../sys/uffd.js';
import { eventfd, eventfdSignal, close, EFD_NONBLOCK, EFD_CLOEXEC } from '../sys/fd.js';
import { PageState, type PageStateTable } from './page-state.js';
import type { PageSourceSpec } from './page-source.js';
import { HOST_PAGE_SIZE, type GuestMemory } from './guest-memory.js';
import { LATENCY_RING, STAT_SLOTS, readStats, type FaultStats } from './fault-stats.js';
import type { FaultWorkerData } from './fault-worker.js';
import { registerReservation, type Registration } from './uffd-registration.js';

export interface FaultServerOptions {
  /** Pages requested per fault: the faulting page plus following pending pages (default 1). */
  faultAround?: number;
  /**
   * Microseconds the fault thread keeps checking for the next fault (non-blocking reads) before sleeping
   * in poll(); saves its wake-up in bursts of faults at the cost of that much CPU after each one.
   * Default 50; 0 = always sleep. Only used when the source has no fds of its own.
   */
  spinUs?: number;
  /**
   * A fault worker started ahead (spare-worker.ts, kind 'fault'), adopted instead of starting one:
   * a lazy restore's guest cannot run before this thread serves faults, and booting it costs ~0.1 s.
   */
  spare?: Worker | null;
}

export class FaultServer {
  private worker: Worker | null;
  private failure: Error | null = null;
  private readonly stopped: Promise<void>;

  private constructor(
    readonly mem: GuestMemory,
    readonly states: PageStateTable,
    private readonly uffd: Userfaultfd,
    private readonly registration: Registration,
    private readonly wakeFd: number,
    private readonly statsView: Float64Array,
    private readonly latView: Float64Array,
    private readonly control: Int32Array,
    worker: Worker,
    stopped: Promise<void>,
  ) {
    this.worker = worker;
    this.stopped = stopped;
  }

  /**
   * Registers the whole reservation for MISSING faults and starts the fault worker. Pages the source holds
   * must be marked pending in `states` and be holes (dropped or never touched) before the guest runs.
   */
  static async start(mem: GuestMemory, states: PageStateTable, source: PageSourceSpec, opts: FaultServerOptions = {}): Promise<FaultServer> {
    if (states.pageCount !== mem.maxPageCount) throw new RangeError(`FaultServer: page-state table has ${states.pageCount} pages, the reservation ${mem.maxPageCount}`);
    const faultAround = opts.faultAround ?? 1;
    if (!Number.isInteger(faultAround) || faultAround < 1 || faultAround > 512) throw new RangeError('FaultServer: faultAround must be an integer in [1, 512]');
    const spinUs = opts.spinUs ?? 50;
    if (!Number.isInteger(spinUs) || spinUs < 0 || spinUs > 100000) throw new RangeError('FaultServer: spinUs must be an integer in [0, 100000]');
    const uffd = Userfaultfd.open({ nonblock: true });
    let wakeFd = -1;
    let registration: Registration | null = null;
    try {
      registration = registerReservation(uffd, mem, REGISTER_MODE.MISSING, 'fault server');
      wakeFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    } catch (e) {
      try { registration?.release(); } finally { uffd.close(); }
      throw e;
    }
    const held = registration;
    const stats = new SharedArrayBuffer(STAT_SLOTS * 8);
    const latencies = new SharedArrayBuffer(LATENCY_RING * 8);
    const control = new SharedArrayBuffer(4);
    const data: FaultWorkerData = {
      uffd: uffd.fd, wakeFd, base: mem.base, maxBytes: mem.maxBytes, states: states.shared(), stats, latencies,
      control, source, faultAround, spinUs,
    };
    let worker: Worker;
    if (opts.spare) {
      worker = opts.spare;
      worker.postMessage(data);
    } else {
      worker = new Worker(new URL('./fault-worker.js', import.meta.url), { workerData: data });
    }
    let server: FaultServer | null = null;
    const stopped = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
    await new Promise<void>((resolve, reject) => {
      worker.on('message', (m: { type: string; message?: string }) => {
        if (m.type === 'ready') resolve();
        if (m.type === 'error') {
          const err = new Error(`fault worker failed: ${m.message}`);
          if (server) server.failure = err;
          reject(err);
        }
      });
      worker.once('error', (e) => { if (server) server.failure = e; reject(e); });
      worker.once('exit', (code) => reject(new Error(`fault worker exited (${code}) before it was ready`)));
    }).catch((e: unknown) => {
      try { held.release(); } finally { uffd.close(); close(wakeFd); }
      throw e;
    });
    server = new FaultServer(mem, states, uffd, held, wakeFd, new Float64Array(stats), new Float64Array(latencies),
      new Int32Array(control), worker, stopped);
    return server;
  }

  /** The userfaultfd: other threads of this process place pages through it too (UFFDIO_COPY). */
  get uffdFd(): number {
    return this.uffd.fd;
  }

  /** Set if the fault worker died (faulting threads then stay blocked until stop()). */
  get error(): Error | null {
    return this.failure;
  }

  /**
   * Places `count` pending pages from bytes[offset..] (background/bulk delivery). Pages no longer pending
   * are skipped (received: already placed; EEXIST from a racing fault is success). A known-zero page cannot
   * be given bytes here: the fault worker may already have mapped the zero page there.
   * Returns the pages placed.
   */
  place(firstPage: number, bytes: ArrayBufferView, offset = 0, count = 1): number {
    let placed = 0;
    for (let p = firstPage; p < firstPage + count; p++) {
      const s = this.states.get(p);
      if (s === PageState.RECEIVED) continue;
      if (s === PageState.KNOWN_ZERO) throw new Error(`FaultServer.place: page ${p} is known-zero`);
      const r = this.uffd.copyAll(this.mem.pageAddress(p), bytes, offset + (p - firstPage) * HOST_PAGE_SIZE, HOST_PAGE_SIZE);
      this.states.markReceived(p);
      placed += r.copied;
    }
    return placed;
  }

  /**
   * Places a run of pages the caller knows to be holes (never placed, or dropped since) — e.g. a
   * migration destination writing precopy pages before the guest runs — with one UFFDIO_COPY, and
   * marks them received. Pages that turn out present (EEXIST) are counted in `existed`: the caller
   * overwrites those through memory (a present page never blocks).
   */
  fill(firstPage: number, count: number, bytes: ArrayBufferView, offset = 0): { copied: number; existed: number } {
    const r = this.uffd.copyAll(this.mem.pageAddress(firstPage), bytes, offset, count * HOST_PAGE_SIZE);
    for (let p = firstPage; p < firstPage + count; p++) this.states.markReceived(p);
    return r;
  }

  stats(): FaultStats {
    return readStats(this.statsView);
  }

  /** Recorded fault latencies in microseconds (event read → page placed), oldest first, at most LATENCY_RING. */
  latenciesUs(): Float64Array {
    const n = this.statsView[7]!;
    if (n <= LATENCY_RING) return this.latView.slice(0, n);
    const start = n % LATENCY_RING;
    const out = new Float64Array(LATENCY_RING);
    out.set(this.latView.subarray(start));
    out.set(this.latView.subarray(0, start), LATENCY_RING - start);
    return out;
  }

  /**
   * Stops the worker, then unregisters the memory (threads still blocked on a hole are woken and will
   * see zeros — stop only when every page the guest can touch is placed or the guest is gone) and closes fds.
   */
  async stop(): Promise<void> {
    if (!this.worker) return;
    Atomics.store(this.control, 0, 1);
    eventfdSignal(this.wakeFd);
    await this.stopped;
    this.worker = null;
    try {
      this.registration.release();
    } finally {
      this.uffd.close();
      close(this.wakeFd);
    }
    if (this.failure) throw this.failure;
  }
}
