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
    if (phase === this.current) return; // entered again on another path: one line per phase
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
  // CLOCK_MONOTONIC is one clock for every process on a host; performance.timeOrigin is not
  // (each process derives it from the millisecond wall clock, up to a millisecond apart).
  private readonly t0Host = process.hrtime.bigint();
  private readonly marks: string[] = [];

  constructor(private readonly side: 'source' | 'destination') {}

  /** A step done; `step` may be a function, for a label that costs something to make (called only when tracing). */
  mark(step: string | (() => string)): void {
    if (!enabled) return;
    const at = performance.now() - this.t0; // before the label is made: its cost is not the step's
    this.marks.push(`${typeof step === 'function' ? step() : step} +${at.toFixed(2)}ms`);
  }

  print(): void {
    // The start on the host's monotonic clock (ms, modulo 100 s) lines up the two sides' traces.
    const at = (Number(this.t0Host % 100_000_000_000n) / 1e6).toFixed(3);
    if (enabled && this.marks.length > 0) process.stderr.write(`ferry trace ${this.side} switchover (from ${at}): ${this.marks.join(', ')}\n`);
  }
}
