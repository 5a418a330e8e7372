// Timestamps of the steps of a switchover, printed to stderr when FERRY_TRACE=switchover: the
// downtime is the sum of these steps, and this is how one finds which step to shorten. With
// FERRY_TRACE=phases, each side also prints when it enters each phase of the whole migration
// (where a migration's total time goes).
import type { MigrationPhase } from './report.js';

const traces = (process.env['FERRY_TRACE'] ?? '').split(',');
const enabled = traces.includes('switchover');
const phasesEnabled = traces.includes('phases');

/**
 * The moves a migration side may make, from each phase (both sides share it: the destination
 * follows the source's phases). 'failed' and 'cancelled' end a migration from any phase that has
 * not ended; nothing leaves an ended one. A precopy migration never passes through 'postcopy'.
 */
export const PHASE_MOVES: Readonly<Record<MigrationPhase, readonly MigrationPhase[]>> = {
  connecting: ['handshake'],
  // A destination that refuses a source's SETUP goes back to waiting for another source.
  handshake: ['precopy', 'connecting'],
  precopy: ['switchover'],
  switchover: ['postcopy', 'verifying'],
  postcopy: ['postcopy-paused', 'verifying', 'completed'],
  // A connection lost while the last figures travel (verifying) is recovered like one lost in postcopy.
  // Completed without reconnecting: the destination already held every page (its FAULT_STATS came)
  // and could not be reached again for the rest of the closing messages (docs/failures.md).
  'postcopy-paused': ['postcopy', 'completed'],
  verifying: ['postcopy-paused', 'completed'],
  completed: [],
  failed: [],
  cancelled: [],
};

const ENDED: readonly MigrationPhase[] = ['completed', 'failed', 'cancelled'];

/** Whether a side may move from one phase to another (the same phase again is no move). */
export function phaseMoveAllowed(from: MigrationPhase, to: MigrationPhase): boolean {
  if (from === to) return true;
  if (ENDED.includes(from)) return false;
  return to === 'failed' || to === 'cancelled' || PHASE_MOVES[from].includes(to);
}

/** One side's migration phase, printed with the time since the start when FERRY_TRACE=phases. */
export class PhaseLog {
  readonly t0 = performance.now();
  current: MigrationPhase = 'connecting';

  constructor(
    private readonly side: 'source' | 'destination',
    /** Told of each phase entered (a command that prints its progress). */
    private readonly onEnter?: (phase: MigrationPhase) => void,
  ) {}

  /** Moves to `phase`; a move PHASE_MOVES does not allow is a bug in the caller, and throws. */
  enter(phase: MigrationPhase): void {
    if (phase === this.current) return; // entered again on another path: one line per phase
    if (!phaseMoveAllowed(this.current, phase)) throw new Error(`${this.side}: migration phase ${this.current} -> ${phase} is not a legal move (a Ferry bug)`);
    this.current = phase;
    this.note(phase);
    this.onEnter?.(phase);
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
