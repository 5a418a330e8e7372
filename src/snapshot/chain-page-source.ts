// The page source a lazy restore gives the fault server: it runs inside the fault worker (a thread
// that never touches guest memory) and answers a fault with pread from the memory.bin of the newest
// snapshot layer holding each page (every layer keeps page p at byte p*4096). Chunk checksums are not
// checked on this path (a fault must not read a whole 1 MiB chunk); the background loader checks
// every chunk and stops the guest on a mismatch (see restore.ts).
import { openSync, closeSync } from 'node:fs';
import { pread } from '../sys/fd.js';
import { mapAnonymous } from '../sys/mman.js';
import { HOST_PAGE_SIZE } from '../memory/guest-memory.js';
import type { PageSink, PageSource } from '../memory/page-source.js';

const PAGE = HOST_PAGE_SIZE;

export interface ChainPageSourceOptions {
  /** memory.bin paths, root layer first. */
  files: string[];
  /** Int16Array over this buffer: per page, the layer index holding it, -1 = none (zero). */
  location: SharedArrayBuffer;
}

export class ChainPageSource implements PageSource {
  readonly pollFds: readonly number[] = [];
  private readonly fds: number[];
  private readonly location: Int16Array;
  private staging: Uint8Array;

  constructor(opts: ChainPageSourceOptions) {
    if (!Array.isArray(opts.files) || !(opts.location instanceof SharedArrayBuffer)) throw new TypeError('ChainPageSource: give files and a shared location table');
    this.location = new Int16Array(opts.location);
    this.fds = opts.files.map((f) => openSync(f, 'r'));
    this.staging = new Uint8Array(mapAnonymous(16 * PAGE));
  }

  request(firstPage: number, count: number, sink: PageSink): void {
    if (this.staging.byteLength < count * PAGE) this.staging = new Uint8Array(mapAnonymous(count * PAGE));
    const buf = this.staging;
    for (let i = 0; i < count; ) {
      const layer = this.location[firstPage + i] ?? -1;
      let j = i + 1;
      while (j < count && (this.location[firstPage + j] ?? -1) === layer) j++;
      if (layer < 0) buf.fill(0, i * PAGE, j * PAGE);
      else this.readFully(this.fds[layer]!, buf, i * PAGE, (j - i) * PAGE, (firstPage + i) * PAGE);
      i = j;
    }
    sink.place(firstPage, count, buf, 0);
  }

  private readFully(fd: number, buf: Uint8Array, at: number, length: number, position: number): void {
    let done = 0;
    while (done < length) {
      const n = pread(fd, buf, at + done, length - done, position + done);
      if (n === 0) throw new Error(`snapshot memory file ends at byte ${position + done} (truncated while restoring?)`);
      done += n;
    }
  }

  onReadable(): void {}

  close(): void {
    for (const fd of this.fds) closeSync(fd);
  }
}

/** Entry point the fault worker calls (PageSourceSpec kind 'module'). */
export function createPageSource(options: ChainPageSourceOptions): PageSource {
  return new ChainPageSource(options);
}
