// FaultServer: serves userfaultfd MISSING faults on a GuestMemory from a PageSource, on a worker thread
// of its own (fault-worker.ts) that blocks in poll() on [uffd, wakeup eventfd, source fds...] — or,
// for pages that live in files (a snapshot's layers: `files`), on a native thread of the data plane
// (native/dataplane/dp_file.c), which needs no worker to boot and no JavaScript per fault.
// Page states decide: known-zero → UFFDIO_ZEROPAGE locally; pending → one request per page however
// many threads fault on it; received → wake. place() puts background/bulk pages in from the caller's
// thread (the uffd is process-wide), with EEXIST counted as success.
import { Worker } from 'node:worker_threads';
import { Userfaultfd, REGISTER_MODE } from '../sys/uffd.js';
import { eventfd, eventfdSignal, close, EFD_NONBLOCK, EFD_CLOEXEC } from '../sys/fd.js';
import { dataplaneAddon, dataplaneEnabled } from '../sys/dataplane.js';
import { closeSync, openSync } from 'node:fs';
import { PageState, type PageStateTable } from './page-state.js';
import type { PageSourceSpec } from './page-source.js';
import { HOST_PAGE_SIZE, type GuestMemory } from './guest-memory.js';
import { LATENCY_RING, STAT_SLOTS, readStats, type FaultStats } from './fault-stats.js';
import type { FaultWorkerData } from './fault-worker.js';
import { registerReservation, type Registration } from './uffd-registration.js';
import { raisedPriorityWanted } from '../sys/sched.js';

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
  /**
   * Where the source's pages live when they are in files: page p at byte p * 4096 of
   * `files[location[p]]` (-1: zero). Given, and the ferry_dataplane addon loads, and
   * FERRY_NATIVE_FAULTS is not 0, faults are served by a native thread reading those files, and
   * `source` is not used (the worker is the fallback).
   */
  files?: PageFiles;
}

/** Pages in files (FaultServerOptions.files): per page, which file holds it at byte p * 4096. */
export interface PageFiles {
  files: string[];
  /** Int16Array over this buffer: per page, the index of the file holding it, -1 = none (zero). */
  location: SharedArrayBuffer;
}

/** The thread serving the faults: stopped once, reporting a failure through the server. */
interface FaultThread {
  stop(): Promise<void>;
}


export class FaultServer {
  private thread: FaultThread | null = null;
  private failure: Error | null = null;

  private constructor(
    readonly mem: GuestMemory,
    readonly states: PageStateTable,
    private readonly uffd: Userfaultfd,
    private readonly registration: Registration,
    private readonly wakeFd: number,
    private readonly statsView: Float64Array,
    private readonly latView: Float64Array,
    /** Which thread serves the faults: the fault worker, or the native file thread (dp_file.c). */
    readonly servedBy: 'worker' | 'native',
  ) {}

  /**
   * Registers the whole reservation for MISSING faults and starts the fault thread. Pages the source holds
   * must be marked pending in `states` and be holes (dropped or never touched) before the guest runs.
   */
  static async start(mem: GuestMemory, states: PageStateTable, source: PageSourceSpec, opts: FaultServerOptions = {}): Promise<FaultServer> {
    try {
      return await FaultServer.open(mem, states, source, opts);
    } catch (err) {
      void opts.spare?.terminate(); // a spare given and not serving: it must not keep the process alive
      throw err;
    }
  }

