// PageStateTable: per host page of the whole reservation, where its content stands on a destination:
// known-zero (fill locally), pending (still on the source: a hole) or received (placed). One byte per
// page in a SharedArrayBuffer so the fault worker and the main thread see the same table; transitions
// are compare-and-swap, and counts are kept alongside.
import { PageBitmap } from './page-bitmap.js';

export const PageState = { KNOWN_ZERO: 0, PENDING: 1, RECEIVED: 2 } as const;
export type PageStateValue = (typeof PageState)[keyof typeof PageState];
const NAMES = ['known-zero', 'pending', 'received'];
const FROM_ZERO_OR_RECEIVED: readonly number[] = [PageState.KNOWN_ZERO, PageState.RECEIVED];
const FROM_PENDING_OR_ZERO: readonly number[] = [PageState.PENDING, PageState.KNOWN_ZERO];
const FROM_PENDING: readonly number[] = [PageState.PENDING];

/** What crosses a thread boundary to rebuild the same table elsewhere. */
export interface SharedPageStates {
  pageCount: number;
  states: SharedArrayBuffer;
  counts: SharedArrayBuffer;
}

export class PageStateTable {
  readonly pageCount: number;
  private readonly states: Uint8Array;
  private readonly counts: Int32Array; // indexed by state

  /** A fresh table: every page known-zero (a destination knows nothing is on the source yet). */
  constructor(pageCount: number, shared?: SharedPageStates) {
    if (!Number.isInteger(pageCount) || pageCount <= 0) throw new RangeError(`PageStateTable: pageCount must be a positive integer, got ${pageCount}`);
    this.pageCount = pageCount;
    if (shared) {
      if (shared.pageCount !== pageCount || shared.states.byteLength < pageCount) throw new RangeError('PageStateTable: shared table does not match pageCount');
      this.states = new Uint8Array(shared.states, 0, pageCount);
      this.counts = new Int32Array(shared.counts, 0, 3);
    } else {
      this.states = new Uint8Array(new SharedArrayBuffer(pageCount));
      this.counts = new Int32Array(new SharedArrayBuffer(12));
      this.counts[PageState.KNOWN_ZERO] = pageCount;
    }
  }

  static fromShared(s: SharedPageStates): PageStateTable {
    return new PageStateTable(s.pageCount, s);
  }

  shared(): SharedPageStates {
    return { pageCount: this.pageCount, states: this.states.buffer as SharedArrayBuffer, counts: this.counts.buffer as SharedArrayBuffer };
  }

  get(page: number): PageStateValue {
    this.check(page);
    return Atomics.load(this.states, page) as PageStateValue;
  }

  /** Moves page from one of `from` to `to`; returns the previous state, or -1 if it was in none of `from`. */
  private move(page: number, from: readonly number[], to: PageStateValue): number {
    this.check(page);
    const prev = this.swap(page, from, to);
    if (prev !== -1 && prev !== to) {
      Atomics.sub(this.counts, prev, 1);
      Atomics.add(this.counts, to, 1);
    }
    return prev;
  }

  /** move() without the counts (the caller moves them): the previous state (`to` if it was there already), or -1. */
  private swap(page: number, from: readonly number[], to: PageStateValue): number {
    for (;;) {
      const cur = Atomics.load(this.states, page);
      if (cur === to) return cur;
      if (!from.includes(cur)) return -1;
      if (Atomics.compareExchange(this.states, page, cur, to) === cur) return cur;
    }
  }

