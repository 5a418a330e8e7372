// The page source a lazy restore gives the fault server: it runs inside the fault worker (a thread
// that never touches guest memory) and answers a fault from the memory.bin of the newest snapshot layer
// holding each page (LayerReader). Chunk checksums are not
// checked on this path (a fault must not read a whole 1 MiB chunk); the background loader checks
// every chunk and stops the guest on a mismatch (see restore.ts).
import { mapAnonymous } from '../sys/mman.js';
import { HOST_PAGE_SIZE } from '../memory/guest-memory.js';
import type { PageSink, PageSource } from '../memory/page-source.js';
import { openLayerReader, type LayerFiles, type LayerReader } from './layer-reader.js';

const PAGE = HOST_PAGE_SIZE;

/** The chain's layer files (SnapshotPageProvider.files). */
export type ChainPageSourceOptions = LayerFiles;

export class ChainPageSource implements PageSource {
  readonly pollFds: readonly number[] = [];
  private readonly reader: LayerReader;
  private staging: Uint8Array;

  constructor(opts: ChainPageSourceOptions) {
    this.reader = openLayerReader(opts);
    this.staging = new Uint8Array(mapAnonymous(16 * PAGE));
  }

  request(firstPage: number, count: number, sink: PageSink): void {
    if (this.staging.byteLength < count * PAGE) this.staging = new Uint8Array(mapAnonymous(count * PAGE));
    this.reader.readPages(firstPage, count, this.staging);
    sink.place(firstPage, count, this.staging, 0);
  }

  onReadable(): void {}

  close(): void {
    this.reader.close();
  }
}

/** Entry point the fault worker calls (PageSourceSpec kind 'module'). */
export function createPageSource(options: ChainPageSourceOptions): PageSource {
  return new ChainPageSource(options);
}
