// Places the pages a postcopy destination receives from the source, from two threads at once:
// the main thread places the bulk stream, the urgent thread the answers to page requests. A page
// is copied in with UFFDIO_COPY (which wakes every thread blocked on it) and then moved from
// pending to received; the thread whose compare-and-swap wins counts it, so a page sent on both
// channels is counted once and placed once (the second copy meets EEXIST and changes nothing).
// Neither thread reads or writes guest memory: the bytes go from the socket's buffer to the kernel.
import { HOST_PAGE_SIZE } from '../../memory/guest-memory.js';
import { PageState, PageStateTable, type SharedPageStates } from '../../memory/page-state.js';
import { Userfaultfd } from '../../sys/uffd.js';
import { PageDigest } from '../verify/digest.js';
import type { MessageOf } from '../wire/index.js';

/** Everything a PagePlacer needs, shareable with another thread. */
export interface PlacerShared {
  uffd: number;
  /** Address of guest page 0. */
  base: number;
  states: SharedPageStates;
  requests: SharedRequests;
  /** The verify digest's per-page hashes (PageDigest.buffer), or null without --verify. */
  digest: { maxBytes: number; buffer: SharedArrayBuffer } | null;
}

/**
 * Pages asked of the source and not placed yet, with the time of the fault that asked (µs since
 * the epoch, 0 = none): set by the urgent thread, taken by whichever thread places the page.
 */
export interface SharedRequests {
  times: SharedArrayBuffer; // BigInt64 per page
  waiting: SharedArrayBuffer; // Int32 [pages with a request outstanding]
}

export function createRequests(pageCount: number): SharedRequests {
  return { times: new SharedArrayBuffer(pageCount * 8), waiting: new SharedArrayBuffer(4) };
}

const nowUs = (): bigint => BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));

export class PagePlacer {
  private readonly states: PageStateTable;
  private readonly uffd: Userfaultfd;
  private readonly times: BigInt64Array;
  private readonly waiting: Int32Array;
  private readonly digest: PageDigest | null;

  constructor(private readonly shared: PlacerShared) {
    this.states = PageStateTable.fromShared(shared.states);
    this.uffd = Userfaultfd.attach(shared.uffd);
    this.times = new BigInt64Array(shared.requests.times);
    this.waiting = new Int32Array(shared.requests.waiting);
    this.digest = shared.digest ? new PageDigest(shared.digest.maxBytes, shared.digest.buffer) : null;
  }

  /** Pages with a request outstanding (the guest is blocked while there are any). */
  get waitingPages(): number {
    return Atomics.load(this.waiting, 0);
  }

  /**
   * Notes a request for page `p` made by a fault at `faultUs`. False if the page needs none (it
   * was placed meanwhile) or has one already.
   */
  noteRequest(p: number, faultUs: bigint): boolean {
    if (this.states.get(p) !== PageState.PENDING) return false;
    if (Atomics.compareExchange(this.times, p, 0n, faultUs) !== 0n) return false;
    Atomics.add(this.waiting, 0, 1);
    // Placed between the check and the note: take the note back, unless the placer already did.
    if (this.states.get(p) !== PageState.PENDING && Atomics.compareExchange(this.times, p, faultUs, 0n) === faultUs) {
      Atomics.sub(this.waiting, 0, 1);
      return false;
    }
    return true;
  }

  /** Pages with a request outstanding, in order (to ask again on a new connection). */
  requestedPages(limit: number): number[] {
    const out: number[] = [];
    for (let p = 0; p < limit; p++) if (Atomics.load(this.times, p) !== 0n) out.push(p);
    return out;
  }

  /**
   * Places the still-pending pages of a checked data run. Returns the pages this call placed and,
   * for those that had been requested, the fault-to-placement latencies in µs.
   */
  place(msg: MessageOf<'PAGES'>): { placed: number; latenciesUs: number[] } {
    const data = msg.data!;
    const first = msg.offset / HOST_PAGE_SIZE;
    let placed = 0;
    const latenciesUs: number[] = [];
    for (let i = 0; i < msg.count; ) {
      if (this.states.get(first + i) !== PageState.PENDING) {
        i++;
        continue;
      }
      let j = i + 1;
      while (j < msg.count && this.states.get(first + j) === PageState.PENDING) j++;
      this.uffd.copyAll(this.shared.base + (first + i) * HOST_PAGE_SIZE, data, i * HOST_PAGE_SIZE, (j - i) * HOST_PAGE_SIZE);
      let won = 0;
      let placedAt = 0n;
      for (let p = first + i; p < first + j; p++) {
        if (this.states.markReceived(p) !== PageState.PENDING) continue;
        won++;
        // Most pages were never asked for: one Int32 load instead of a BigInt exchange per page.
        // (A note made after this load sees the page received and takes itself back: noteRequest.)
        if (Atomics.load(this.waiting, 0) === 0) continue;
        const t = Atomics.exchange(this.times, p, 0n);
        if (t !== 0n) {
          Atomics.sub(this.waiting, 0, 1);
          if (t < 0n) continue; // asked ahead by the native fault thread's fault-around: no fault waited on it
          if (placedAt === 0n) placedAt = nowUs();
          latenciesUs.push(Number(placedAt - t));
        }
      }
      // The digest records what was sent; a page sent on both channels carries the same bytes.
      this.digest?.set(first + i, data.subarray(i * HOST_PAGE_SIZE, j * HOST_PAGE_SIZE), j - i);
      placed += won;
      i = j;
    }
    return { placed, latenciesUs };
  }
}
