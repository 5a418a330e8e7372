// Token-bucket rate limit for the bulk channel: callers take() the bytes they are about to write and
// wait if the bucket is in debt. A take larger than the bucket is allowed (it borrows), so a frame is
// never split; the average rate still converges to `bytesPerSecond`.
export class TokenBucket {
  private tokens: number;
  private last = performance.now();
  readonly burst: number;

  constructor(readonly bytesPerSecond: number) {
    if (!Number.isFinite(bytesPerSecond) || bytesPerSecond <= 0) {
      throw new RangeError(`maxBandwidth must be a positive number of bytes per second, got ${bytesPerSecond}`);
    }
    this.burst = Math.max(64 * 1024, bytesPerSecond / 20); // 50 ms worth
    this.tokens = this.burst;
  }

  /** Milliseconds to wait before `bytes` may be written (0: write now). Consumes the tokens. */
  reserve(bytes: number): number {
    const now = performance.now();
    this.tokens = Math.min(this.burst, this.tokens + ((now - this.last) / 1000) * this.bytesPerSecond);
    this.last = now;
    this.tokens -= bytes;
    return this.tokens >= 0 ? 0 : (-this.tokens / this.bytesPerSecond) * 1000;
  }

  async take(bytes: number): Promise<void> {
    const wait = this.reserve(bytes);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
}
