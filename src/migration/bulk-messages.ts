// Messages that take several frames on the bulk channel: a blob (the module, the guest state) in
// contiguous chunks, and DISCARD ranges in batches. Shared by every migration source (a live guest,
// a snapshot).
import type { PageBitmap } from '../memory/page-bitmap.js';
import { HOST_PAGE_SIZE } from '../memory/guest-memory.js';
import type { FramedChannel } from './transport/index.js';
import { MAX_CHUNK_BYTES } from './wire/index.js';

/** Ranges per DISCARD frame (12 bytes each, well under the frame limit). */
const DISCARD_BATCH = 65536;

/** Sends `bytes` as MODULE or STATE chunks (an empty STATE still takes one frame). */
export async function sendBlob(channel: FramedChannel, type: 'MODULE' | 'STATE', bytes: Uint8Array): Promise<void> {
  const buf = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let off = 0;
  do {
    const data = buf.subarray(off, off + MAX_CHUNK_BYTES);
    if (type === 'MODULE') await channel.sendMessage({ type, offset: off, data });
    else await channel.sendMessage({ type, totalBytes: buf.length, offset: off, data });
    off += MAX_CHUNK_BYTES;
  } while (off < buf.length);
}

/** Tells the destination to drop `pages` below `pageCount` back to holes (pending). */
export async function sendDiscard(channel: FramedChannel, pages: PageBitmap, pageCount: number): Promise<void> {
  const ranges = pages
    .runs()
    .filter(([s]) => s < pageCount)
    .map(([s, e]) => ({ offset: s * HOST_PAGE_SIZE, count: Math.min(e, pageCount) - s }));
  for (let i = 0; i < ranges.length; i += DISCARD_BATCH) {
    await channel.sendMessage({ type: 'DISCARD', ranges: ranges.slice(i, i + DISCARD_BATCH) });
  }
}
