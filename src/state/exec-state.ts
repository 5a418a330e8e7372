// Execution state of a paused guest: the values of its mutable globals (the stack pointer among
// them) and where its unwound call stack lies in linear memory. Tables are not captured: the
// modules Ferry accepts import no table and only fill theirs from element segments at
// instantiation, so a new instance rebuilds them identically.
import { HOST_PAGE_SIZE } from '../memory/guest-memory.js';

/** A Wasm value type a saved global or local can hold. */
export type ValueType = 'i32' | 'i64' | 'f32' | 'f64';

export interface GlobalValue {
  type: ValueType;
  /** The raw bits, hex, little-endian-independent: i32/f32 as 8 hex digits, i64/f64 as 16. */
  bits: string;
}

export interface UnwindRegion {
  /** Byte address in linear memory of the Asyncify data header (two i32 words) and its buffer. */
  ptr: number;
  size: number;
}

export interface ExecState {
  globals: GlobalValue[];
  /** Null only for a guest that never ran (nothing to rewind). */
  unwind: UnwindRegion | null;
  /**
   * The guest's own bytes that the last unwind overwrote at [unwind.ptr, unwind.ptr + length),
   * base64; written back once the rewind has read its data. The region is fresh pages at the first
   * pause, but an allocator that sizes its heap from memory.size() at its first malloc (wasi-libc's
   * dlmalloc built without `__heap_end`) takes those pages too when that malloc comes after the
   * first pause: the unwind then lands on live guest data, and without this the guest lost it.
   * Null (or absent in an older state) when nothing was displaced.
   */
  displaced?: string | null;
}

const scratch = new DataView(new ArrayBuffer(8));

export function encodeGlobal(type: ValueType, value: unknown): GlobalValue {
  switch (type) {
    case 'i32':
      scratch.setInt32(0, Number(value));
      return { type, bits: scratch.getUint32(0).toString(16).padStart(8, '0') };
    case 'f32':
      scratch.setFloat32(0, Number(value));
      return { type, bits: scratch.getUint32(0).toString(16).padStart(8, '0') };
    case 'i64':
      scratch.setBigInt64(0, BigInt(value as bigint));
      return { type, bits: scratch.getBigUint64(0).toString(16).padStart(16, '0') };
    case 'f64':
      scratch.setFloat64(0, Number(value));
      return { type, bits: scratch.getBigUint64(0).toString(16).padStart(16, '0') };
  }
}

export function decodeGlobal(g: GlobalValue): number | bigint {
  switch (g.type) {
    case 'i32':
      scratch.setUint32(0, parseInt(g.bits, 16));
      return scratch.getInt32(0);
    case 'f32':
      scratch.setUint32(0, parseInt(g.bits, 16));
      return scratch.getFloat32(0);
    case 'i64':
      scratch.setBigUint64(0, BigInt('0x' + g.bits));
      return scratch.getBigInt64(0);
    case 'f64':
      scratch.setBigUint64(0, BigInt('0x' + g.bits));
      return scratch.getFloat64(0);
  }
}


/** Where the data of an unwind ends: Asyncify's header at the buffer's start holds it (u32 LE). */
export function unwoundEnd(exec: ExecState, memory: Uint8Array): number | undefined {
  if (!exec.unwind || exec.unwind.ptr + 8 > memory.length) return undefined;
  // An address: unsigned (the buffer sits above 2 GiB in a large memory).
  return new DataView(memory.buffer, memory.byteOffset, memory.length).getUint32(exec.unwind.ptr, true);
}

/**
 * The host pages a resuming guest's runtime touches before any guest code runs — the page of the
 * safepoint flags (page 0: the owner of the guest writes them to request a pause) and the unwound
 * stack — as [start, end) page runs. A destination or a lazy restore places these before the guest
 * resumes, so that neither the runtime nor the main thread ever waits on a hole there. With
 * `stackDataEnd` (unwoundEnd() of the paused guest's memory) only the pages the unwind wrote count:
 * the rewind reads no further, so the rest of the buffer may stay a hole.
 */
export function runtimePageRuns(exec: ExecState, pageCount: number, stackDataEnd?: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [[0, Math.min(1, pageCount)]];
  if (exec.unwind) {
    const { ptr, size } = exec.unwind;
    const first = Math.floor(ptr / HOST_PAGE_SIZE);
    const d = stackDataEnd;
    const stackEnd = d !== undefined && Number.isInteger(d) && d >= ptr + 8 && d <= ptr + size ? d : ptr + size;
    const end = Math.min(pageCount, Math.ceil(stackEnd / HOST_PAGE_SIZE));
    if (first < end) runs.push([Math.max(first, 1), end]);
  }
  return runs.filter(([s, e]) => s < e);
}

/**
 * `runs` without the pages of `cut`: both ascending and disjoint, `cut` a handful of runs. Runs
 * that touch no cut are kept as they are (the same arrays): this runs inside a downtime on the
 * final walk's runs, tens of thousands of them for a guest that writes at random.
 */
export function withoutRuns(runs: ReadonlyArray<readonly [number, number]>, cut: ReadonlyArray<readonly [number, number]>): ReadonlyArray<readonly [number, number]> {
  let out = runs;
  for (const [cs, ce] of cut) {
    // The first run that ends after the cut starts, then every run that starts before it ends.
    let lo = 0;
    let hi = out.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (out[mid]![1] <= cs) lo = mid + 1;
      else hi = mid;
    }
    let j = lo;
    while (j < out.length && out[j]![0] < ce) j++;
    if (j === lo) continue;
    const pieces: Array<readonly [number, number]> = [];
    if (out[lo]![0] < cs) pieces.push([out[lo]![0], cs]);
    if (out[j - 1]![1] > ce) pieces.push([ce, out[j - 1]![1]]);
    out = out.slice(0, lo).concat(pieces, out.slice(j));
  }
  return out;
}
