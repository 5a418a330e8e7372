// Loads the ferry_dataplane addon (native/dataplane/: the postcopy page data plane's native threads;
// the only module that does) and declares its exact interface. Unlike ferry_native, which only
// wraps syscalls, this addon runs threads of its own: see native/dataplane/dp.h.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Which end of the data plane connection a thread is: the one that connected, or the one that accepted. */
export const DataplaneRole = { CONNECTOR: 0, ACCEPTOR: 1 } as const;
export type DataplaneRoleValue = (typeof DataplaneRole)[keyof typeof DataplaneRole];

/** Bytes of the TLS exporter secret every key of a data plane connection comes from. */
export const DATAPLANE_SECRET_BYTES = 32;

interface CommonOptions {
  /** A connected stream socket; the thread takes it (it is closed when the thread is stopped). */
  sock: number;
  role: DataplaneRoleValue;
  /** Limit on the hello exchange and FINISHED frames. */
  timeoutMs: number;
  /** Nice -10 for the thread where allowed (native/dataplane/dp_wire.c says why not real-time, as src/sys/sched.ts gives JavaScript threads). */
  raisePriority: boolean;
  secret: Uint8Array;
}

export interface FaultThreadOptions extends CommonOptions {
  /** The guest memory's userfaultfd (registered for MISSING faults; non-blocking). Not taken. */
  uffd: number;
  /** Address of guest page 0. */
  base: number;
  /** Pages the source may send: answers for pages at or beyond are refused. */
  pageCount: number;
  /** Pages asked for per fault: the faulting one plus following pending ones. */
  faultAround: number;
  /** PageStateTable bytes (src/memory/page-state.ts), one per page of the reservation. */
  states: Uint8Array;
  /** PageStateTable counts: [known-zero, pending, received]. */
  stateCounts: Int32Array;
  /** Per page, the epoch µs of the fault that asked for it (0 = none): SharedRequests.times. */
  times: BigInt64Array;
  /** [pages with a request outstanding]: SharedRequests.waiting. */
  waiting: Int32Array;
  /** FaultThreadStat slots. */
  stats: Float64Array;
  /** Ring of fault latencies in µs (request noted → page placed); stats[LATENCY_COUNT] counts them. */
  latencies: Float64Array;
  /** --verify: the PageDigest's per-page hashes (two u32 per page); the thread records the pages it places. */
  digest?: Uint32Array;
  /**
   * Place pages with UFFDIO_MOVE from a pool of pages a thread of its own makes ahead
   * (dp_pool.c), falling back to UFFDIO_COPY; the uffd must have UFFD_FEATURE_MOVE.
   */
  movePool?: boolean;
}

/** The snapshot fault thread (native/dataplane/dp_file.c): faults served from files, page p at byte p * 4096. */
export interface FileFaultOptions {
  /** The guest memory's userfaultfd (registered for MISSING faults; non-blocking). Not taken. */
  uffd: number;
  /** Address of guest page 0. */
  base: number;
  /** Pages read and placed per fault: the faulting one plus following pending ones. */
  faultAround: number;
  raisePriority: boolean;
  /** PageStateTable bytes, one per page of the reservation; pending pages are read from the files. */
  states: Uint8Array;
  /** PageStateTable counts: [known-zero, pending, received]. */
  stateCounts: Int32Array;
  /** STAT slots of src/memory/fault-stats.ts. */
  stats: Float64Array;
  /** Ring of fault latencies in µs (event read → page placed). */
  latencies: Float64Array;
  /** Open descriptors of the files (at most 64); the thread reads duplicates of its own. */
  layerFds: Int32Array;
  /** Per page, the index in layerFds of the file holding it; -1 (or beyond its end): zero. */
  location: Int16Array;
}

