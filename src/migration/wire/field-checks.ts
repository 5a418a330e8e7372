// Field checks and small codecs shared by the message encoder (encode.ts, which throws RangeError
// on a value the wire cannot carry) and decoder (decode.ts, which throws WireError naming the
// frame's offset): each check takes the failure to raise.
import type { FieldReader, FieldWriter } from './codec.js';
import { MAX_CHUNK_BYTES, MAX_MEMORY_BYTES, MAX_MODULE_BYTES, PAGE_SIZE, WASM_PAGE_SIZE } from './limits.js';
import type { ChannelKind, MigrationMode, PageKind, PageRange } from './message-types.js';

export const PAGE_KINDS: readonly PageKind[] = ['data', 'zero', 'untouched'];
export const MODES: readonly MigrationMode[] = ['precopy', 'postcopy'];
export const CHANNELS: readonly ChannelKind[] = ['bulk', 'urgent'];
export const ERROR_CODE_RE = /^[A-Z][A-Z0-9_]{0,63}$/;

export function writeRanges(w: FieldWriter, ranges: readonly PageRange[], what: string): void {
  checkRanges(ranges, (d) => new RangeError(`${what}: ${d}`));
  w.u32(ranges.length, `${what}.ranges.length`);
  const out = Buffer.allocUnsafe(12 * ranges.length);
  const view = new DataView(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < ranges.length; i++) putRange(view, 12 * i, ranges[i]!.offset, ranges[i]!.count);
  w.bytes(out);
}

/** One range on the wire: u64 offset (as two u32 halves: offsets are checked below 4 GiB), u32 count. */
export function putRange(view: DataView, at: number, offset: number, count: number): void {
  view.setUint32(at, offset % 2 ** 32, true);
  view.setUint32(at + 4, Math.floor(offset / 2 ** 32), true);
  view.setUint32(at + 8, count, true);
}

export function readRanges(r: FieldReader): PageRange[] {
  const n = r.u32('ranges.length');
  if (n * 12 !== r.remaining()) r.fail(`${n} ranges need ${n * 12} bytes, frame has ${r.remaining()}`);
  const ranges: PageRange[] = [];
  // The u64 offset as two u32 halves (no BigInt per range): one above 2^53 comes out inexact, but
  // anything past 4 GiB is refused by checkRanges below all the same.
  for (let i = 0; i < n; i++) {
    const low = r.u32('offset');
    const high = r.u32('offset');
    ranges.push({ offset: high * 2 ** 32 + low, count: r.u32('count') });
  }
  checkRanges(ranges, (d) => r.fail(d));
  return ranges;
}

export type Fail = (detail: string) => never | Error;

export function raise(fail: Fail, detail: string): never {
  const e = fail(detail);
  throw e;
}

export function checkModuleSize(size: number, fail: Fail): void {
  if (!Number.isInteger(size) || size < 8 || size > MAX_MODULE_BYTES) raise(fail, `moduleSize ${size} not in 8..${MAX_MODULE_BYTES}`);
}

export function checkGeometry(bytes: number, maxBytes: number, fail: Fail): void {
  for (const [field, v] of [['bytes', bytes], ['maxBytes', maxBytes]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > MAX_MEMORY_BYTES || v % WASM_PAGE_SIZE !== 0) {
      raise(fail, `memory ${field} ${v} must be a multiple of ${WASM_PAGE_SIZE} in 0..${MAX_MEMORY_BYTES}`);
    }
  }
  if (bytes > maxBytes) raise(fail, `memory bytes ${bytes} exceed maxBytes ${maxBytes}`);
}

export function checkRun(offset: number, count: number, maxCount: number, fail: Fail): void {
  if (!Number.isInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) raise(fail, `offset ${offset} is not page-aligned`);
  if (!Number.isInteger(count) || count < 1 || count > maxCount) raise(fail, `count ${count} not in 1..${maxCount}`);
  if (offset + count * PAGE_SIZE > MAX_MEMORY_BYTES) raise(fail, `pages ${offset}+${count}*${PAGE_SIZE} reach beyond 4 GiB`);
}

export function checkRanges(ranges: readonly PageRange[], fail: Fail): void {
  let end = 0;
  let i = 0;
  const failHere = (d: string) => raise(fail, `range ${i}: ${d}`);
  for (; i < ranges.length; i++) {
    const r = ranges[i]!;
    checkRun(r.offset, r.count, MAX_MEMORY_BYTES / PAGE_SIZE, failHere);
    if (r.offset < end) raise(fail, `range ${i} at ${r.offset} overlaps or precedes the previous one (ranges must ascend)`);
    end = r.offset + r.count * PAGE_SIZE;
  }
}

export function checkBitmap(startPage: number, pageCount: number, bits: Uint8Array, fail: Fail): void {
  const maxPages = MAX_MEMORY_BYTES / PAGE_SIZE;
  if (!Number.isInteger(startPage) || !Number.isInteger(pageCount) || startPage < 0 || pageCount < 0 || startPage + pageCount > maxPages) {
    raise(fail, `bitmap pages ${startPage}+${pageCount} reach beyond 4 GiB`);
  }
  const need = Math.ceil(pageCount / 8);
  if (bits.length !== need) raise(fail, `bitmap of ${pageCount} pages needs ${need} bytes, got ${bits.length}`);
  if (pageCount % 8 !== 0 && need > 0 && (bits[need - 1]! >> (pageCount % 8)) !== 0) raise(fail, 'bitmap has bits set past pageCount');
}

export function checkChunk(what: string, offset: number, length: number, total: number, fail: Fail): void {
  if (length > MAX_CHUNK_BYTES) raise(fail, `${what} chunk of ${length} bytes exceeds ${MAX_CHUNK_BYTES}`);
  if (!Number.isInteger(offset) || offset < 0 || offset + length > total) raise(fail, `${what} chunk ${offset}+${length} is beyond ${total} bytes`);
}

export function indexOf<T>(list: readonly T[], v: T, field: string): number {
  const i = list.indexOf(v);
  if (i < 0) throw new RangeError(`${field}: unknown value ${String(v)}`);
  return i;
}
