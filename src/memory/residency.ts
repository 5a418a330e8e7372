// Residency: which host pages of a GuestMemory have ever been touched (present or swapped), and which
// of those map the shared zero page — from PAGEMAP_SCAN, never by reading memory (reading a hole would
// map a page and make it look touched).
//
// Kernels differ on a read of an untouched page: some map the shared zero page (PFNZERO: residency
// tells it apart for free), others allocate a real page of zeros (present, not PFNZERO: residency
// counts it as touched, and memory/zero-pages.ts finds it by its content). readFaultMapsZeroPage()
// says which kind this kernel is.
import { Pagemap, PAGE_IS } from '../sys/pagemap.js';
import { addressOf, mapAnonymous } from '../sys/mman.js';
import { PageBitmap } from './page-bitmap.js';
import { HOST_PAGE_SIZE, type GuestMemory } from './guest-memory.js';

export interface Residency {
  /** Pages present in RAM (bitmaps cover the current size). */
  present: PageBitmap;
  /**
   * Pages with a swap-type entry: swapped out, but also uffd-wp markers that a running DirtyTracker
   * (WP_UNPOPULATED) leaves on untouched pages — the kernel reports both as PAGE_IS_SWAPPED. Callers that
   * run with swap must treat these as possibly touched; Ferry's hosts run without swap.
   */
  swapped: PageBitmap;
  /** The subset of present pages that map the zero page (read but never written). */
  zero: PageBitmap;
}

export function scanResidency(mem: GuestMemory, pagemap?: Pagemap): Residency {
  const pm = pagemap ?? new Pagemap();
  try {
    // One read of the size: a running guest may grow its memory between two reads, and the bitmaps
    // must cover exactly the range walked.
    const bytes = mem.sizeBytes;
    const n = bytes / HOST_PAGE_SIZE;
    const present = new PageBitmap(n);
    const zero = new PageBitmap(n);
    const swapped = new PageBitmap(n);
    const base = mem.base;
    pm.scanToBitmaps(base, base + bytes, {
      categoryAnyofMask: PAGE_IS.PRESENT | PAGE_IS.SWAPPED,
      returnMask: PAGE_IS.PRESENT | PAGE_IS.SWAPPED | PAGE_IS.PFNZERO,
    }, [
      { words: present.words, categories: PAGE_IS.PRESENT },
      { words: swapped.words, categories: PAGE_IS.SWAPPED },
      { words: zero.words, categories: PAGE_IS.PFNZERO },
    ]);
    return { present, zero, swapped };
  } finally {
    if (!pagemap) pm.close();
  }
}

let zeroPageProbe: boolean | undefined;

/**
 * Whether a read of an untouched anonymous page maps the shared zero page on this kernel (probed
 * once: reads one page of a fresh private mapping and asks PAGEMAP_SCAN about it).
 */
export function readFaultMapsZeroPage(): boolean {
  if (zeroPageProbe !== undefined) return zeroPageProbe;
  const bytes = new Uint8Array(mapAnonymous(2 * 4096));
  if (bytes[4096] !== 0) throw new Error('a fresh anonymous page read as non-zero');
  const base = addressOf(bytes);
  const pm = new Pagemap(4);
  try {
    let present = false;
    let zero = false;
    pm.scan(base + 4096, base + 2 * 4096, { categoryAnyofMask: PAGE_IS.PRESENT, returnMask: PAGE_IS.PRESENT | PAGE_IS.PFNZERO }, (_s, _e, c) => {
      present ||= (c & PAGE_IS.PRESENT) !== 0;
      zero ||= (c & PAGE_IS.PFNZERO) !== 0;
    });
    if (!present) throw new Error('PAGEMAP_SCAN does not report a page just read as present');
    zeroPageProbe = zero;
    return zero;
  } finally {
    pm.close();
  }
}
