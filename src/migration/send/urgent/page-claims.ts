// Which postcopy pages have been sent, shared between the thread that pushes the bulk stream and
// the thread that answers urgent requests. claim() is an atomic test-and-set, so however the two
// race, each page is sent exactly once.
export class PageClaims {
  readonly words: Uint32Array;

  constructor(
    readonly size: number,
    readonly buffer: SharedArrayBuffer = new SharedArrayBuffer(Math.ceil(size / 32) * 4),
  ) {
    this.words = new Uint32Array(buffer, 0, Math.ceil(size / 32));
  }

  /** True if this caller claimed page p (nobody had). */
  claim(p: number): boolean {
    const m = 1 << (p & 31);
    return (Atomics.or(this.words, p >>> 5, m) & m) === 0;
  }

  isClaimed(p: number): boolean {
    return (Atomics.load(this.words, p >>> 5) & (1 << (p & 31))) !== 0;
  }
}
