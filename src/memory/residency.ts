// Residency: which host pages of a GuestMemory have ever been touched (present or swapped), and which
// of those map the shared zero page — from PAGEMAP_SCAN, never by reading memory (reading a hole would
// map the zero page and make it look touched).
import { Pagemap, PAGE_IS } from '../sys/pagemap.js';
import { PageBitmap } from './page-bitmap.js';
import type { GuestMemory } from './guest-memory.js';

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
    const n = mem.pageCount;
    const present = new PageBitmap(n);
    const zero = new PageBitmap(n);
    const swapped = new PageBitmap(n);
    const base = mem.base;
    pm.scanToBitmaps(base, base + mem.sizeBytes, {
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
