// The live source's page provider: a running (later paused) guest's own memory. Residency comes
// from the page tables (never-touched pages and zero-page mappings cost nothing to send), reads
// copy from the memory, and the urgent thread reads the same shared memory.
import type { GuestMemory } from '../../memory/guest-memory.js';
import type { PageBitmap } from '../../memory/page-bitmap.js';
import { scanResidency } from '../../memory/residency.js';
import { runtimePageRuns, unwoundEnd, type ExecState } from '../../state/exec-state.js';
import { MemoryPageReader, type PageProvider, type PageReaderSpec } from './page-provider.js';

export class LiveMemoryProvider implements PageProvider {
  readonly readerSpec: PageReaderSpec;
  private readonly reader: MemoryPageReader;

  constructor(readonly mem: GuestMemory) {
    this.readerSpec = { kind: 'memory', memory: mem.memory };
    this.reader = new MemoryPageReader(mem.memory);
  }

  get pageCount(): number {
    return this.mem.pageCount;
  }

  get maxPages(): number {
    return this.mem.maxPageCount;
  }

  residency(): { present: PageBitmap; zero: PageBitmap } {
    const r = scanResidency(this.mem);
    return { present: r.present, zero: r.zero };
  }

  /** The paused guest's stack is read to find where its unwound frames end (fewer pages to send). */
  runtimeRuns(exec: ExecState): Array<[number, number]> {
    return runtimePageRuns(exec, this.pageCount, unwoundEnd(exec, this.mem.view()));
  }

  readPages(first: number, count: number, into: Uint8Array, at = 0): void {
    this.reader.readPages(first, count, into, at);
  }

  close(): void {}
}
