// The one reader of snapshot memory files. Every layer keeps page p at byte p*4096 of its
// memory.bin; a chain's location table says which layer holds the newest copy of each page (-1:
// none, the page is zero). Lazy restore's fault worker, eager restore, the background loader,
// verification and serve-snapshot all read pages through this class, with the same checks: a file
// that ends early is a truncated snapshot, and a chunk read whole is checked against its sha256.
import { closeSync, openSync, read } from 'node:fs';
import { promisify } from 'node:util';
import { createHash } from 'node:crypto';
import { pread } from '../sys/fd.js';
import { HOST_PAGE_SIZE } from '../memory/guest-memory.js';
import { SnapshotError, type MemoryChunk } from './format.js';
import type { PageFiles } from '../memory/fault-server.js';

const PAGE = HOST_PAGE_SIZE;
const readAsync = promisify(read);

export class LayerReader {
  private readonly fds: number[];

  /**
   * @param paths memory.bin of each layer, root first (layer index = position).
   * @param location per page, the index of the newest layer holding it, -1 = none.
   */
  constructor(readonly paths: readonly string[], readonly location: Int16Array) {
    this.fds = [];
    try {
      for (const p of paths) this.fds.push(openSync(p, 'r'));
    } catch (err) {
      this.close();
      throw err;
    }
  }

  /** Pages [first, first + count) into `into` at byte `at`, each from its newest layer; zeros where none. */
  readPages(first: number, count: number, into: Uint8Array, at = 0): void {
    for (let i = 0; i < count; ) {
      const layer = this.location[first + i] ?? -1;
      let j = i + 1;
      while (j < count && (this.location[first + j] ?? -1) === layer) j++;
      if (layer < 0) into.fill(0, at + i * PAGE, at + j * PAGE);
      else this.readFully(layer, into, at + i * PAGE, (j - i) * PAGE, (first + i) * PAGE);
      i = j;
    }
  }

  /** One chunk of layer `layer` into `into` at byte `at`, checked against its checksum. */
  readChunk(layer: number, chunk: MemoryChunk, into: Uint8Array, at = 0): void {
    const len = chunk.count * PAGE;
    this.readFully(layer, into, at, len, chunk.page * PAGE);
    this.checkChunk(layer, chunk, into.subarray(at, at + len));
  }

  /** readChunk on a libuv thread, so the caller's event loop runs meanwhile. */
  async readChunkAsync(layer: number, chunk: MemoryChunk, into: Uint8Array): Promise<void> {
    const len = chunk.count * PAGE;
    let done = 0;
    while (done < len) {
      const { bytesRead } = await readAsync(this.fds[layer]!, into, done, len - done, chunk.page * PAGE + done);
      if (bytesRead === 0) throw truncatedAt(this.paths[layer]!, chunk.page * PAGE + done);
      done += bytesRead;
    }
    this.checkChunk(layer, chunk, into.subarray(0, len));
  }

  checkChunk(layer: number, chunk: MemoryChunk, bytes: Uint8Array): void {
    if (createHash('sha256').update(bytes).digest('hex') !== chunk.sha256) throw checksumMismatch(this.paths[layer]!, chunk.page, chunk.count);
  }

  close(): void {
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }

  private readFully(layer: number, into: Uint8Array, at: number, length: number, position: number): void {
    let done = 0;
    while (done < length) {
      const n = pread(this.fds[layer]!, into, at + done, length - done, position + done);
      if (n === 0) throw truncatedAt(this.paths[layer]!, position + done);
      done += n;
    }
  }
}

/** A layer file whose chunk of `count` pages from `page` is not what its checksum says. */
export function checksumMismatch(path: string, page: number, count: number): SnapshotError {
  return new SnapshotError('checksum', `${path}: checksum mismatch in the ${count} pages from page ${page} (byte ${page * PAGE}); the snapshot is damaged`);
}

/** A layer file that ends at `byte`, before what its manifest says it holds. */
export function truncatedAt(path: string, byte: number): SnapshotError {
  return new SnapshotError('truncated', `${path}: ends at byte ${byte}, inside page ${Math.floor(byte / PAGE)} (truncated or changed while in use?)`);
}

/** A chain's layer files as another thread opens them: memory.bin paths root first, and the location table shared (the fault server's PageFiles). */
export type LayerFiles = PageFiles;

/** Entry point for a thread handed a PageReaderSpec of kind 'module' (the urgent channel's). */
export function openLayerReader(options: LayerFiles): LayerReader {
  if (!Array.isArray(options.files) || !(options.location instanceof SharedArrayBuffer)) throw new TypeError('openLayerReader: give files and a shared location table');
  return new LayerReader(options.files, new Int16Array(options.location));
}
