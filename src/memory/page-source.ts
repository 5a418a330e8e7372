// Page sources: where the fault server gets the bytes of pending pages. A source lives inside the fault
// worker (the thread that must never touch guest memory), built there from a serializable
// PageSourceSpec. Local sources (an in-memory image, a file) answer a request synchronously; a network
// source (postcopy) returns the fds it waits on and places pages when the loop reports them readable.
import { openSync, closeSync } from 'node:fs';
import { pread } from '../sys/fd.js';
import { mapAnonymous } from '../sys/mman.js';
import { HOST_PAGE_SIZE } from './guest-memory.js';

/** Where a source delivers bytes: count pages starting at firstPage, from bytes[offset..]. */
export interface PageSink {
  place(firstPage: number, count: number, bytes: ArrayBufferView, offset: number): void;
}

export interface PageSource {
  /**
   * Asks for pages [firstPage, firstPage+count) (all pending). A local source calls sink.place before
   * returning; a remote one sends a request and places the pages later from onReadable().
   */
  request(firstPage: number, count: number, sink: PageSink): void;
  /** fds the fault loop polls for this source besides the uffd (e.g. its socket); [] for local sources. */
  readonly pollFds: readonly number[];
  /** Called by the fault loop when pollFds[i] is readable (never blocks for long). */
  onReadable(fd: number, sink: PageSink): void;
  close(): void;
}

export type PageSourceSpec =
  /** Pages from an in-memory image: page i at byte i*4096 of image (beyond its end: zeros). */
  | { kind: 'buffer'; image: SharedArrayBuffer }
  /**
   * Pages from a file: page i at byte offset + i*4096, or at pageOffsets[i] (a Float64Array over the
   * SharedArrayBuffer, -1 = zero page) for sparse files such as snapshots. Give path or an open fd.
   */
  | { kind: 'file'; path?: string; fd?: number; offset?: number; pageOffsets?: SharedArrayBuffer }
  /** Any other source: the fault worker imports `module` and calls its `exportName` (default
   * createPageSource) with `options`; it returns a PageSource (or a promise of one). */
  | { kind: 'module'; module: string; exportName?: string; options?: unknown };

const ZERO_RUN = 64;

/** Serves pages from a SharedArrayBuffer image by copying straight from it (no staging). */
export class BufferPageSource implements PageSource {
  readonly pollFds: readonly number[] = [];
  private readonly image: Uint8Array;
  private zeros: Uint8Array | null = null;
  constructor(image: SharedArrayBuffer) {
    if (!(image instanceof SharedArrayBuffer)) throw new TypeError('BufferPageSource: image must be a SharedArrayBuffer');
    this.image = new Uint8Array(image);
  }
  request(firstPage: number, count: number, sink: PageSink): void {
    const inImage = Math.max(0, Math.min(count, Math.floor(this.image.byteLength / HOST_PAGE_SIZE) - firstPage));
    if (inImage > 0) sink.place(firstPage, inImage, this.image, firstPage * HOST_PAGE_SIZE);
    for (let p = firstPage + inImage; p < firstPage + count; p += ZERO_RUN) {
      this.zeros ??= new Uint8Array(mapAnonymous(ZERO_RUN * HOST_PAGE_SIZE));
      sink.place(p, Math.min(ZERO_RUN, firstPage + count - p), this.zeros, 0);
    }
  }
  onReadable(): void {}
  close(): void {}
}

/** Serves pages from a file with pread into a staging mapping, then hands them to the sink. */
export class FilePageSource implements PageSource {
  readonly pollFds: readonly number[] = [];
  private readonly fd: number;
  private readonly ownsFd: boolean;
  private readonly offset: number;
  private readonly pageOffsets: Float64Array | null;
  private staging: Uint8Array;
  constructor(spec: { path?: string; fd?: number; offset?: number; pageOffsets?: SharedArrayBuffer }) {
    if (spec.fd === undefined && spec.path === undefined) throw new TypeError('FilePageSource: give path or fd');
    this.ownsFd = spec.fd === undefined;
    this.fd = spec.fd ?? openSync(spec.path!, 'r');
    this.offset = spec.offset ?? 0;
    this.pageOffsets = spec.pageOffsets ? new Float64Array(spec.pageOffsets) : null;
    this.staging = new Uint8Array(mapAnonymous(16 * HOST_PAGE_SIZE));
  }
  request(firstPage: number, count: number, sink: PageSink): void {
    if (this.staging.byteLength < count * HOST_PAGE_SIZE) this.staging = new Uint8Array(mapAnonymous(count * HOST_PAGE_SIZE));
    const buf = this.staging;
    if (!this.pageOffsets) {
      this.readFully(buf, 0, count * HOST_PAGE_SIZE, this.offset + firstPage * HOST_PAGE_SIZE);
    } else {
      for (let i = 0; i < count; i++) {
        const off = this.pageOffsets[firstPage + i] ?? -1;
        if (off < 0) buf.fill(0, i * HOST_PAGE_SIZE, (i + 1) * HOST_PAGE_SIZE);
        else this.readFully(buf, i * HOST_PAGE_SIZE, HOST_PAGE_SIZE, off);
      }
    }
    sink.place(firstPage, count, buf, 0);
  }
  /** pread until length bytes; past end of file the rest is zeros. */
  private readFully(buf: Uint8Array, at: number, length: number, position: number): void {
    let done = 0;
    while (done < length) {
      const n = pread(this.fd, buf, at + done, length - done, position + done);
      if (n === 0) { buf.fill(0, at + done, at + length); return; }
      done += n;
    }
  }
  onReadable(): void {}
  close(): void {
    if (this.ownsFd) closeSync(this.fd);
  }
}

export async function openPageSource(spec: PageSourceSpec): Promise<PageSource> {
  switch (spec.kind) {
    case 'buffer': return new BufferPageSource(spec.image);
    case 'file': return new FilePageSource(spec);
    case 'module': {
      const mod = (await import(spec.module)) as Record<string, unknown>;
      const factory = mod[spec.exportName ?? 'createPageSource'];
      if (typeof factory !== 'function') throw new TypeError(`page source module ${spec.module} has no function ${spec.exportName ?? 'createPageSource'}`);
      return (await (factory as (o: unknown) => PageSource | Promise<PageSource>)(spec.options));
    }
    default: throw new TypeError(`unknown page source kind ${(spec as { kind: unknown }).kind}`);
  }
}
