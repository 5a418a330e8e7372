// PageBitmap: a set of page indexes [0, size) as a bitmap (1 bit per page: 128 KiB for 1M pages).
// Word-at-a-time set algebra and run iteration that skips empty words, so a sparse 1M-page set
// is walked in well under a millisecond.

function popcount32(x: number): number {
  x = x - ((x >>> 1) & 0x55555555);
  x = (x & 0x33333333) + ((x >>> 2) & 0x33333333);
  return (((x + (x >>> 4)) & 0x0f0f0f0f) * 0x01010101) >>> 24;
}

export class PageBitmap {
  readonly size: number;
  readonly words: Uint32Array;

  /** size pages; buffer (optional) lets the bitmap live in a SharedArrayBuffer shared between threads. */
  constructor(size: number, buffer?: ArrayBufferLike) {
    if (!Number.isInteger(size) || size < 0) throw new RangeError(`PageBitmap: size must be a non-negative integer, got ${size}`);
    this.size = size;
    const n = Math.ceil(size / 32);
    if (buffer && buffer.byteLength < n * 4) throw new RangeError(`PageBitmap: buffer of ${buffer.byteLength} bytes is too small for ${size} pages`);
    this.words = buffer ? new Uint32Array(buffer, 0, n) : new Uint32Array(n);
  }

  static fromPages(size: number, pages: Iterable<number>): PageBitmap {
    const b = new PageBitmap(size);
    for (const p of pages) b.add(p);
    return b;
  }

  static bytesFor(size: number): number {
    return Math.ceil(size / 32) * 4;
  }

  private check(i: number): void {
    if (!(i >= 0 && i < this.size && Number.isInteger(i))) throw new RangeError(`PageBitmap: page ${i} outside [0, ${this.size})`);
  }

  has(i: number): boolean {
    return i >= 0 && i < this.size && (this.words[i >>> 5]! & (1 << (i & 31))) !== 0;
  }
  add(i: number): this {
    this.check(i);
    this.words[i >>> 5]! |= 1 << (i & 31);
    return this;
  }
  delete(i: number): this {
    this.check(i);
    this.words[i >>> 5]! &= ~(1 << (i & 31));
    return this;
  }

  /** Adds pages [start, end). */
  addRange(start: number, end: number): this {
    return this.setRange(start, end, true);
  }
  /** Removes pages [start, end). */
  deleteRange(start: number, end: number): this {
    return this.setRange(start, end, false);
  }

  private setRange(start: number, end: number, on: boolean): this {
    if (end <= start) return this;
    this.check(start);
    this.check(end - 1);
    const w = this.words;
    let i = start;
    while (i < end && (i & 31) !== 0) { on ? (w[i >>> 5]! |= 1 << (i & 31)) : (w[i >>> 5]! &= ~(1 << (i & 31))); i++; }
    if (i + 32 <= end) {
      w.fill(on ? 0xffffffff : 0, i >>> 5, (end >>> 5));
      i = end & ~31;
    }
    while (i < end) { on ? (w[i >>> 5]! |= 1 << (i & 31)) : (w[i >>> 5]! &= ~(1 << (i & 31))); i++; }
    return this;
  }

  clear(): this {
    this.words.fill(0);
    return this;
  }

  count(): number {
    let c = 0;
    const w = this.words;
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) c += popcount32(w[i]!);
    return c;
  }

  isEmpty(): boolean {
    const w = this.words;
    for (let i = 0; i < w.length; i++) if (w[i] !== 0) return false;
    return true;
  }

  private same(o: PageBitmap): void {
    if (o.size !== this.size) throw new RangeError(`PageBitmap: sizes differ (${this.size} vs ${o.size})`);
  }
  /** this ∪= o */
  union(o: PageBitmap): this {
    this.same(o);
    const a = this.words, b = o.words;
    for (let i = 0; i < a.length; i++) if (b[i] !== 0) a[i] = a[i]! | b[i]!;
    return this;
  }
  /** this −= o */
  subtract(o: PageBitmap): this {
    this.same(o);
    const a = this.words, b = o.words;
    for (let i = 0; i < a.length; i++) if (b[i] !== 0) a[i] = a[i]! & ~b[i]!;
    return this;
  }
  /** this ∩= o */
  intersect(o: PageBitmap): this {
    this.same(o);
    const a = this.words, b = o.words;
    for (let i = 0; i < a.length; i++) a[i] = a[i]! & b[i]!;
    return this;
  }
  clone(): PageBitmap {
    const c = new PageBitmap(this.size);
    c.words.set(this.words);
    return c;
  }
  equals(o: PageBitmap): boolean {
    if (o.size !== this.size) return false;
    for (let i = 0; i < this.words.length; i++) if (this.words[i] !== o.words[i]) return false;
    return true;
  }

  /** Calls cb(start, end) for each maximal run of pages [start, end), in order. */
  forEachRun(cb: (start: number, end: number) => void): void {
    const w = this.words;
    let runStart = -1;
    for (let wi = 0; wi < w.length; wi++) {
      const word = w[wi]!;
      if (word === 0) {
        if (runStart >= 0) { cb(runStart, wi << 5); runStart = -1; }
        continue;
      }
      if (word === 0xffffffff) {
        if (runStart < 0) runStart = wi << 5;
        continue;
      }
      for (let b = 0; b < 32; b++) {
        const on = (word & (1 << b)) !== 0;
        if (on && runStart < 0) runStart = (wi << 5) + b;
        else if (!on && runStart >= 0) { cb(runStart, (wi << 5) + b); runStart = -1; }
      }
    }
    if (runStart >= 0) cb(runStart, Math.min(this.size, w.length << 5));
  }

  /** Maximal runs [start, end) in order. */
  runs(): Array<[number, number]> {
    const r: Array<[number, number]> = [];
    this.forEachRun((s, e) => r.push([s, e]));
    return r;
  }

  *pages(): IterableIterator<number> {
    const w = this.words;
    for (let wi = 0; wi < w.length; wi++) {
      let word = w[wi]!;
      while (word !== 0) {
        const b = 31 - Math.clz32(word & -word);
        yield (wi << 5) + b;
        word &= word - 1;
      }
    }
  }

  toArray(): number[] {
    return [...this.pages()];
  }
}
