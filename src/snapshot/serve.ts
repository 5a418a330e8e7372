// A snapshot as a migration source: feeds a `ferry run --incoming` destination with the same sender
// as a live source in postcopy mode (migration/send/: link, page sender, postcopy with its urgent
// thread, recovery after a cut, the closing figures), the snapshot's files standing in for a paused
// guest's memory (SnapshotPageProvider). What differs is only the order before the commit:
//   SETUP → SETUP_ACK → [MODULE] → pass 0 (never-held pages as `untouched` runs, the unwound
//   stack's pages as data; every other page is left for postcopy) → PASS_END → PING barrier →
//   DISCARD (every other page the chain holds: the destination makes them pending holes) → STATE →
//   COMMIT → RUNNING → postcopy → FAULT_STATS, DIGEST (checked against the snapshot's own) → DONE.
// Every chunk checksum is checked before connecting, so a damaged snapshot never reaches a destination.
import { encodeGuestState } from '../state/guest-state.js';
import type { Security } from '../migration/transport/index.js';
import { ALL_FEATURES } from '../migration/wire/index.js';
import { sendBlob, sendDiscard } from '../migration/session/bulk-messages.js';
import { DEFAULT_RECOVER_TIMEOUT_S } from '../migration/session/defaults.js';
import { PhaseLog } from '../migration/session/phases.js';
import { MigrationError, type MigrationPhase, type PostcopyReport } from '../migration/session/report.js';
import { PageDigest } from '../migration/verify/digest.js';
import { SourceLink } from '../migration/send/link.js';
import { PageSender } from '../migration/send/page-sender.js';
import { AfterCommit } from '../migration/send/after-commit.js';
import { PageBitmap } from '../memory/page-bitmap.js';
import { loadSnapshot, verifyChunks, type SnapshotChain } from './chain.js';
import { SnapshotPageProvider } from './page-provider.js';

export interface ServeSnapshotOptions {
  host: string;
  port: number;
  security: Security;
  /** After the commit, how long postcopy keeps trying to reconnect a lost destination (s). */
  recoverTimeoutS?: number;
  onPhase?: (phase: string) => void;
}

export interface ServeSnapshotReport {
  memoryBytes: number;
  pages: number;
  /** Pages sent with the state, before the commit (the runtime's: the unwound stack). */
  pagesBeforeCommit: number;
  /** Pages this side sent on the urgent channel (answers to faults) and pushed on the bulk one. */
  pagesRequested: number;
  pagesPushed: number;
  bytesSent: number;
  /** Connections lost after the commit and recovered. */
  outages: number;
  /** The destination's postcopy figures: its guest's faults and their latency (FAULT_STATS). */
  postcopy: PostcopyReport;
  /** Digest the destination computed equals the snapshot's. */
  verified: boolean;
  totalMs: number;
}

export async function serveSnapshot(source: string | SnapshotChain, opts: ServeSnapshotOptions): Promise<ServeSnapshotReport> {
  const t0 = performance.now();
  const chain = typeof source === 'string' ? loadSnapshot(source) : source;
  const pageCount = chain.location.length;
  opts.onPhase?.('verifying snapshot');
  const digest = new PageDigest(chain.memory.maxBytes);
  verifyChunks(chain, (page, count, data) => digest.set(page, data, count));
  const expectedDigest = digest.digestHex(pageCount);

  const phases = new PhaseLog('source', (p: MigrationPhase) => opts.onPhase?.(p));
  const pages = new SnapshotPageProvider(chain);
  const link = new SourceLink({ host: opts.host, port: opts.port, security: opts.security }, {
    features: ALL_FEATURES, // DIGEST among them: the destination's memory is always checked
    pages: pages.readerSpec,
    maxPages: pages.maxPages,
    note: (what) => phases.note(`${phases.current} ${what}`),
    cancelled: () => false,
  });
  const after = new AfterCommit({ link, phases, recoverTimeoutS: opts.recoverTimeoutS ?? DEFAULT_RECOVER_TIMEOUT_S, report: () => undefined });
  try {
    const bulk = await link.open();
    phases.enter('handshake');
    await link.handshake({ moduleHash: chain.state.module.hash, moduleSize: chain.moduleSource.length, memory: { ...chain.memory }, preopens: chain.state.wasi.preopens, mode: 'postcopy' }, chain.moduleSource);

    // Pass 0: what the destination needs before the commit — the layout and the runtime's pages.
    phases.enter('precopy');
    const sender = new PageSender(bulk, pages);
    const { present, zero } = pages.residency();
    await sender.sendLayout(present, zero, pageCount, { deferData: true });
    const pending = present.clone().subtract(zero);
    let beforeCommit = 0;
    for (const [first, end] of pages.runtimeRuns(chain.state.exec)) {
      for (const [s, e] of pending.clone().intersect(new PageBitmap(pageCount).addRange(first, end)).runs()) {
        await sender.sendData(s, e);
        beforeCommit += e - s;
      }
      pending.deleteRange(first, end);
    }
    await sender.flush();
    await bulk.sendMessage({ type: 'PASS_END', pass: 0, dirtyPages: sender.counters.pagesSent });

    phases.enter('switchover');
    await link.urgentReady();
    await link.drainBarrier();
    await sendDiscard(bulk, pending, pageCount);
    await sendBlob(bulk, 'STATE', encodeGuestState(chain.state));
    await bulk.sendMessage({ type: 'COMMIT' });
    const { bufferBytes } = await after.awaitRunning(performance.now(), true);
    after.startPostcopy(pages, pending, pageCount, bufferBytes);
    const { verified } = await after.finish({ pageCount, verifyAgainst: Promise.resolve(expectedDigest) });
    const sent = after.postcopy!.sentByStream;
    const report: ServeSnapshotReport = {
      memoryBytes: chain.memory.bytes,
      pages: chain.presentPages,
      pagesBeforeCommit: beforeCommit,
      pagesRequested: sent.urgent,
      pagesPushed: sent.bulk,
      bytesSent: link.bytesSent(),
      outages: after.outages,
      postcopy: after.postcopy!.report(),
      verified: verified === true,
      totalMs: Math.round(performance.now() - t0),
    };
    await link.close();
    if (!report.verified) throw new MigrationError('protocol', 'the destination placed every page but its memory digest differs from the snapshot\'s');
    phases.enter('completed');
    return report;
  } catch (err) {
    phases.enter('failed');
    link.destroy();
    throw err;
  } finally {
    pages.close();
  }
}
