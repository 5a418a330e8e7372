// A snapshot chain as a page provider (see migration/send/page-provider.ts): the pages the chain
// holds are present, every other page was never touched, and reads go through the one layer
// reader. `serve-snapshot` sends through it, lazy restore places the runtime's pages and feeds its
// fault worker from the same layer files.
import { fileURLToPath } from 'node:url';
import { PageBitmap } from '../memory/page-bitmap.js';
import { runtimePageRuns, type ExecState } from '../state/exec-state.js';
import type { PageProvider, PageReaderSpec } from '../migration/send/page-provider.js';
import { chainReader, type SnapshotChain } from './chain.js';
import { PAGE_SIZE } from './format.js';
import type { LayerFiles, LayerReader } from './layer-reader.js';

export class SnapshotPageProvider implements PageProvider {
  readonly pageCount: number;
  readonly maxPages: number;
  /** The layer files, shareable with another thread (the fault worker, the urgent channel's thread). */
  readonly files: LayerFiles;
  readonly readerSpec: PageReaderSpec;
  private readonly reader: LayerReader;

  constructor(readonly chain: SnapshotChain) {
    this.pageCount = chain.location.length;
    this.maxPages = chain.memory.maxBytes / PAGE_SIZE;
    const location = new SharedArrayBuffer(chain.location.byteLength);
    new Int16Array(location).set(chain.location);
    this.files = { files: chain.layers.map((l) => l.memoryPath), location };
    this.readerSpec = { kind: 'module', module: fileURLToPath(new URL('./layer-reader.js', import.meta.url)), exportName: 'openLayerReader', options: this.files };
    this.reader = chainReader(chain);
  }

  residency(): { present: PageBitmap; zero: PageBitmap } {
    const present = new PageBitmap(this.pageCount);
    for (let p = 0; p < this.pageCount; p++) if (this.chain.location[p]! >= 0) present.add(p);
    return { present, zero: new PageBitmap(this.pageCount) };
  }

  /** Without the memory at hand, the whole unwind buffer counts (it is a few pages at most). */
  runtimeRuns(exec: ExecState): Array<[number, number]> {
    return runtimePageRuns(exec, this.pageCount);
  }

  readPages(first: number, count: number, into: Uint8Array, at = 0): void {
    this.reader.readPages(first, count, into, at);
  }

  close(): void {
    this.reader.close();
  }
}