  private static async open(mem: GuestMemory, states: PageStateTable, source: PageSourceSpec, opts: FaultServerOptions): Promise<FaultServer> {
    if (states.pageCount !== mem.maxPageCount) throw new RangeError(`FaultServer: page-state table has ${states.pageCount} pages, the reservation ${mem.maxPageCount}`);
    const faultAround = opts.faultAround ?? 1;
    if (!Number.isInteger(faultAround) || faultAround < 1 || faultAround > 512) throw new RangeError('FaultServer: faultAround must be an integer in [1, 512]');
    const spinUs = opts.spinUs ?? 50;
    if (!Number.isInteger(spinUs) || spinUs < 0 || spinUs > 100000) throw new RangeError('FaultServer: spinUs must be an integer in [0, 100000]');
    const native = opts.files !== undefined && dataplaneEnabled();
    if (native) void opts.spare?.terminate(); // a worker started ahead in case, not needed
    const uffd = Userfaultfd.open({ nonblock: true });
    let wakeFd = -1;
    let registration: Registration | null = null;
    try {
      registration = registerReservation(uffd, mem, REGISTER_MODE.MISSING, 'fault server');
      if (!native) wakeFd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    } catch (e) {
      try { registration?.release(); } finally { uffd.close(); }
      throw e;
    }
    const held = registration;
    const stats = new SharedArrayBuffer(STAT_SLOTS * 8);
    const latencies = new SharedArrayBuffer(LATENCY_RING * 8);
    const server = new FaultServer(mem, states, uffd, held, wakeFd, new Float64Array(stats), new Float64Array(latencies), native ? 'native' : 'worker');
    const fail = (e: Error) => { server.failure ??= e; };
    try {
      server.thread = native
        ? startFileThread(mem, states, opts.files!, faultAround, uffd.fd, stats, latencies, fail)
        : await startWorkerThread({ uffd: uffd.fd, wakeFd, base: mem.base, maxBytes: mem.maxBytes, states: states.shared(), stats, latencies,
            control: new SharedArrayBuffer(4), source, faultAround, spinUs }, opts.spare ?? null, fail);
    } catch (e) {
      try { held.release(); } finally { uffd.close(); if (wakeFd >= 0) close(wakeFd); }
      throw e;
    }
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
    const thread = this.thread;
    if (!thread) return;
    this.thread = null;
    try {
      await thread.stop();
    } finally {
      try {
        this.registration.release();
      } finally {
        this.uffd.close();
        if (this.wakeFd >= 0) close(this.wakeFd);
      }
    }
    if (this.failure) throw this.failure;
  }

}

/** The fault worker (fault-worker.ts), adopted from a spare or started; resolves once it serves faults. */
async function startWorkerThread(data: FaultWorkerData, spare: Worker | null, fail: (e: Error) => void): Promise<FaultThread> {
  let worker: Worker;
  if (spare) {
    worker = spare;
    worker.postMessage(data);
  } else {
    worker = new Worker(new URL('./fault-worker.js', import.meta.url), { workerData: data });
  }
  const stopped = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  await new Promise<void>((resolve, reject) => {
    worker.on('message', (m: { type: string; message?: string }) => {
      if (m.type === 'ready') resolve();
      if (m.type === 'error') {
        const err = new Error(`fault worker failed: ${m.message}`);
        fail(err);
        reject(err);
      }
    });
    worker.once('error', (e) => { fail(e); reject(e); });
    worker.once('exit', (code) => reject(new Error(`fault worker exited (${code}) before it was ready`)));
  });
  const control = new Int32Array(data.control);
  return {
    async stop() {
      Atomics.store(control, 0, 1);
      eventfdSignal(data.wakeFd);
      await stopped;
    },
  };
}

/**
 * The native file thread (dp_file.c): it serves faults from the moment it starts, reading
 * duplicates of the files' descriptors (ours are closed once it has them).
 */
function startFileThread(mem: GuestMemory, states: PageStateTable, files: PageFiles, faultAround: number, uffd: number,
  stats: SharedArrayBuffer, latencies: SharedArrayBuffer, fail: (e: Error) => void): FaultThread {
  const dp = dataplaneAddon();
  const shared = states.shared();
  const fds: number[] = [];
  let handle: ReturnType<typeof dp.startFileFaults>;
  try {
    for (const f of files.files) fds.push(openSync(f, 'r'));
    handle = dp.startFileFaults({
      uffd, base: mem.base, faultAround, raisePriority: raisedPriorityWanted(),
      states: new Uint8Array(shared.states, 0, states.pageCount), stateCounts: new Int32Array(shared.counts, 0, 3),
      stats: new Float64Array(stats), latencies: new Float64Array(latencies), layerFds: Int32Array.from(fds), location: new Int16Array(files.location),
    }, (error) => { if (error !== null) fail(new Error(`fault thread failed: ${error}`)); });
  } finally {
    for (const fd of fds) closeSync(fd);
  }
  return {
    async stop() {
      const error = dp.stop(handle);
      if (error !== null) fail(new Error(`fault thread failed: ${error}`));
    },
  };
}
