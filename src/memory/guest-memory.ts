// GuestMemory: a guest's linear memory (a shared WebAssembly.Memory) seen as 4 KiB host pages.
// V8 reserves the whole maximum at once and never moves it on grow, so `base` and `maxBytes`
// describe the reservation for the memory's lifetime; `sizeBytes` follows growth.
import { addressOf, madvise, MADV_DONTNEED, MADV_HUGEPAGE, MADV_POPULATE_WRITE, HOST_PAGE_SIZE } from '../sys/mman.js';
import type { PageBitmap } from './page-bitmap.js';

export { HOST_PAGE_SIZE };
export const WASM_PAGE_SIZE = 65536;
export const HOST_PAGES_PER_WASM_PAGE = WASM_PAGE_SIZE / HOST_PAGE_SIZE;
/** A transparent huge page (x86-64, arm64 with 4 KiB pages). */
const HUGE_PAGE_SIZE = 2 * 1024 * 1024;

export function wasmPagesToHostPages(wasmPages: number): number {
  return wasmPages * HOST_PAGES_PER_WASM_PAGE;
}
/** Wasm pages needed to hold hostPages host pages (rounded up). */
export function hostPagesToWasmPages(hostPages: number): number {
  return Math.ceil(hostPages / HOST_PAGES_PER_WASM_PAGE);
}

export class GuestMemory {
  readonly memory: WebAssembly.Memory;
  /** Address of byte 0 of the linear memory. */
  readonly base: number;
  /** Bytes reserved: maximum wasm pages × 64 KiB. */
  readonly maxBytes: number;
  readonly maxWasmPages: number;

  /** memory must be shared; maximumWasmPages must be the maximum it was created with (JS cannot read it back). */
  constructor(memory: WebAssembly.Memory, maximumWasmPages: number) {
    if (!(memory instanceof WebAssembly.Memory)) throw new TypeError('GuestMemory: memory must be a WebAssembly.Memory');
    const buf = memory.buffer; // typed ArrayBuffer by lib.d.ts, a SharedArrayBuffer for shared memories
    if (!((buf as unknown) instanceof SharedArrayBuffer)) throw new TypeError('GuestMemory: memory must be created with shared: true');
    if (!Number.isInteger(maximumWasmPages) || maximumWasmPages <= 0 || maximumWasmPages > 65536)
      throw new RangeError(`GuestMemory: maximum must be an integer in [1, 65536], got ${maximumWasmPages}`);
    if (buf.byteLength === 0) throw new RangeError('GuestMemory: memory must have at least one page (its address is needed)');
    if (buf.byteLength > maximumWasmPages * WASM_PAGE_SIZE) throw new RangeError('GuestMemory: memory is larger than the maximum given');
    this.memory = memory;
    this.maxWasmPages = maximumWasmPages;
    this.maxBytes = maximumWasmPages * WASM_PAGE_SIZE;
    this.base = addressOf(new Uint8Array(memory.buffer, 0, 1));
  }

  /** A new shared memory of `initial` wasm pages with a reservation of `maximum`. */
  static create(initial: number, maximum: number): GuestMemory {
    return new GuestMemory(new WebAssembly.Memory({ initial, maximum, shared: true }), maximum);
  }

  get sizeBytes(): number {
    return this.memory.buffer.byteLength;
  }
  /** Current size in host pages. */
  get pageCount(): number {
    return this.sizeBytes / HOST_PAGE_SIZE;
  }
  /** Host pages in the whole reservation. */
  get maxPageCount(): number {
    return this.maxBytes / HOST_PAGE_SIZE;
  }
  /** A view of the current memory (take a new one after growth). */
  view(): Uint8Array {
    return new Uint8Array(this.memory.buffer);
  }
  grow(wasmPages: number): number {
    return this.memory.grow(wasmPages);
  }
  /** Address of host page `page`. */
  pageAddress(page: number): number {
    return this.base + page * HOST_PAGE_SIZE;
  }
  /** Host page index holding address (throws outside the reservation). */
  pageOf(address: number): number {
    const off = address - this.base;
    if (!(off >= 0 && off < this.maxBytes)) throw new RangeError(`GuestMemory: address 0x${address.toString(16)} is outside the reservation`);
    return Math.floor(off / HOST_PAGE_SIZE);
  }

  /** Makes holes: MADV_DONTNEED on each run of pages (must lie inside the current size). */
  dropPages(pages: PageBitmap | Array<[number, number]>): void {
    const v = this.view();
    const runs = Array.isArray(pages) ? pages : pages.runs();
    for (const [s, e] of runs) madvise(v, s * HOST_PAGE_SIZE, (e - s) * HOST_PAGE_SIZE, MADV_DONTNEED);
  }

  /**
   * Allocates the pages of `runs` (host page runs [start, end) inside the current size) before
   * they are written, for memory about to be filled whole (an eager restore). Touching fresh
   * memory one page at a time costs a fault per page, and on a host with slow page tables (the
   * nested hypervisor of these machines: ≈ 14 µs a page, 3.7 s a GiB) that dominates the fill.
   * Each 2 MiB block lying wholly inside a run is advised as a transparent huge page, then the runs
   * are populated in one madvise each: 1 GiB in ≈ 50 ms there, and later accesses need no shadow
   * faults. Partial blocks stay 4 KiB pages, so no page outside `runs` becomes resident. Dirty
   * tracking is unaffected: a write-protected huge page is split at its first write and reported
   * per 4 KiB page (measured, docs/architecture.md). Best effort: a kernel without the advice, or
   * memory it cannot find, leaves the pages to fault in as before. Never call it on memory
   * registered with userfaultfd for missing pages: populating would fault into the handler.
   * With `populate: false` only the advice is given: the caller populates (the native eager load's
   * threads, each its own share). Returns the bytes populated.
   */
  prefault(runs: Array<[number, number]>, { populate = true }: { populate?: boolean } = {}): number {
    const v = this.view();
    let populated = 0;
    for (const [s, e] of runs) {
      const from = s * HOST_PAGE_SIZE;
      const to = e * HOST_PAGE_SIZE;
      if (!(s >= 0 && e > s && to <= v.byteLength)) throw new RangeError(`GuestMemory.prefault: run [${s}, ${e}) is outside the memory's ${this.pageCount} pages`);
      const hugeFrom = Math.ceil((this.base + from) / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE - this.base;
      const hugeTo = Math.floor((this.base + to) / HUGE_PAGE_SIZE) * HUGE_PAGE_SIZE - this.base;
      try {
        if (hugeTo > hugeFrom) madvise(v, hugeFrom, hugeTo - hugeFrom, MADV_HUGEPAGE);
        if (populate) {
          madvise(v, from, to - from, MADV_POPULATE_WRITE);
          populated += to - from;
        }
      } catch {
        /* an optimisation only: the pages fault in when written */
      }
    }
    return populated;
  }
}
