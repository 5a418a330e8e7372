// The guest thread's unwind buffer: where Asyncify writes the unwound stack, and the guest's own
// bytes it writes over (ExecState.displaced), kept aside while the stack is unwound and put back
// once the rewind has read its data.
import type { UnwindRegion } from '../state/exec-state.js';

export class UnwindBuffer {
  region: UnwindRegion | null = null;
  /**
   * The region's bytes as they were before the current unwind wrote there: one buffer the size of
   * the region, made at the first unwind and copied into at each (a fresh copy at every pause took
   * 0.15-0.33 ms of the guest's pause, most of it allocating 256 KiB).
   */
  private beforeUnwind: Uint8Array | null = null;
  /** The part of them the unwind overwrote, put back when the rewind has read its data. */
  displaced: Uint8Array | null = null;
  /**
   * The unwind's data as it stood when a rewind stopped, kept while the guest has its own bytes
   * back: a resumed split function (loop-resume.ts) may restart the rewind on it (`again`).
   */
  private rewindRest: Uint8Array | null = null;

  constructor(private readonly memory: WebAssembly.Memory, private readonly bytes: number) {}

  /** Before an unwind: the region (reserved at the first), its bytes kept, Asyncify's header set. */
  begin(): UnwindRegion {
    this.region ??= this.reserve();
    const r = this.region;
    // The guest may own these bytes (see ExecState.displaced): keep them before Asyncify writes.
    if (this.beforeUnwind?.length !== r.size) this.beforeUnwind = new Uint8Array(r.size);
    this.beforeUnwind.set(new Uint8Array(this.memory.buffer, r.ptr, r.size));
    this.rewindRest = null;
    const words = new Int32Array(this.memory.buffer, r.ptr, 2);
    words[0] = r.ptr + 8; // Asyncify's data header: current position, end
    words[1] = r.ptr + r.size;
    return r;
  }

  // Taken from fresh pages at the first pause (memory.grow), not before the guest starts:
  // allocators that treat all of memory.size() at startup as their heap never see it, and the
  // guest's later memory.grow calls simply return pages above it. It is reused afterwards.
  private reserve(): UnwindRegion {
    const pages = Math.ceil(this.bytes / 65536);
    const oldPages = this.memory.grow(pages);
    return { ptr: oldPages * 65536, size: pages * 65536 };
  }

  /** After an unwind: what it overwrote ([ptr, end of its data)), from the copy taken before. */
  unwound(): void {
    const r = this.region!;
    const end = new Uint32Array(this.memory.buffer, r.ptr, 1)[0]!;
    this.displaced = this.beforeUnwind!.slice(0, end - r.ptr);
  }

  /**
   * A rewind stopped: it has read all its data (or all but what a split function's callee reads
   * after `again`), so the guest gets back what the unwind wrote over.
   */
  rewound(): void {
    if (this.displaced !== null) {
      const mem = new Uint8Array(this.memory.buffer);
      const ptr = this.region!.ptr;
      this.rewindRest = mem.slice(ptr, ptr + this.displaced.length);
      mem.set(this.displaced, ptr);
    }
    this.displaced = null;
  }

  /** The rewind restarts: the rest of the unwind's data back, the guest's bytes kept again. */
  again(): UnwindRegion {
    const r = this.region!;
    if (this.rewindRest !== null) {
      const mem = new Uint8Array(this.memory.buffer);
      this.displaced = mem.slice(r.ptr, r.ptr + this.rewindRest.length);
      mem.set(this.rewindRest, r.ptr);
      this.rewindRest = null;
    }
    return r;
  }

  /** A restored guest: the region and displaced bytes of its state. */
  restore(region: UnwindRegion | null, displaced: string | null | undefined): void {
    this.region = region;
    this.displaced = displaced === undefined || displaced === null ? null : new Uint8Array(Buffer.from(displaced, 'base64'));
  }

  displacedBase64(): string | null {
    const d = this.displaced;
    return d === null ? null : Buffer.from(d.buffer, d.byteOffset, d.length).toString('base64');
  }
}
