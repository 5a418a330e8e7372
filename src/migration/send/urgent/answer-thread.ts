// The source's urgent channel, on a thread of its own. It connects and authenticates like the bulk
// channel, then — from the commit on — answers each PAGE_REQUEST at once from the source's pages
// (its PageProvider's: a frozen guest's memory, or a snapshot's files). Running apart from the main
// thread means an urgent page never waits behind the main thread's work (encrypting and writing the bulk stream), and the destination's faulting guest
// waits for one network round trip, not for the next turn of a busy event loop.
// Source pages have no holes: reading them here never waits for a fault.
import { parentPort, workerData } from 'node:worker_threads';
import { HOST_PAGE_SIZE } from '../../../memory/guest-memory.js';
import { PageBitmap } from '../../../memory/page-bitmap.js';
import { connect, reviveSecurity, type Security } from '../../transport/index.js';
import { RECOMMENDED_RUN_PAGES } from '../../wire/index.js';
import { PageClaims } from './page-claims.js';
import { UrgentStat } from './stats.js';
import { preferLatency } from '../../../sys/sched.js';
import { openPageReader, type PageReaderSpec } from '../page-provider.js';

export interface UrgentServerData {
  host: string;
  port: number;
  security: Security;
  sessionId: Uint8Array;
  /** Where the pages come from (PageProvider.readerSpec). */
  pages: PageReaderSpec;
  /** Pages the destination lacks after the commit (filled in before ACTIVE_PAGES is set). */
  pending: SharedArrayBuffer;
  claims: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  maxPages: number;
}

export type UrgentServerMessage = { type: 'connected' } | { type: 'error'; message: string } | { type: 'closed' };

async function main(): Promise<void> {
  const d = workerData as UrgentServerData;
  const security = reviveSecurity(d.security);
  preferLatency(); // a destination's guest waits on every request this thread answers
  const pages = await openPageReader(d.pages);
  const channel = await connect({ host: d.host, port: d.port, security, channel: 'urgent', sessionId: Buffer.from(d.sessionId) });
  channel.setNoDelay(true);
  const stats = new Float64Array(d.stats);
  const pending = new PageBitmap(d.maxPages, d.pending);
  const claims = new PageClaims(d.maxPages, d.claims);
  const publish = () => {
    stats[UrgentStat.BYTES_SENT] = channel.bytesSent;
    stats[UrgentStat.BYTES_RECEIVED] = channel.bytesReceived;
  };
  // Requests can arrive before the main thread activates this side (right after a reconnection,
  // the destination asks again at once): they wait for the activation.
  let activated!: () => void;
  const active = new Promise<void>((resolve) => (activated = resolve));
  let closing = false;
  parentPort!.on('message', (m: { type: string }) => {
    if (m.type === 'activate') activated();
    if (m.type === 'close') {
      closing = true;
      publish();
      channel.close().finally(() => {
        publish();
        parentPort!.postMessage({ type: 'closed' } satisfies UrgentServerMessage);
        process.exit(0);
      });
    }
  });
  parentPort!.postMessage({ type: 'connected' } satisfies UrgentServerMessage);
  for (;;) {
    const msg = await channel.recv();
    publish();
    // The destination closed the channel. Unless this side is closing it, that is a lost
    // connection the main thread must hear of (it reconnects in postcopy), not a quiet end.
    if (!msg) {
      if (!closing) throw new Error('the destination closed the connection');
      return;
    }
    if (msg.type !== 'PAGE_REQUEST') throw new Error(`unexpected ${msg.type} on the urgent channel`);
    if (stats[UrgentStat.ACTIVE_PAGES] === 0) await active;
    const pageCount = stats[UrgentStat.ACTIVE_PAGES]!;
    stats[UrgentStat.REQUESTS] = stats[UrgentStat.REQUESTS]! + 1;
    const first = msg.offset / HOST_PAGE_SIZE;
    const end = Math.min(first + msg.count, pageCount);
    stats[UrgentStat.CURSOR] = end;
    for (let p = first; p < end; ) {
      if (!pending.has(p) || !claims.claim(p)) {
        p++;
        continue;
      }
      let q = p + 1;
      while (q < end && q - p < RECOMMENDED_RUN_PAGES && pending.has(q) && claims.claim(q)) q++;
      const copy = Buffer.allocUnsafe((q - p) * HOST_PAGE_SIZE);
      pages.readPages(p, q - p, copy);
      stats[UrgentStat.PAGES_SENT] = stats[UrgentStat.PAGES_SENT]! + (q - p);
      void channel.sendPages(p * HOST_PAGE_SIZE, q - p, 'data', copy).then(publish, () => undefined);
      p = q;
    }
  }
}

main().catch((err: unknown) => {
  parentPort!.postMessage({ type: 'error', message: err instanceof Error ? err.message : String(err) } satisfies UrgentServerMessage);
});
