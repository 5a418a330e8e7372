// Order-independent memory digest for `--verify`. Every host page gets a 64-bit hash; the digest of
// a memory is sha256 over the per-page hashes in page order. PageDigest keeps the per-page hashes of
// pages as the stream placed them (set() replaces a page's hash, so the newest copy wins whatever
// order pages arrived in); digestMemory() computes the same value straight from a memory view.
//
// The per-page hash is not cryptographic: it is a checksum against bugs (a page lost, placed twice
// at the wrong offset, stale). Four independent 32-bit lanes, each step `lane = imul(lane ^ word, P)`
// followed by a rotate, are bijective in the lane state for a fixed word, so any single changed word
// always changes the result; four lanes keep the multiplier pipeline full (~GB/s in plain JS).
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import type { PageBitmap } from '../../memory/page-bitmap.js';
import { HOST_PAGE_SIZE, type GuestMemory } from '../../memory/guest-memory.js';
import { dataplaneAddon, dataplaneLoadFailure } from '../../sys/dataplane.js';

export const DIGEST_PAGE_SIZE = HOST_PAGE_SIZE;
const WORDS = DIGEST_PAGE_SIZE / 4;

const P1 = 0x9e3779b1 | 0;
const P2 = 0x85ebca77 | 0;
const P3 = 0xc2b2ae3d | 0;
const P4 = 0x27d4eb2f | 0;

/** Hash of 4096 bytes read as 1024 little-endian u32 words starting at `w[at]`. Writes lo/hi to out. */
function hashWords(w: Uint32Array, at: number, out: Uint32Array, outAt: number): void {
  let a = 0x243f6a88 | 0;
  let b = 0x85a308d3 | 0;
  let c = 0x13198a2e | 0;
  let d = 0x03707344 | 0;
  const end = at + WORDS;
  for (let i = at; i < end; i += 4) {
    a = Math.imul(a ^ w[i]!, P1);
    b = Math.imul(b ^ w[i + 1]!, P2);
    c = Math.imul(c ^ w[i + 2]!, P3);
    d = Math.imul(d ^ w[i + 3]!, P4);
    a = (a << 13) | (a >>> 19);
    b = (b << 17) | (b >>> 15);
    c = (c << 11) | (c >>> 21);
    d = (d << 19) | (d >>> 13);
  }
  // Final mix (murmur3 fmix32 style) so every lane influences both output words.
  let lo = Math.imul(a ^ (c >>> 7), P2) ^ d;
  let hi = Math.imul(b ^ (d >>> 5), P3) ^ c;
  lo ^= lo >>> 16;
  lo = Math.imul(lo, 0x85ebca6b);
  lo ^= lo >>> 13;
  hi = Math.imul(hi ^ lo, 0xc2b2ae35);
  hi ^= hi >>> 16;
  out[outAt] = lo >>> 0;
  out[outAt + 1] = hi >>> 0;
}

const scratch = new Uint32Array(WORDS);
const scratchBytes = new Uint8Array(scratch.buffer);

/** Hashes one 4096-byte page; copies first only if the view is not 4-byte aligned. */
function hashPageInto(bytes: Uint8Array, start: number, out: Uint32Array, outAt: number): void {
  const abs = bytes.byteOffset + start;
  if (abs % 4 === 0) {
    hashWords(new Uint32Array(bytes.buffer, abs, WORDS), 0, out, outAt);
  } else {
    scratchBytes.set(bytes.subarray(start, start + DIGEST_PAGE_SIZE));
    hashWords(scratch, 0, out, outAt);
  }
}

const ZERO_HASH = new Uint32Array(2);
hashWords(new Uint32Array(WORDS), 0, ZERO_HASH, 0);

/** The 64-bit hash of one page as [lo, hi] (for tests and diagnostics). */
export function pageHash(page: Uint8Array): [number, number] {
  if (page.length !== DIGEST_PAGE_SIZE) throw new RangeError(`pageHash: a page is ${DIGEST_PAGE_SIZE} bytes, got ${page.length}`);
  const out = new Uint32Array(2);
  hashPageInto(page, 0, out, 0);
  return [out[0]!, out[1]!];
}

export class PageDigest {
  /** Two u32 per page (lo, hi), little-endian order in memory. */
  private readonly hashes: Uint32Array;
  readonly pageCapacity: number;

  /**
   * `maxBytes`: the largest memory this digest can describe (e.g. the guest's maximum). `shared`:
   * another digest's buffer (`buffer`), so that two threads record the pages each places.
   */
  constructor(maxBytes: number, shared?: SharedArrayBuffer) {
    if (!Number.isInteger(maxBytes) || maxBytes < 0 || maxBytes % DIGEST_PAGE_SIZE !== 0) {
      throw new RangeError(`PageDigest: maxBytes must be a non-negative multiple of ${DIGEST_PAGE_SIZE}, got ${maxBytes}`);
    }
    this.pageCapacity = maxBytes / DIGEST_PAGE_SIZE;
    if (shared) {
      if (shared.byteLength !== this.pageCapacity * 8) throw new RangeError('PageDigest: the shared buffer does not match maxBytes');
      this.hashes = new Uint32Array(shared);
    } else {
      this.hashes = new Uint32Array(new SharedArrayBuffer(this.pageCapacity * 8));
      this.setZero(0, this.pageCapacity); // every page starts as zero (never touched)
    }
  }

  /** The per-page hashes, for a PageDigest on another thread. */
  get buffer(): SharedArrayBuffer {
    return this.hashes.buffer as SharedArrayBuffer;
  }

