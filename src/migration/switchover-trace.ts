// Timestamps of the steps of a switchover, printed to stderr when FERRY_TRACE=switchover: the
// downtime is the sum of these steps, and this is how one finds which step to shorten. With
// FERRY_TRACE=phases, each side also prints when it enters each phase of the whole migration
// (where a migration's total time goes).
import type { MigrationPhase } from './report.js';

const traces = (process.env['FERRY_TRACE'] ?? '').split(',');
const enabled = traces.includes('switchover');
const phasesEnabled = traces.includes('phases');

/** One side's migration phase, printed with the time since the start when FERRY_TRACE=phases. */
export class PhaseLog {
  readonly t0 = performance.now();
  current: MigrationPhase = 'connecting';

  constructor(private readonly side: 'source' | 'destination') {}

  enter(phase: MigrationPhase): void {
    this.current = phase;
    this.note(phase);
  }

  /** A step within a phase, or what was measured there. */
  note(what: string): void {
    if (phasesEnabled) process.stderr.write(`ferry trace ${this.side} phase ${what} +${(performance.now() - this.t0).toFixed(1)}ms\n`);
  }
}

export class SwitchoverTrace {
  private readonly t0 = performance.now();
  private readonly marks: string[] = [];

  constructor(private readonly side: 'source' | 'destination') {}

  mark(step: string): void {
    if (enabled) this.marks.push(`${step} +${(performance.now() - this.t0).toFixed(2)}ms`);
  }

  print(): void {
    // The start on the wall clock (ms, modulo 100 s) lines up the two sides' traces on one host.
    const at = ((performance.timeOrigin + this.t0) % 100_000).toFixed(2);
    if (enabled && this.marks.length > 0) process.stderr.write(`ferry trace ${this.side} switchover (from ${at}): ${this.marks.join(', ')}\n`);
  }
}