  /** The source holds this page (the caller makes sure it is a hole). From known-zero or received. */
  markPending(page: number): void {
    this.move(page, FROM_ZERO_OR_RECEIVED, PageState.PENDING);
  }
  /** Content placed. From pending or known-zero (explicit bytes win). Returns the previous state. */
  markReceived(page: number): PageStateValue {
    // Fast path for the fault loop: pending → received in one CAS.
    if (page >= 0 && page < this.pageCount && Atomics.compareExchange(this.states, page, PageState.PENDING, PageState.RECEIVED) === PageState.PENDING) {
      Atomics.sub(this.counts, PageState.PENDING, 1);
      Atomics.add(this.counts, PageState.RECEIVED, 1);
      return PageState.PENDING;
    }
    return this.move(page, FROM_PENDING_OR_ZERO, PageState.RECEIVED) as PageStateValue;
  }
  /** The source says the page is zero. Only from pending; received content is never forgotten here. */
  markZero(page: number): void {
    const prev = this.move(page, FROM_PENDING, PageState.KNOWN_ZERO);
    if (prev === -1) throw new Error(`PageStateTable: page ${page} is ${NAMES[this.get(page)]}, cannot become known-zero`);
  }

  markAllPending(pages: PageBitmap): void {
    this.sameSize(pages);
    pages.forEachRun((s, e) => this.markPendingRange(s, e));
  }

  /**
   * markPending() for pages [first, end): each page still moves by compare-and-swap, but the counts
   * move once, at the end (until then they lag behind the pages this call moved). Page by page, a
   * lazy restore's arming took 7-13 ms for 256 MiB (five atomic operations a page, cold code).
   */
  markPendingRange(first: number, end: number): void {
    if (end <= first) return;
    this.check(first);
    this.check(end - 1);
    let fromZero = 0;
    let fromReceived = 0;
    for (let p = first; p < end; p++) {
      const prev = this.swap(p, FROM_ZERO_OR_RECEIVED, PageState.PENDING);
      if (prev === PageState.KNOWN_ZERO) fromZero++;
      else if (prev === PageState.RECEIVED) fromReceived++;
    }
    if (fromZero > 0) Atomics.sub(this.counts, PageState.KNOWN_ZERO, fromZero);
    if (fromReceived > 0) Atomics.sub(this.counts, PageState.RECEIVED, fromReceived);
    if (fromZero + fromReceived > 0) Atomics.add(this.counts, PageState.PENDING, fromZero + fromReceived);
  }

  /**
   * markPendingRange() for a table in which no other thread moves pages yet (a lazy restore arming
   * its fault server: nothing can fault before the guest runs): a range of known-zero pages becomes
   * pending in one fill, anything else page by page. Other threads see the result once they
   * synchronise with this one (the guest's launch does). Even batched, the atomic loop took 3-7 ms
   * for 256 MiB, inside every lazy restore's start.
   */
  markPendingUnshared(first: number, end: number): void {
    if (end <= first) return;
    this.check(first);
    this.check(end - 1);
    const range = this.states.subarray(first, end);
    if (range.indexOf(PageState.PENDING) !== -1 || range.indexOf(PageState.RECEIVED) !== -1) return this.markPendingRange(first, end);
    range.fill(PageState.PENDING);
    Atomics.sub(this.counts, PageState.KNOWN_ZERO, end - first);
    Atomics.add(this.counts, PageState.PENDING, end - first);
  }

  /** Pages pending now (an atomic read: other threads move pages out of pending). */
  get pendingCount(): number {
    return Atomics.load(this.counts, PageState.PENDING);
  }

  counts3(): { knownZero: number; pending: number; received: number } {
    return {
      knownZero: Atomics.load(this.counts, PageState.KNOWN_ZERO),
      pending: Atomics.load(this.counts, PageState.PENDING),
      received: Atomics.load(this.counts, PageState.RECEIVED),
    };
  }

  /** Pages currently in `state`. */
  pagesIn(state: PageStateValue): PageBitmap {
    const b = new PageBitmap(this.pageCount);
    for (let p = 0; p < this.pageCount; p++) if (this.states[p] === state) b.add(p);
    return b;
  }

  private check(page: number): void {
    if (!(page >= 0 && page < this.pageCount && Number.isInteger(page))) throw new RangeError(`PageStateTable: page ${page} outside [0, ${this.pageCount})`);
  }
  private sameSize(b: PageBitmap): void {
    if (b.size !== this.pageCount) throw new RangeError(`PageStateTable: bitmap of ${b.size} pages for a table of ${this.pageCount}`);
  }
}
