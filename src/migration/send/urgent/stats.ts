// Counters the source's urgent thread (answer-thread.ts) publishes for the main thread (channel.ts),
// as Float64 slots of a SharedArrayBuffer.
export const UrgentStat = {
  /** Set to the page count by the main thread at the commit: requests are served from then on. */
  ACTIVE_PAGES: 0,
  /** Page just after the last one requested: the bulk stream continues from there. */
  CURSOR: 1,
  PAGES_SENT: 2,
  REQUESTS: 3,
  BYTES_SENT: 4,
  BYTES_RECEIVED: 5,
} as const;
export const URGENT_STAT_SLOTS = 8;