/** An eager snapshot restore's load (native/dataplane/dp_load.c): chunks read, checked and copied on `threads` threads. */
export interface LoadOptions {
  /** Guest memory from page 0. */
  memory: Uint8Array;
  /** Per page, the index in layerFds of the newest file holding it; -1: none (the page is left as it is). */
  location: Int16Array;
  /** Open descriptors of the files (at most 64); the threads read duplicates of their own. */
  layerFds: Int32Array;
  /** Per chunk (at most 256 pages, page p of a file at byte p * 4096): its file, first page, pages, sha256. */
  chunkLayer: Uint32Array;
  chunkPage: Uint32Array;
  chunkCount: Uint32Array;
  chunkSha256: Uint8Array;
  /** Per chunk, its fast check (CHUNK_CHECK_BYTES, as chunkCheck gives it), checked instead of its sha256; an entry of zeros: none (the sha256 is checked). */
  chunkCrc?: Uint8Array;
  /** 1 to 8. */
  threads: number;
  /**
   * Fresh memory: each thread allocates the pages of a chunk it reads in place in one
   * MADV_POPULATE_WRITE first (GuestMemory.prefault's second half, shared out among the threads).
   * Never on memory registered with userfaultfd for missing pages.
   */
  populate?: boolean;
}

export interface ScanOptions {
  /** The bytes to walk: [base, end), page aligned (the guest memory's current size). */
  base: number;
  end: number;
  /** Out: [start, end) page index pairs of the written pages, adjacent runs merged. */
  runs: Uint32Array;
  /** Out, Int32Array over a SharedArrayBuffer: [ScanStatus, runs written]; the status is stored last. */
  status: Int32Array;
  /** SCHED_FIFO 1 for the walk where allowed, else nice -10 (it is short, and a downtime waits for it). */
  raisePriority?: boolean;
  /** Start and set up now, walk at wake(handle): the thread's start is then out of the downtime. */
  armed?: boolean;
}

/** The source's --verify digest (dp_digest.c): every page's 64-bit hash, as verify/digest.ts computes it. */
export interface DigestOptions {
  /** The frozen guest memory from page 0. */
  memory: Uint8Array;
  pageCount: number;
  /** Bitmap words of the pages present; a page whose bit is clear is hashed as zero, unread. */
  present: Uint32Array;
  /** Out: [lo, hi] per page. */
  hashes: Uint32Array;
}

/** dp.h DP_SCAN_*: OVERFLOW means more runs than `runs` holds (none of them is to be used). */
export const ScanStatus = { RUNNING: 0, DONE: 1, OVERFLOW: 2, FAILED: 3 } as const;

export interface AnswerThreadOptions extends CommonOptions {
  /** The guest's memory from page 0 (the source's: no holes). */
  memory: Uint8Array;
  pageCount: number;
  /** PageBitmap words: pages the destination lacks. */
  pending: Uint32Array;
  /** PageClaims words shared with the bulk stream. */
  claims: Uint32Array;
  /** Stream every pending page nobody claimed too, after the answers: the thread is the postcopy bulk stream (default false). */
  bulk?: boolean;
  /** --max-bandwidth: bytes/s of bulk frames (a token bucket, a burst of a few frames; answers are never paced); absent or 0: no cap. */
  maxBandwidth?: number;
  /** AnswerThreadStat slots. */
  stats: Float64Array;
}

export interface PrecopySendOptions extends CommonOptions {
  /** The running guest's memory from page 0, as far as it reaches now: a pass past its end is refused (setMemory hands over a grown one). */
  memory: Uint8Array;
  /** Pages the `pages` bitmap covers (the reservation). */
  maxPages: number;
  /** --max-bandwidth: bytes/s the stream may send (a token bucket, a burst of a few frames); absent or 0: no cap. */
  maxBandwidth?: number;
  /** PageBitmap words: the pages of the pass TypeScript asks for. */
  pages: Uint32Array;
  /** PrecopyJob slots TypeScript writes before wake(). */
  job: Int32Array;
  /** PrecopySendStat slots. */
  stats: Float64Array;
}

export interface PrecopyReceiveOptions extends CommonOptions {
  /** The guest memory's userfaultfd (holes are placed with UFFDIO_COPY). Not taken. */
  uffd: number;
  base: number;
  /** PageStateTable bytes and counts, as FaultThreadOptions. */
  states: Uint8Array;
  stateCounts: Int32Array;
  /** [pages in the memory now]: frames beyond wait until TypeScript raises it (GROW). */
  limit: Int32Array;
  /** PrecopyReceiveStat slots. */
  stats: Float64Array;
  digest?: Uint32Array;
  /** Holes placed by UFFDIO_MOVE from a pool made at most 128 MiB ahead (as FaultThreadOptions.movePool). */
  movePool?: boolean;
}

