// How big the bulk connection's kernel buffers are once postcopy starts. A page the bulk stream
// has already taken, when the guest faults on it, waits behind everything queued before it in
// both ends' buffers (and in the link's queue), so they are kept small. But the window they allow
// is also the most the stream can have in flight: below the path's bandwidth-delay product the
// link idles between acknowledgements, and a scheduling hiccup of a millisecond on a busy host
// empties a small buffer. So: a few times the bandwidth-delay product the precopy stream itself
// measured (its rate at the destination times the round trip the destination's TCP estimated
// while it ran, queueing included), within fixed bounds. On loopback that is at or near the floor
// (tens to hundreds of µs round trips); over the bench's 1 Gbit/s link, 0.5–1.7 MiB.

/** The floor: 32 host pages of postcopy frames, a few frames in flight. */
export const MIN_POSTCOPY_BUFFER = 128 * 1024;
/** The ceiling: beyond this a faulting page could wait behind tens of ms of stream on any link. */
export const MAX_POSTCOPY_BUFFER = 4 * 1024 * 1024;

/**
 * Slack over the bandwidth-delay product: the round-trip estimate is coarse (whole milliseconds
 * when TCP timestamps feed it) and the ends of the stream are threads on busy cores.
 */
const BDP_SLACK = 4;

/** Buffer bytes for a stream of `rateBytesPerSec` over a path with `rttUs` round trips. */
export function postcopyBufferBytes(rateBytesPerSec: number, rttUs: number): number {
  const bdp = Number.isFinite(rateBytesPerSec) && Number.isFinite(rttUs) && rateBytesPerSec > 0 && rttUs > 0 ? (rateBytesPerSec * rttUs) / 1e6 : 0;
  return clampPostcopyBuffer(BDP_SLACK * bdp);
}

/** Within the bounds, in whole pages (also what a source makes of the size its peer sent). */
export function clampPostcopyBuffer(bytes: number): number {
  if (!Number.isFinite(bytes)) return MIN_POSTCOPY_BUFFER;
  return Math.min(MAX_POSTCOPY_BUFFER, Math.max(MIN_POSTCOPY_BUFFER, Math.ceil(bytes / 4096) * 4096));
}
