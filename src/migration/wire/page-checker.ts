// Destination-side guard for the memory stream: checks every PAGES run against the guest memory's
// geometry and the pass structure before a single byte is placed. The rules (docs/wire-format.md):
//  - a run lies inside the current memory size (which only grows, via GROW, never past maxBytes);
//  - within one pass a page is sent at most once (a bitmap over maxBytes, cleared at PASS_END);
//  - PASS_END numbers passes 0, 1, 2, ... and its dirtyPages equals the pages the pass carried.
// Postcopy is one final pass that is never ended, so "each page is sent once" holds there too
// (share one checker between the bulk and the urgent channel).
import { WireError } from './errors.js';
import { MAX_MEMORY_BYTES, PAGE_SIZE, WASM_PAGE_SIZE } from './limits.js';
import type { MessageOf } from './messages.js';

export interface MemoryGeometry {
  bytes: number;
  maxBytes: number;
}

export class PageFrameChecker {
  private currentBytes: number;
  readonly maxBytes: number;
  private readonly seen: Uint32Array; // one bit per host page of maxBytes
  private passNo = 0;
  private pagesThisPass = 0;

  /** `seen`: another checker's `seenBuffer`, so that two threads check one stream of pages. */
  constructor(geometry: MemoryGeometry, seen?: SharedArrayBuffer) {
    const { bytes, maxBytes } = geometry;
    for (const v of [bytes, maxBytes]) {
      if (!Number.isInteger(v) || v < 0 || v > MAX_MEMORY_BYTES || v % WASM_PAGE_SIZE !== 0) {
        throw new RangeError(`PageFrameChecker: memory sizes must be multiples of ${WASM_PAGE_SIZE} up to 4 GiB, got ${v}`);
      }
    }
    if (bytes > maxBytes) throw new RangeError(`PageFrameChecker: bytes ${bytes} > maxBytes ${maxBytes}`);
    this.currentBytes = bytes;
    this.maxBytes = maxBytes;
    const words = Math.ceil(maxBytes / PAGE_SIZE / 32);
    if (seen && seen.byteLength !== words * 4) throw new RangeError('PageFrameChecker: the shared bitmap does not match maxBytes');
    this.seen = new Uint32Array(seen ?? new SharedArrayBuffer(words * 4));
  }

  /** The pages-seen bitmap, for a checker on another thread. */
  get seenBuffer(): SharedArrayBuffer {
    return this.seen.buffer as SharedArrayBuffer;
  }

  /** Current memory size in bytes (after any GROW). */
  get bytes(): number {
    return this.currentBytes;
  }

  /** The pass the next PAGES belong to. */
  get pass(): number {
    return this.passNo;
  }

  /** Pages carried so far by the current pass. */
  get pagesInPass(): number {
    return this.pagesThisPass;
  }

  checkPages(msg: MessageOf<'PAGES'>, frameOffset: number): void {
    const fail = (d: string): never => {
      throw new WireError('BAD_PAGES', frameOffset, d);
    };
    const { offset, count, kind } = msg;
    if (!Number.isInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) fail(`offset ${offset} is not page-aligned`);
    if (!Number.isInteger(count) || count < 1) fail(`count ${count} must be at least 1`);
    if (kind !== 'data' && kind !== 'zero' && kind !== 'untouched') fail(`unknown page kind ${String(kind)}`);
    const end = offset + count * PAGE_SIZE;
    if (end > this.currentBytes) fail(`pages ${hex(offset)}..${hex(end)} lie outside memory of ${this.currentBytes} bytes`);
    if (kind === 'data' ? msg.data?.length !== count * PAGE_SIZE : msg.data !== null && msg.data.length !== 0) {
      fail(`${kind} run of ${count} pages carries ${msg.data?.length ?? 0} bytes`);
    }
    const first = offset / PAGE_SIZE;
    // Test-and-set in one atomic step: the bulk and the urgent channel may be checked on two threads.
    // A refused run leaves no bit behind.
    for (let p = first; p < first + count; p++) {
      const bit = 1 << (p & 31);
      if (Atomics.or(this.seen, p >>> 5, bit) & bit) {
        for (let q = first; q < p; q++) Atomics.and(this.seen, q >>> 5, ~(1 << (q & 31)));
        fail(`page ${hex(p * PAGE_SIZE)} sent twice in pass ${this.passNo}`);
      }
    }
    this.pagesThisPass += count;
  }

  checkGrow(msg: MessageOf<'GROW'>, frameOffset: number): void {
    const { newBytes } = msg;
    if (!Number.isInteger(newBytes) || newBytes % WASM_PAGE_SIZE !== 0) {
      throw new WireError('BAD_PAGES', frameOffset, `GROW to ${newBytes} is not a multiple of ${WASM_PAGE_SIZE}`);
    }
    if (newBytes < this.currentBytes) throw new WireError('BAD_PAGES', frameOffset, `GROW to ${newBytes} shrinks memory of ${this.currentBytes} bytes`);
    if (newBytes > this.maxBytes) throw new WireError('BAD_PAGES', frameOffset, `GROW to ${newBytes} exceeds maxBytes ${this.maxBytes}`);
    this.currentBytes = newBytes;
  }

  /** `nativePages`: the pass's pages that came on the native data plane instead (native precopy). */
  checkPassEnd(msg: MessageOf<'PASS_END'>, frameOffset: number, nativePages = 0): void {
    if (msg.pass !== this.passNo) throw new WireError('BAD_ORDER', frameOffset, `PASS_END for pass ${msg.pass}, expected ${this.passNo}`);
    if (msg.dirtyPages !== this.pagesThisPass + nativePages) {
      throw new WireError('BAD_ORDER', frameOffset, `PASS_END says pass ${msg.pass} carried ${msg.dirtyPages} pages, received ${this.pagesThisPass + nativePages}`);
    }
    this.seen.fill(0);
    this.passNo++;
    this.pagesThisPass = 0;
  }
}

function hex(v: number): string {
  return '0x' + v.toString(16);
}
