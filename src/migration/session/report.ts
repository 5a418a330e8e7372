// What a migration reports: live progress (GET /guest/migration, the progress bar) and the final
// summary (`ferry migrate --json`).
export type MigrationMode = 'precopy' | 'postcopy' | 'auto';

export type MigrationPhase =
  | 'connecting'
  | 'handshake'
  | 'precopy'
  | 'switchover'
  | 'postcopy'
  /** A connection broke during postcopy: waiting for it to come back (the guest runs, blocking only on missing pages). */
  | 'postcopy-paused'
  | 'verifying'
  | 'completed'
  | 'failed'
  | 'cancelled';

export interface PostcopyReport {
  pagesRequested: number;
  pagesPushed: number;
  faults: number;
  faultLatencyUs: { p50: number; p99: number; max: number };
  guestBlockedMs: number;
  durationMs: number;
  /**
   * The native fault path, as this side's threads counted it (absent when the JavaScript path ran):
   * pages it sent, and the bytes it carried each way over every data plane connection (also in the
   * migration's bytesSent/bytesReceived).
   */
  dataplane?: { pagesSent: number; bytesSent: number; bytesReceived: number };
}

export interface MigrationProgress {
  role: 'source' | 'destination';
  state: MigrationPhase;
  mode: MigrationMode;
  pass: number;
  bytesSent: number;
  bytesReceived: number;
  pagesSent: number;
  dirtyPages: number;
  /** Bytes/s over the last pass. */
  rateBytesPerSec: number;
  /** Pages/s the guest dirtied over the last pass. */
  dirtyRatePagesPerSec: number;
  expectedDowntimeMs: number | null;
  elapsedMs: number;
  postcopy: PostcopyReport | null;
  error: string | null;
  [k: string]: unknown;
}

export interface MigrationReport {
  mode: 'precopy' | 'postcopy';
  memoryBytes: number;
  totalMs: number;
  /** From the guest's pause on this host until the destination says it runs there (its RUNNING came back). */
  downtimeMs: number;
  /**
   * From the guest's pause until the switchover's last frame (COMMIT) was handed to the
   * connection: the part of the downtime on this host, and what QEMU reports as its downtime
   * (postcopy_start: from vm_stop until the package is sent), so the two compare like for like.
   */
  switchoverSentMs?: number;
  bytesSent: number;
  bytesReceived: number;
  pagesSent: number;
  zeroPages: number;
  skippedNeverTouchedPages: number;
  precopyPasses: number;
  /**
   * Pass 0 was cut short (postcopy and auto modes): the guest rewrote what it sent faster than it
   * went, so from page `atPage` on its pages (`leftOutPages`) crossed once, by postcopy, not twice.
   */
  precopyCut?: { atPage: number; leftOutPages: number };
  converged: boolean;
  verified: boolean | null;
  postcopy?: PostcopyReport;
  /**
   * Set when the migration completed (the destination held every page) but part of the closing
   * exchange was lost: what, and why (docs/failures.md). `verified` is then null if DIGEST was.
   */
  closingLost?: string;
  [k: string]: unknown;
}

export class MigrationError extends Error {
  constructor(
    readonly code: 'not-converged' | 'refused' | 'cancelled' | 'transport' | 'protocol' | 'not-movable' | 'guest' | 'after-commit',
    message: string,
    readonly report?: Partial<MigrationReport>,
  ) {
    super(message);
    this.name = 'MigrationError';
  }
}

export function latencySummary(samplesUs: number[]): { p50: number; p99: number; max: number } {
  if (samplesUs.length === 0) return { p50: 0, p99: 0, max: 0 };
  const s = [...samplesUs].sort((a, b) => a - b);
  const at = (p: number) => s[Math.min(s.length - 1, Math.max(0, Math.ceil(p * s.length) - 1))]!;
  return { p50: round1(at(0.5)), p99: round1(at(0.99)), max: round1(s[s.length - 1]!) };
}

const round1 = (x: number) => Math.round(x * 10) / 10;
