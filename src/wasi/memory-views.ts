// Access to the guest's linear memory for host calls. Every accessor builds a fresh view of
// `memory.buffer`: the memory may have grown (a shared memory's old buffer object keeps its old length),
// and pages may be userfaultfd holes, so we never cache bytes; we hand views straight to syscalls.
import { ERRNO, WasiErrno } from './errno.js';

const utf8 = new TextEncoder();
const utf8Decoder = new TextDecoder('utf-8', { fatal: true });

export class GuestMemoryViews {
  private cachedBuffer: ArrayBufferLike | null = null;
  private cachedView: DataView | null = null;

  constructor(private readonly memory: WebAssembly.Memory) {}

  private buffer(): ArrayBufferLike {
    return this.memory.buffer;
  }

  /**
   * A DataView over the whole current memory. `memory.buffer` is read on every access and the view is
   * rebuilt whenever it is a different object (after growth), so a stale length is never used.
   */
  private whole(): DataView {
    const buf = this.memory.buffer;
    if (buf !== this.cachedBuffer || this.cachedView === null) {
      this.cachedBuffer = buf;
      this.cachedView = new DataView(buf);
    }
    return this.cachedView;
  }

  private check(ptr: number, len: number): void {
    if (ptr < 0 || len < 0 || ptr + len > this.buffer().byteLength) throw new WasiErrno(ERRNO.FAULT, `guest pointer ${ptr}+${len} out of bounds`);
  }

  /** A view of guest bytes [ptr, ptr+len): for syscalls to read or write in place. */
  bytes(ptr: number, len: number): Uint8Array {
    this.check(ptr >>> 0, len >>> 0);
    return new Uint8Array(this.buffer(), ptr >>> 0, len >>> 0);
  }

  /** The whole-memory view, after checking [ptr, ptr+len) is inside it. */
  private view(ptr: number, len: number): DataView {
    const v = this.whole();
    if (ptr < 0 || ptr + len > v.byteLength) throw new WasiErrno(ERRNO.FAULT, `guest pointer ${ptr}+${len} out of bounds`);
    return v;
  }

  u8(ptr: number): number { ptr >>>= 0; return this.view(ptr, 1).getUint8(ptr); }
  u16(ptr: number): number { ptr >>>= 0; return this.view(ptr, 2).getUint16(ptr, true); }
  u32(ptr: number): number { ptr >>>= 0; return this.view(ptr, 4).getUint32(ptr, true); }
  u64(ptr: number): bigint { ptr >>>= 0; return this.view(ptr, 8).getBigUint64(ptr, true); }
  setU8(ptr: number, v: number): void { ptr >>>= 0; this.view(ptr, 1).setUint8(ptr, v); }
  setU16(ptr: number, v: number): void { ptr >>>= 0; this.view(ptr, 2).setUint16(ptr, v, true); }
  setU32(ptr: number, v: number): void { ptr >>>= 0; this.view(ptr, 4).setUint32(ptr, v, true); }
  setU64(ptr: number, v: bigint): void { ptr >>>= 0; this.view(ptr, 8).setBigUint64(ptr, BigInt.asUintN(64, v), true); }

  /** Fills [ptr, ptr+len) with zeros (struct padding). */
  zero(ptr: number, len: number): void { this.bytes(ptr, len).fill(0); }

  /** Copies bytes out (TextDecoder refuses shared buffers, and paths are small). */
  copyOut(ptr: number, len: number): Uint8Array { return this.bytes(ptr, len).slice(); }

  /** A UTF-8 string from the guest; invalid UTF-8 is EILSEQ. */
  string(ptr: number, len: number): string {
    try {
      return utf8Decoder.decode(this.copyOut(ptr, len));
    } catch (err) {
      if (err instanceof WasiErrno) throw err;
      throw new WasiErrno(ERRNO.ILSEQ);
    }
  }

  /** Writes raw bytes at ptr. */
  write(ptr: number, data: Uint8Array): void { this.bytes(ptr, data.length).set(data); }

  /** Reads an iovec array into views of guest memory, skipping empty ones. */
  iovecs(ptr: number, count: number): Uint8Array[] {
    const out: Uint8Array[] = [];
    for (let i = 0; i < count >>> 0; i++) {
      const buf = this.u32(ptr + i * 8);
      const len = this.u32(ptr + i * 8 + 4);
      if (len > 0) out.push(this.bytes(buf, len));
    }
    return out;
  }
}

export function encodeUtf8(s: string): Uint8Array {
  return utf8.encode(s);
}
