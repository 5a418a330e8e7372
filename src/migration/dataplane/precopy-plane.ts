// Native precopy (issue 14): the precopy passes' pages travel on the data plane connection, moved by
// native threads (native/dataplane/dp_precopy.c); TypeScript keeps the policy. The source's
// PrecopySender is told each pass's pages and waits until they are written; the destination's
// PrecopyReceiver places them and publishes each pass's MARK, which the bulk channel's PASS_END
// waits for. CLOSE (each way) ends the precopy session before the switchover, so the postcopy
// threads start later on the same connection with a fresh hello and keys of their own.
import {
  dataplaneAddon, DataplaneRole, DataplaneState, PrecopyJob, PrecopyReceiveStat, PrecopySendStat, type DataplaneHandle,
} from '../../sys/dataplane.js';
import type { PageBitmap } from '../../memory/page-bitmap.js';
import { startOwning } from './socket-fd.js';

/** How often a waiting side looks at the thread's counters (a pass's end, not a page: rare). */
const POLL_MS = 1;

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Whether the source moves precopy's pages natively: yes unless FERRY_NATIVE_PRECOPY=0 or FERRY_NATIVE_BULK=0. */
export function nativePrecopyEnabled(): boolean {
  return process.env['FERRY_NATIVE_PRECOPY'] !== '0' && process.env['FERRY_NATIVE_BULK'] !== '0';
}

abstract class PrecopyThread {
  readonly ended: Promise<string | null>;
  protected handle: DataplaneHandle | null = null;
  private result: string | null = null;
  /** Why the thread ended, once it has (null: cleanly, or not yet). */
  protected failure: string | null = null;
  protected done = false;

  constructor() {
    let resolveEnd!: (e: string | null) => void;
    this.ended = new Promise((resolve) => (resolveEnd = resolve));
    this.onExit = (e) => {
      this.done = true;
      this.failure = e;
      resolveEnd(e);
    };
  }

  protected readonly onExit: (e: string | null) => void;

  /** Joins the thread and closes its socket; why it ended (null: no failure). Idempotent. */
  stop(): string | null {
    if (this.handle) {
      this.result = dataplaneAddon().stop(this.handle);
      this.handle = null;
    }
    return this.result;
  }

  /** Waits for the thread's end (polled: the end's callback alone keeps no process alive); why it ended. */
  protected async finished(): Promise<string | null> {
    while (!this.done) await sleep(POLL_MS);
    return this.failure;
  }

  /** Waits until `ready()` holds; throws if the thread ends first with an error. */
  protected async until(ready: () => boolean, what: string): Promise<void> {
    while (!ready()) {
      if (this.done) {
        if (ready()) return;
        throw new Error(`native precopy: ${this.failure ?? 'the thread ended'} (waiting for ${what})`);
      }
      await sleep(POLL_MS);
    }
  }
}

export interface PrecopySenderOptions {
  /** A descriptor of the data plane connection; taken (closed by stop()). */
  sock: number;
  secret: Uint8Array;
  /**
   * The running guest's memory from page 0, as it is now: read before each pass, so a pass covers
   * pages the memory grew by since the thread started (the thread refuses a pass past the view).
   */
  memory: () => Uint8Array;
  /** Pages of the reservation (the most any pass may name). */
  maxPages: number;
  /** --max-bandwidth (bytes/s): the thread paces its frames with a token bucket; setCapped(false) lifts it. */
  maxBandwidth?: number | undefined;
  timeoutMs?: number;
}

export interface PrecopySenderStats {
  dataPages: number;
  zeroPages: number;
  bytesSent: number;
  bytesReceived: number;
}

/** The source's native precopy stream: one pass at a time. */
export class PrecopySender extends PrecopyThread {
  private readonly job = new Int32Array(new SharedArrayBuffer(PrecopyJob.SLOTS * 4));
  private readonly stats = new Float64Array(new SharedArrayBuffer(PrecopySendStat.SLOTS * 8));
  /** Set while the thread starts (inside startOwning: an allocation that throws must close the socket). */
  private pages!: Uint32Array;
  private seq = 0;
  private readonly memory: () => Uint8Array;
  /** Bytes of the view the thread reads: a longer one is handed over before the next pass. */
  private memoryBytes = 0;