/** Int32 slots of a native precopy sender's job (dp.h PJ_*). */
export const PrecopyJob = {
  PASS_SEQ: 0, PASS: 1, LIMIT: 2, OTHERS_ZERO: 3, CLOSE: 4,
  /** 1: the rate cap is lifted; 0: it holds (again, with a full bucket). Written with wake(). */
  UNCAPPED: 5,
  /** 1: the pass in flight sends no more of its bitmap's pages (its ZERO ranges still go). */
  CUT: 6,
  SLOTS: 8,
} as const;
/**
 * Float64 slots of the precopy sender's stats (PS_*). CUT_AT: the first page of the last pass's
 * bitmap that a cut left out (its limit when none was); CURSOR: the page the pass in flight is at.
 */
export const PrecopySendStat = { PASS_DONE: 0, DATA_PAGES: 1, ZERO_PAGES: 2, BYTES_SENT: 3, BYTES_RECEIVED: 4, STATE: 5, CUT_AT: 6, CURSOR: 7, SLOTS: 8 } as const;
/** Float64 slots of the precopy receiver's stats (PR_*): MARK is the last pass placed + 1. */
export const PrecopyReceiveStat = {
  MARK: 0, DATA_PAGES: 1, ZERO_PAGES: 2, FRAMES: 3, BYTES_SENT: 4, BYTES_RECEIVED: 5, STATE: 6, CLOSED: 7,
  /** Of DATA_PAGES, holes moved in from the pool made ahead (movePool). */
  MOVED: 8,
  /** Pages of that pool made so far. */
  POOL_READY: 9,
  /** From here, per pass (pass % MARK_RING_LEN): the pages placed (data + zero) when its MARK came. */
  MARK_RING: 10, MARK_RING_LEN: 256, SLOTS: 10 + 256,
} as const;

/** An opaque handle of a running thread. */
export type DataplaneHandle = object & { readonly __dataplane: unique symbol };

export interface FerryDataplane {
  /** Starts the destination's fault thread. onExit(error | null) is called once when the thread ends. */
  startFault(options: FaultThreadOptions, onExit: (error: string | null) => void): DataplaneHandle;
  startAnswer(options: AnswerThreadOptions, onExit: (error: string | null) => void): DataplaneHandle;
  /** Native precopy (dp_precopy.c): the source's pass sender and the destination's receiver. */
  startPrecopySend(options: PrecopySendOptions, onExit: (error: string | null) => void): DataplaneHandle;
  startPrecopyReceive(options: PrecopyReceiveOptions, onExit: (error: string | null) => void): DataplaneHandle;
  /** The snapshot fault thread (dp_file.c): a lazy restore's holes filled from its layer files. */
  startFileFaults(options: FileFaultOptions, onExit: (error: string | null) => void): DataplaneHandle;
  /**
   * An eager restore's load (dp_load.c): onExit(null) once every chunk is checked and its pages
   * placed; onExit("checksum layer L page P count C" | "truncated layer L byte B" | ...) at the
   * first failure. A chunk wholly its layer's is read into `memory` and checked there, so after a
   * failure `memory` holds unchecked bytes and must not be run; a chunk read aside copies nothing.
   */
  startLoad(options: LoadOptions, onExit: (error: string | null) => void): DataplaneHandle;
  /**
   * A walk of the page tables for written pages (dp_scan.c, PAGEMAP_SCAN PAGE_IS_WRITTEN, read
   * only) on a thread of its own; its result is in `status` and `runs` when status[0] leaves
   * RUNNING, with no turn of the event loop needed. stop() joins it.
   */
  startScan(options: ScanOptions, onExit: (error: string | null) => void): DataplaneHandle;
  /** The page hashes of a frozen memory (dp_digest.c) on a thread of its own; onExit(null) once all are in `hashes`. */
  startDigest(options: DigestOptions, onExit: (error: string | null) => void): DataplaneHandle;
  /** A snapshot chunk's fast check (dp_check.c): CRC-32C of each quarter of `bytes`, four u32 little-endian. */
  chunkCheck(bytes: Uint8Array): Buffer;
  /**
   * A precopy sender's later passes read this view of the guest's memory (it grew). Only between
   * passes: refused while one is in flight.
   */
  setMemory(handle: DataplaneHandle, memory: Uint8Array): void;
  /** Makes the thread look at its job slots again. */
  wake(handle: DataplaneHandle): void;
  /** Stops and joins the thread; returns why it ended (null: stopped, no failure). Idempotent. */
  stop(handle: DataplaneHandle): string | null;
}

