// When precopy stops: the decision taken after each pass, as a pure function of what the pass
// measured (tested on its own in test/migration-convergence.test.ts).
import type { MigrationMode } from '../session/report.js';

/** Precopy gives up (precopy mode) after this many passes that did not shrink the dirty set. */
export const STALL_PASSES = 5;
/** Auto mode switches to postcopy after this share of the precopy timeout at the latest. */
export const AUTO_POSTCOPY_BUDGET = 0.25;

export interface PassMeasure {
  mode: MigrationMode;
  /** Time the remaining dirty pages would take at the measured rate, in ms. */
  expectedDowntimeMs: number;
  downtimeTargetMs: number;
  /** Passes in a row that did not shrink the dirty set below its smallest so far. */
  stalledPasses: number;
  elapsedS: number;
  precopyTimeoutS: number;
  /** Bytes sent so far plus the dirty set: what another pass would bring the total to. */
  nextTotalBytes: number;
  memoryBytes: number;
}

/**
 * - 'stop-and-copy': the rest fits the downtime target: pause and send it (any mode).
 * - 'postcopy': stop precopy and move to postcopy (postcopy at once; auto when precopy stops
 *   paying off, or before another pass could take the total past one memory's worth — with
 *   postcopy's at most one more, the total stays within 2 x memory).
 * - 'give-up': precopy mode that cannot converge (stalled or out of time): the guest stays.
 * - 'another-pass'.
 */
export type PassDecision = 'stop-and-copy' | 'postcopy' | 'give-up' | 'another-pass';

export function decideAfterPass(m: PassMeasure): PassDecision {
  if (m.expectedDowntimeMs <= m.downtimeTargetMs) return 'stop-and-copy';
  if (m.mode === 'postcopy') return 'postcopy';
  if (m.mode === 'auto') {
    if (m.stalledPasses >= 2 || m.elapsedS > m.precopyTimeoutS * AUTO_POSTCOPY_BUDGET || m.nextTotalBytes > m.memoryBytes) return 'postcopy';
    return 'another-pass';
  }
  if (m.stalledPasses >= STALL_PASSES || m.elapsedS > m.precopyTimeoutS) return 'give-up';
  return 'another-pass';
}

/**
 * Pass 0 is futile once this share of the present pages it has covered was written again since it
 * began: those pages go again anyway (a later pass, or postcopy's DISCARD and stream)...
 */
export const FUTILE_PASS_SHARE = 0.5;
/**
 * ...and the guest writes ahead of the pass too, at least this share of the present pages it has
 * not reached yet: the rest of the pass would be as stale. A guest whose writes stay in a part of
 * its memory the pass has crossed (its stack, a hot buffer near the start) leaves the rest to it.
 */
export const FUTILE_AHEAD_SHARE = 0.25;
/** Judged only once pass 0 has covered this share of the memory (less says little of the rate). */
export const FUTILE_PASS_MIN_COVER = 1 / 16;

export interface PassZeroMeasure {
  mode: MigrationMode;
  /** Pages below the pass's cursor, and the pass's whole range. */
  coveredPages: number;
  pageCount: number;
  /** Of the covered pages: present when the pass began, and written since. */
  presentCovered: number;
  writtenCovered: number;
  /** The same of the pages from the cursor on. */
  presentAhead: number;
  writtenAhead: number;
}

/**
 * Whether to cut pass 0 short and go to postcopy now (postcopy and auto modes; precopy mode needs
 * every page before the pause): the pages it has not sent yet then cross once, by postcopy,
 * instead of twice.
 */
export function passZeroFutile(m: PassZeroMeasure): boolean {
  if (m.mode === 'precopy') return false;
  if (m.coveredPages < m.pageCount * FUTILE_PASS_MIN_COVER || m.presentCovered <= 0) return false;
  if (m.writtenCovered < m.presentCovered * FUTILE_PASS_SHARE) return false;
  return m.presentAhead <= 0 || m.writtenAhead >= m.presentAhead * FUTILE_AHEAD_SHARE;
}