  constructor(o: PrecopySenderOptions) {
    super();
    this.memory = o.memory;
    this.handle = startOwning(o.sock, () => {
      this.pages = new Uint32Array(new SharedArrayBuffer(Math.max(1, Math.ceil(o.maxPages / 32)) * 4));
      const memory = o.memory();
      this.memoryBytes = memory.byteLength;
      const options = {
        sock: o.sock, role: DataplaneRole.CONNECTOR, timeoutMs: o.timeoutMs ?? 10_000, raisePriority: false, secret: o.secret,
        memory, maxPages: o.maxPages, pages: this.pages, job: this.job, stats: this.stats,
        ...(o.maxBandwidth ? { maxBandwidth: Math.round(o.maxBandwidth) } : {}),
      };
      const addon = dataplaneAddon();
      return () => addon.startPrecopySend(options, this.onExit);
    });
  }

  /**
   * Sends pass `pass`: the pages of `set` below `limit` as data (all-zero ones as ZERO), and with
   * `othersZero` every other page below `limit` as ZERO (pass 0: never touched or zero-mapped);
   * then its MARK. Resolves once every byte of it is written to the socket.
   */
  async sendPass(pass: number, set: PageBitmap, limit: number, othersZero: boolean): Promise<void> {
    this.followMemory();
    const words = Math.ceil(limit / 32);
    this.pages.fill(0);
    this.pages.set(set.words.subarray(0, Math.min(words, set.words.length)));
    Atomics.store(this.job, PrecopyJob.PASS, pass);
    Atomics.store(this.job, PrecopyJob.LIMIT, limit);
    Atomics.store(this.job, PrecopyJob.OTHERS_ZERO, othersZero ? 1 : 0);
    Atomics.store(this.job, PrecopyJob.CUT, 0);
    this.stats[PrecopySendStat.CURSOR] = 0;
    const seq = ++this.seq;
    Atomics.store(this.job, PrecopyJob.PASS_SEQ, seq); // last: it publishes the rest
    if (this.handle) dataplaneAddon().wake(this.handle);
    await this.until(() => this.stats[PrecopySendStat.PASS_DONE] === seq, `pass ${pass} to be written`);
  }

  /**
   * Cuts the pass in flight short: from the page the thread is at, it sends none of the pass's
   * pages (as data or ZERO; the pass's other ZERO ranges and its MARK still go). Once the pass has
   * resolved, cutAt() says from which page of its set on they were left out.
   */
  cut(): void {
    Atomics.store(this.job, PrecopyJob.CUT, 1);
  }

  /** The first page of the last pass's set that a cut left out, or its limit if none was (read once the pass has resolved). */
  cutAt(): number {
    return this.stats[PrecopySendStat.CUT_AT]!;
  }

  /** The page the pass in flight has reached (pages below it are sent, or left out by a cut). */
  cursor(): number {
    return this.stats[PrecopySendStat.CURSOR]!;
  }

  /**
   * Lifts the rate cap (false), or puts it back with a full bucket (true), as the bulk channel's
   * setMaxBandwidth does: the switchover's frames go out at once, inside the downtime. Takes effect
   * in the middle of a pass (the thread is woken from its wait for tokens).
   */
  setCapped(capped: boolean): void {
    Atomics.store(this.job, PrecopyJob.UNCAPPED, capped ? 0 : 1);
    if (this.handle && !this.done) dataplaneAddon().wake(this.handle);
  }

  /** The guest's memory grew since the last pass: the thread reads the longer view from now on (no pass is in flight). */
  private followMemory(): void {
    if (!this.handle || this.done) return; // a thread that ended: the pass below reports why
    const view = this.memory();
    if (view.byteLength === this.memoryBytes) return;
    dataplaneAddon().setMemory(this.handle, view);
    this.memoryBytes = view.byteLength;
  }

  /** Ends the precopy session (CLOSE each way) and joins the thread; throws if it failed. */
  async close(): Promise<void> {
    Atomics.store(this.job, PrecopyJob.CLOSE, 1);
    if (this.handle) dataplaneAddon().wake(this.handle);
    const err = await this.finished();
    this.stop();
    if (err !== null) throw new Error(`native precopy: ${err}`);
  }

  read(): PrecopySenderStats {
    const s = this.stats;
    return {
      dataPages: s[PrecopySendStat.DATA_PAGES]!, zeroPages: s[PrecopySendStat.ZERO_PAGES]!,
      bytesSent: s[PrecopySendStat.BYTES_SENT]!, bytesReceived: s[PrecopySendStat.BYTES_RECEIVED]!,
    };
  }

