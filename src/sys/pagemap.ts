// /proc/self/pagemap: PAGEMAP_SCAN (ranges with categories, optional get-and-clear of written pages)
// and plain 64-bit entry reads.
import { openSync, closeSync } from 'node:fs';
import { K, native } from './native.js';
import { sys } from './errors.js';

export const PAGE_IS = {
  WPALLOWED: K('PAGE_IS_WPALLOWED'), WRITTEN: K('PAGE_IS_WRITTEN'), FILE: K('PAGE_IS_FILE'),
  PRESENT: K('PAGE_IS_PRESENT'), SWAPPED: K('PAGE_IS_SWAPPED'), PFNZERO: K('PAGE_IS_PFNZERO'),
  HUGE: K('PAGE_IS_HUGE'), SOFT_DIRTY: K('PAGE_IS_SOFT_DIRTY'),
} as const;
export const PM_SCAN_WP_MATCHING = K('PM_SCAN_WP_MATCHING');
export const PM_SCAN_CHECK_WPASYNC = K('PM_SCAN_CHECK_WPASYNC');

/** 3 doubles per region in a scan buffer: [start, end, categories]. */
export const REGION_SLOTS = 3;

export interface ScanOptions {
  /** PM_SCAN_* flags (WP_MATCHING = get-and-clear written; CHECK_WPASYNC = require async WP). */
  flags?: number;
  categoryInverted?: number;
  categoryMask?: number;
  categoryAnyofMask?: number;
  returnMask: number;
  /** Stop after this many matching pages (0 = no limit). */
  maxPages?: number;
}

/** An open /proc/self/pagemap. One per thread that scans is fine; fds are cheap. */
export class Pagemap {
  readonly fd: number;
  private regions: Float64Array;
  constructor(regionCapacity = 65536) {
    this.fd = openSync('/proc/self/pagemap', 'r');
    this.regions = new Float64Array(regionCapacity * REGION_SLOTS);
  }

  /** One PAGEMAP_SCAN ioctl into out; returns region count and where the walk stopped. */
  scanOnce(start: number, end: number, out: Float64Array, o: ScanOptions): { count: number; walkEnd: number } {
    return sys(() => native.pagemapScan(this.fd, start, end, out, o.flags ?? 0, o.categoryInverted ?? 0,
      o.categoryMask ?? 0, o.categoryAnyofMask ?? 0, o.returnMask, o.maxPages ?? 0));
  }

  /**
   * Scans [start, end) completely, calling onRegion(start, end, categories) per region. Restarts from
   * walk_end only when the output vector filled (the kernel may stop early otherwise; restarting then would
   * count pages twice). Returns the number of pages reported.
   */
  scan(start: number, end: number, o: ScanOptions, onRegion: (start: number, end: number, categories: number) => void): number {
    const cap = this.regions.length / REGION_SLOTS;
    let pages = 0;
    let from = start;
    for (;;) {
      const r = this.scanOnce(from, end, this.regions, o);
      const v = this.regions;
      for (let i = 0; i < r.count; i++) {
        const s = v[i * 3]!, e = v[i * 3 + 1]!;
        pages += (e - s) / 4096;
        onRegion(s, e, v[i * 3 + 2]!);
      }
      if (r.count < cap || r.walkEnd >= end) break;
      if (o.maxPages && pages >= o.maxPages) break;
      from = r.walkEnd;
    }
    return pages;
  }

  /**
   * Scans all of [start, end) (page-aligned) and sets, for each target, the bits of the pages whose region
   * categories share a bit with target.categories (0 = every reported page); bit i = page start + i*4096.
   * Same kernel walk as scan(), but regions are turned into bits in C — for large, fragmented results.
   */
  scanToBitmaps(start: number, end: number, o: Omit<ScanOptions, 'maxPages'>, targets: Array<{ words: Uint32Array; categories: number }>): { pages: number; regions: number } {
    return sys(() => native.pagemapScanBits(this.fd, start, end, o.flags ?? 0, o.categoryInverted ?? 0, o.categoryMask ?? 0,
      o.categoryAnyofMask ?? 0, o.returnMask, targets.map((t) => t.words), Int32Array.from(targets.map((t) => t.categories))));
  }

  /** Raw 64-bit pagemap entries for consecutive pages starting at address (page-aligned). */
  read(address: number, out: BigUint64Array): number {
    return sys(() => native.pagemapRead(this.fd, address, out));
  }

  close(): void {
    closeSync(this.fd);
  }
}

/** Bits of a raw pagemap entry (Documentation/admin-guide/mm/pagemap.rst). */
export const PM_ENTRY = {
  PRESENT: 1n << 63n, SWAPPED: 1n << 62n, FILE_OR_SHARED: 1n << 61n, EXCLUSIVE: 1n << 56n,
  UFFD_WP: 1n << 57n, SOFT_DIRTY: 1n << 55n, PFN_MASK: (1n << 55n) - 1n,
} as const;
