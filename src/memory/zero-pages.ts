// Pages whose bytes are all zero, found by reading them. Only for pages known to be present: reading
// a hole would map it (and, on a kernel that maps real pages for read faults, allocate it).
//
// Why this exists beside residency's PFNZERO bit: a page the guest only ever read is the shared zero
// page on some kernels (PAGEMAP_SCAN reports it PFNZERO, for free) and a freshly allocated page of
// zeros on others (present, not PFNZERO). Checking the content of present pages before they are
// sent or saved makes both kinds of kernel send them as zero markers, never as 4 KiB of zeros. The
// check costs little on data pages: most differ from zero in their first bytes.
import { HOST_PAGE_SIZE } from './guest-memory.js';
import { PageBitmap } from './page-bitmap.js';

const ZERO_PAGE = Buffer.alloc(HOST_PAGE_SIZE);
/** Bytes checked in JavaScript before the native compare (most data pages stop here). */
const QUICK_BYTES = 16;

/** Whether the page at bytes[offset, offset + 4096) is all zero. */
export function isZeroPage(bytes: Uint8Array, offset: number): boolean {
  for (let i = offset; i < offset + QUICK_BYTES; i++) if (bytes[i] !== 0) return false;
  return ZERO_PAGE.compare(bytes, offset, offset + HOST_PAGE_SIZE) === 0;
}

/**
 * Calls onRun(start, end, zero) for the alternating runs of zero and non-zero pages among
 * `count` pages of bytes starting at byte `offset` (run bounds are page indices relative to it).
 */
export function forEachZeroRun(bytes: Uint8Array, offset: number, count: number, onRun: (start: number, end: number, zero: boolean) => void): void {
  let s = 0;
  let zero = count > 0 && isZeroPage(bytes, offset);
  for (let p = 1; p <= count; p++) {
    const z = p < count && isZeroPage(bytes, offset + p * HOST_PAGE_SIZE);
    if (p === count || z !== zero) {
      onRun(s, p, zero);
      s = p;
      zero = z;
    }
  }
}

/** The pages of `pages` (all present in `view`) whose bytes are all zero. */
export function zeroContentPages(pages: PageBitmap, view: Uint8Array): PageBitmap {
  const limit = Math.floor(view.length / HOST_PAGE_SIZE);
  const out = new PageBitmap(pages.size);
  for (const [s, e0] of pages.runs()) {
    const e = Math.min(e0, limit);
    for (let p = s; p < e; p++) if (isZeroPage(view, p * HOST_PAGE_SIZE)) out.add(p);
  }
  return out;
}