  get running(): boolean {
    return !this.done && this.stats[PrecopySendStat.STATE] !== DataplaneState.FAILED;
  }
}

export interface PrecopyReceiverOptions {
  sock: number;
  secret: Uint8Array;
  uffd: number;
  base: number;
  states: Uint8Array;
  stateCounts: Int32Array;
  /** Pages in the memory now. */
  pageCount: number;
  digest?: Uint32Array;
  timeoutMs?: number;
  /** The uffd has UFFD_FEATURE_MOVE: place holes through a pool made ahead (PrecopyReceiveOptions.movePool). */
  movePool?: boolean;
}

/** The destination's native precopy receiver. */
export class PrecopyReceiver extends PrecopyThread {
  private readonly limit = new Int32Array(new SharedArrayBuffer(4));
  private readonly stats = new Float64Array(new SharedArrayBuffer(PrecopyReceiveStat.SLOTS * 8));

  constructor(o: PrecopyReceiverOptions) {
    super();
    this.limit[0] = o.pageCount;
    this.handle = startOwning(o.sock, () => {
      const options = {
        sock: o.sock, role: DataplaneRole.ACCEPTOR, timeoutMs: o.timeoutMs ?? 10_000, raisePriority: false, secret: o.secret,
        uffd: o.uffd, base: o.base, states: o.states, stateCounts: o.stateCounts, limit: this.limit, stats: this.stats,
        ...(o.digest ? { digest: o.digest } : {}), movePool: o.movePool ?? false,
      };
      const addon = dataplaneAddon();
      return () => addon.startPrecopyReceive(options, this.onExit);
    });
  }

  /**
   * The memory grew (the bulk channel's GROW): pages below `pageCount` may be placed. The thread,
   * maybe holding a frame past the old size, is woken at once (its own poll while it holds one is
   * a slow fallback, so that a long wait for GROW costs no CPU).
   */
  setPageCount(pageCount: number): void {
    Atomics.store(this.limit, 0, pageCount);
    if (this.handle && !this.done) dataplaneAddon().wake(this.handle);
  }

  /**
   * Waits until every page of `pass` is placed (its MARK); resolves with the pages (data and zero)
   * placed up to its end — the thread may be placing the next pass already.
   */
  async passPlaced(pass: number): Promise<number> {
    await this.until(() => this.stats[PrecopyReceiveStat.MARK]! >= pass + 1, `pass ${pass}'s pages`);
    if (this.stats[PrecopyReceiveStat.MARK]! - (pass + 1) >= PrecopyReceiveStat.MARK_RING_LEN) {
      throw new Error(`native precopy: the stream ran more than ${PrecopyReceiveStat.MARK_RING_LEN} passes ahead of pass ${pass}'s end`);
    }
    return this.stats[PrecopyReceiveStat.MARK_RING + (pass % PrecopyReceiveStat.MARK_RING_LEN)]!;
  }

  /** Waits for the source's CLOSE (answered by the thread, which then ends) and joins the thread. */
  async closed(): Promise<void> {
    const err = await this.finished();
    this.stop();
    if (err !== null || this.stats[PrecopyReceiveStat.CLOSED] !== 1) throw new Error(`native precopy: ${err ?? 'ended without the source\'s CLOSE'}`);
  }

  /** Pages placed (data, zero; of the data, holes moved in from the pool) and bytes, for progress reports. */
  read(): { dataPages: number; zeroPages: number; pagesMoved: number; poolReady: number; bytesSent: number; bytesReceived: number } {
    const s = this.stats;
    return {
      dataPages: s[PrecopyReceiveStat.DATA_PAGES]!, zeroPages: s[PrecopyReceiveStat.ZERO_PAGES]!, pagesMoved: s[PrecopyReceiveStat.MOVED]!, poolReady: s[PrecopyReceiveStat.POOL_READY]!,
      bytesSent: s[PrecopyReceiveStat.BYTES_SENT]!, bytesReceived: s[PrecopyReceiveStat.BYTES_RECEIVED]!,
    };
  }

  /** Whether the thread ended with an error (its text), else null. */
  get failed(): string | null {
    return this.done ? this.failure : null;
  }
}
