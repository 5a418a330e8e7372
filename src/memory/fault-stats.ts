// Counters and latency samples shared between the fault worker (writer) and its owner (reader).
export const STAT = {
  FAULTS: 0, ZERO_FILLS: 1, REQUESTS: 2, DEDUPED: 3, WAKES: 4, PAGES_PLACED: 5, EEXIST: 6, LATENCY_COUNT: 7,
} as const;
export const STAT_SLOTS = 8;
/** Latency samples kept (a ring: the newest LATENCY_RING). */
export const LATENCY_RING = 1 << 17;

export interface FaultStats {
  /** Fault events read from the uffd. */
  faults: number;
  /** Faults on known-zero pages, filled with UFFDIO_ZEROPAGE without asking the source. */
  zeroFills: number;
  /** Requests sent to the page source. */
  requests: number;
  /** Faults on pages already requested (another thread waits on the same page). */
  deduped: number;
  /** Faults on pages already received (raced with a placement): woken. */
  wakes: number;
  /** Pages placed by the fault worker. */
  pagesPlaced: number;
  /** Placements that found the page already present (a racing place()). */
  eexist: number;
  /** Latency samples recorded so far (event read → page placed). */
  latencySamples: number;
}

export function readStats(s: Float64Array): FaultStats {
  return {
    faults: s[STAT.FAULTS]!, zeroFills: s[STAT.ZERO_FILLS]!, requests: s[STAT.REQUESTS]!, deduped: s[STAT.DEDUPED]!,
    wakes: s[STAT.WAKES]!, pagesPlaced: s[STAT.PAGES_PLACED]!, eexist: s[STAT.EEXIST]!, latencySamples: s[STAT.LATENCY_COUNT]!,
  };
}