  /**
   * Records the content of `count` consecutive pages starting at `pageIndex` (bytes.length must be
   * count*4096, default 1 page). Replaces any hash recorded before for those pages.
   */
  set(pageIndex: number, bytes: Uint8Array, count = 1): void {
    this.checkRange(pageIndex, count);
    if (bytes.length !== count * DIGEST_PAGE_SIZE) {
      throw new RangeError(`PageDigest.set: ${count} pages need ${count * DIGEST_PAGE_SIZE} bytes, got ${bytes.length}`);
    }
    for (let i = 0; i < count; i++) hashPageInto(bytes, i * DIGEST_PAGE_SIZE, this.hashes, (pageIndex + i) * 2);
  }

  /** Records pages as zero (zero and untouched runs, discarded pages that read back as zero). */
  setZero(pageIndex: number, count = 1): void {
    this.checkRange(pageIndex, count);
    for (let i = pageIndex * 2, end = (pageIndex + count) * 2; i < end; i += 2) {
      this.hashes[i] = ZERO_HASH[0]!;
      this.hashes[i + 1] = ZERO_HASH[1]!;
    }
  }

  /** sha256 (hex) over the hashes of pages 0..pageCount-1. */
  digestHex(pageCount: number): string {
    this.checkRange(0, pageCount);
    return sha256Hex(this.hashes, pageCount);
  }

  private checkRange(pageIndex: number, count: number): void {
    if (!Number.isInteger(pageIndex) || !Number.isInteger(count) || pageIndex < 0 || count < 0 || pageIndex + count > this.pageCapacity) {
      throw new RangeError(`PageDigest: pages ${pageIndex}+${count} outside 0..${this.pageCapacity}`);
    }
  }
}

/**
 * The digest of the first `pageCount` pages of `view`, equal to a PageDigest that saw those pages.
 * `isZero(page)`, if given, marks pages known to be zero without reading them (reading a
 * never-touched page would map the zero page and make it look present to residency scans).
 */
export function digestMemory(view: Uint8Array, pageCount: number, isZero?: (pageIndex: number) => boolean): string {
  if (!Number.isInteger(pageCount) || pageCount < 0 || pageCount * DIGEST_PAGE_SIZE > view.length) {
    throw new RangeError(`digestMemory: ${pageCount} pages do not fit a view of ${view.length} bytes`);
  }
  const hashes = new Uint32Array(pageCount * 2);
  for (let p = 0; p < pageCount; p++) {
    if (isZero?.(p)) {
      hashes[p * 2] = ZERO_HASH[0]!;
      hashes[p * 2 + 1] = ZERO_HASH[1]!;
    } else {
      hashPageInto(view, p * DIGEST_PAGE_SIZE, hashes, p * 2);
    }
  }
  return sha256Hex(hashes, pageCount);
}

function sha256Hex(hashes: Uint32Array, pageCount: number): string {
  const h = createHash('sha256');
  h.update(new Uint8Array(hashes.buffer, hashes.byteOffset, pageCount * 8));
  return h.digest('hex');
}

/** What verify/digest-thread.ts is given. */
export interface DigestJob {
  /** The guest memory's buffer (shared: the thread reads the pages where they are). */
  memory: SharedArrayBuffer;
  pageCount: number;
  /** Words of the bitmap of pages present in memory; the others are zero and are not read. */
  present: Uint32Array;
}

export type DigestResult = { hex: string } | { error: string };

/**
 * The source's half of `--verify`, started at the commit: from then on the source's copy of the
 * guest's memory never changes again (its guest stays paused), so its digest is computed on a
 * thread of its own while the pages still stream, instead of after them. `present` says which
 * pages are mapped; the others are hashed as zero without being read (a read would map them).
 * On a native thread of the data plane addon where it loads (dp_digest.c: ~5 GB/s here, and no
 * worker to start), else on a JavaScript worker (~2.2 GB/s, after a worker's start of ~55 ms):
 * while postcopy runs, the stream's threads and the destination's guest share the host's cores
 * with it, so its CPU time is taken from the pages still to move.
 */
export function digestFrozenMemory(
  mem: GuestMemory,
  pageCount: number,
  present: PageBitmap,
  /** Which thread (tests: both must agree); default the native one where the addon loads. */
  on: 'native' | 'worker' = dataplaneLoadFailure() === null ? 'native' : 'worker',
): Promise<string> {
  const memory = mem.memory.buffer as unknown as SharedArrayBuffer;
  if (on === 'native') return nativeDigest(new Uint8Array(memory), pageCount, present.words.slice());
  const job: DigestJob = { memory, pageCount, present: present.words.slice() };
  const worker = new Worker(new URL('./digest-thread.js', import.meta.url), { workerData: job });
  return new Promise<string>((resolve, reject) => {
    worker.once('message', (r: DigestResult) => ('hex' in r ? resolve(r.hex) : reject(new Error(`digest thread: ${r.error}`))));
    worker.once('error', (err) => reject(new Error(`digest thread failed: ${err.message}`)));
    worker.once('exit', (code) => reject(new Error(`digest thread exited (${code}) without a digest`)));
  });
}

function nativeDigest(memory: Uint8Array, pageCount: number, present: Uint32Array): Promise<string> {
  const hashes = new Uint32Array(Math.max(1, pageCount) * 2);
  const dp = dataplaneAddon();
  return new Promise<string>((resolve, reject) => {
    const handle = dp.startDigest({ memory, pageCount, present, hashes }, (error) => {
      dp.stop(handle);
      if (error === null) resolve(sha256Hex(hashes, pageCount));
      else reject(new Error(`digest thread: ${error}`));
    });
  });
}
