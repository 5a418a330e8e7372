// Messages that take several frames on the bulk channel: a blob (the module, the guest state) in
// contiguous chunks, and DISCARD ranges in batches. Shared by every migration source (a live guest,
// a snapshot).
import type { PageBitmap } from '../../memory/page-bitmap.js';
import type { FramedChannel } from '../transport/index.js';
import { MAX_CHUNK_BYTES } from '../wire/index.js';

/** Ranges per DISCARD frame (12 bytes each, well under the frame limit). */
const DISCARD_BATCH = 65536;

/**
 * Sends `bytes` as MODULE or STATE chunks (an empty STATE still takes one frame). Every chunk is
 * queued before this returns, so a frame the caller sends next (COMMIT after STATE) follows them
 * without waiting for a turn of the event loop per chunk.
 */
export function sendBlob(channel: FramedChannel, type: 'MODULE' | 'STATE' | 'SOCKETS', bytes: Uint8Array): Promise<void> {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const sends: Promise<void>[] = [];
  let off = 0;
  do {
    const data = buf.subarray(off, off + MAX_CHUNK_BYTES);
    if (type === 'MODULE') sends.push(channel.sendMessage({ type, offset: off, data }));
    else sends.push(channel.sendMessage({ type, totalBytes: buf.length, offset: off, data }));
    off += MAX_CHUNK_BYTES;
  } while (off < buf.length);
  return Promise.all(sends).then(() => undefined);
}

/** Tells the destination to drop `pages` below `pageCount` back to holes (pending). */
export function sendDiscard(channel: FramedChannel, pages: PageBitmap, pageCount: number): Promise<void> {
  const runs = pages
    .runs()
    .filter(([s]) => s < pageCount)
    .map(([s, e]): [number, number] => [s, Math.min(e, pageCount)]);
  return sendDiscardRuns(channel, runs);
}

/**
 * Tells the destination to drop the page runs [first, end) back to holes. Every frame is queued
 * before this returns, so what the caller sends next cannot overtake them; the promise resolves
 * when the socket has taken them all.
 */
export function sendDiscardRuns(channel: FramedChannel, runs: ReadonlyArray<readonly [number, number]>): Promise<void> {
  const sends: Promise<void>[] = [];
  for (let i = 0; i < runs.length; i += DISCARD_BATCH) {
    sends.push(channel.sendDiscardRuns(runs.slice(i, i + DISCARD_BATCH)));
  }
  return Promise.all(sends).then(() => undefined);
}
