// A single-producer, single-consumer ring of page requests in a SharedArrayBuffer: the fault worker
// (producer) records "pages [first, first+count) are needed" and signals an eventfd; the urgent
// thread (consumer), woken by the eventfd in its event loop, sends them on the urgent channel.
// Neither side blocks on the other, and neither touches guest memory.
const HEADER_WORDS = 4; // [0] head (next write), [1] tail (next read)
const ENTRY_WORDS = 2; // first page, page count; the fault's time is in a Float64 array after them

export class RequestRing {
  readonly capacity: number;
  private readonly words: Int32Array;
  private readonly times: Float64Array;

  constructor(readonly buffer: SharedArrayBuffer) {
    // Layout: header + entries (Int32), then one Float64 per entry (8-byte aligned).
    this.capacity = Math.floor((buffer.byteLength - HEADER_WORDS * 4) / (ENTRY_WORDS * 4 + 8));
    if (!Number.isInteger(this.capacity) || this.capacity < 1) throw new RangeError('RequestRing: bad buffer size');
    const intBytes = (HEADER_WORDS + this.capacity * ENTRY_WORDS) * 4;
    this.words = new Int32Array(buffer, 0, intBytes / 4);
    this.times = new Float64Array(buffer, Math.ceil(intBytes / 8) * 8, this.capacity);
  }

  static create(capacity = 1 << 16): RequestRing {
    const intBytes = (HEADER_WORDS + capacity * ENTRY_WORDS) * 4;
    return new RequestRing(new SharedArrayBuffer(Math.ceil(intBytes / 8) * 8 + capacity * 8));
  }

  /**
   * Producer side; `faultTime` is when the fault was read (ms since the epoch, with fractions:
   * performance.timeOrigin + performance.now(), comparable across threads).
   * Returns false when the ring is full (the caller retries after a signal).
   */
  push(first: number, count: number, faultTime: number): boolean {
    const head = Atomics.load(this.words, 0);
    const tail = Atomics.load(this.words, 1);
    if (head - tail >= this.capacity) return false;
    const at = HEADER_WORDS + (head % this.capacity) * ENTRY_WORDS;
    this.words[at] = first;
    this.words[at + 1] = count;
    this.times[head % this.capacity] = faultTime;
    Atomics.store(this.words, 0, head + 1); // publish after the entry is written
    return true;
  }

  /** Consumer side: calls `fn` for every entry published so far. */
  drain(fn: (first: number, count: number, faultTime: number) => void): number {
    const head = Atomics.load(this.words, 0);
    let tail = Atomics.load(this.words, 1);
    let n = 0;
    while (tail < head) {
      const at = HEADER_WORDS + (tail % this.capacity) * ENTRY_WORDS;
      fn(this.words[at]!, this.words[at + 1]!, this.times[tail % this.capacity]!);
      tail++;
      n++;
    }
    Atomics.store(this.words, 1, tail);
    return n;
  }
}
