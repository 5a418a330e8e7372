// Timestamps of the steps of a switchover, printed to stderr when FERRY_TRACE=switchover: the
// downtime is the sum of these steps, and this is how one finds which step to shorten.
const enabled = (process.env['FERRY_TRACE'] ?? '').split(',').includes('switchover');

export class SwitchoverTrace {
  private readonly t0 = performance.now();
  private readonly marks: string[] = [];

  constructor(private readonly side: 'source' | 'destination') {}

  mark(step: string): void {
    if (enabled) this.marks.push(`${step} +${(performance.now() - this.t0).toFixed(2)}ms`);
  }

  print(): void {
    if (enabled && this.marks.length > 0) process.stderr.write(`ferry trace ${this.side} switchover: ${this.marks.join(', ')}\n`);
  }
}