/** Float64 slots of the fault thread's stats (native/dataplane/dp.h, DS_*). */
export const FaultThreadStat = {
  FAULTS: 0, ZERO_FILLS: 1, REQUESTS: 2, DEDUPED: 3, WAKES: 4, PAGES_PLACED: 5, EEXIST: 6, LATENCY_COUNT: 7,
  BYTES_SENT: 8, BYTES_RECEIVED: 9, PAGES_RECEIVED: 10, STATE: 11,
  /** Of PAGES_PLACED, those a request asked for (a fault or fault-around); the rest came unasked (the bulk stream). */
  PLACED_ASKED: 12,
  /** Of PAGES_PLACED, those moved in from the pool of pages made ahead (movePool); the rest were copied. */
  MOVED: 13,
  /** Pages of that pool made so far. */
  POOL_READY: 14,
} as const;
/** Float64 slots of the answer thread's stats (SS_*). */
export const AnswerThreadStat = {
  REQUESTS: 0, PAGES_SENT: 1, CURSOR: 2, TWICE: 3, BYTES_SENT: 4, BYTES_RECEIVED: 5,
  /** Of PAGES_SENT, those the bulk stream sent (bulk mode). */
  PUSHED: 6,
  /** 1 once the bulk stream has sent every pending page (bulk mode). */
  BULK_DONE: 7,
  STATE: 11,
} as const;
export const DATAPLANE_STAT_SLOTS = 16;
/** Bytes of chunkCheck's result. */
export const CHUNK_CHECK_BYTES = 16;
/** Values of the STATE slot. */
export const DataplaneState = { HANDSHAKE: 0, RUNNING: 1, STOPPED: 2, FAILED: 3 } as const;

function addonPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const p = join(dir, 'build', 'Release', 'ferry_dataplane.node');
    if (existsSync(p)) return p;
    dir = dirname(dir);
  }
  throw new Error('ferry_dataplane addon not built: run `npm ci` (node-gyp rebuild --nodedir=/usr)');
}

const require = createRequire(import.meta.url);
let loaded: FerryDataplane | null = null;
/** The addon, loaded on first use: a process that never runs the native fault path never loads it. */
export function dataplaneAddon(): FerryDataplane {
  return (loaded ??= require(addonPath()) as FerryDataplane);
}

/** FERRY_NATIVE_FAULTS=0 keeps every fault path (postcopy's, a lazy restore's) off the native threads. */
export const DATAPLANE_FEATURE_ENV = 'FERRY_NATIVE_FAULTS';

/** Whether the native fault paths may run in this process: not turned off, and the addon loads. */
export function dataplaneEnabled(): boolean {
  return process.env[DATAPLANE_FEATURE_ENV] !== '0' && dataplaneLoadFailure() === null;
}

let loadFailure: string | null | undefined;
/**
 * Why the addon cannot be loaded in this process, or null when it can (tried once, then remembered):
 * the native path is chosen only when this is null, so a missing or broken build falls back to the
 * JavaScript fault path instead of failing a migration.
 */
export function dataplaneLoadFailure(): string | null {
  if (loadFailure === undefined) {
    try {
      dataplaneAddon();
      loadFailure = null;
    } catch (err) {
      loadFailure = err instanceof Error ? err.message : String(err);
    }
  }
  return loadFailure;
}

/**
 * The addon's chunkCheck, or null where the addon cannot load or was built before it (such a build
 * also lacks the load threads' `populate`): the one test of both for the writer and the load.
 */
export function chunkCheckOf(): ((bytes: Uint8Array) => Buffer) | null {
  if (dataplaneLoadFailure() !== null) return null;
  const check = dataplaneAddon().chunkCheck as FerryDataplane['chunkCheck'] | undefined;
  return typeof check === 'function' ? check : null;
}
