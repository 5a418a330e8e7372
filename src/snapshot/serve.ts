// A snapshot as a migration source: feeds a `ferry run --incoming` destination exactly as a live
// source in postcopy mode would, with the snapshot files in place of a paused guest's memory.
//   SETUP → SETUP_ACK → [MODULE] → pass 0 (never-held pages as `untouched` runs, the unwound stack's
//   pages as data) → PASS_END → DISCARD (every other page the chain holds: the destination makes
//   them pending holes) → STATE → COMMIT → RUNNING → postcopy: PAGE_REQUESTs answered on the urgent
//   channel, every other pending page pushed on bulk in address order (restarting after the last
//   request) → DIGEST (checked against the snapshot's own) → DONE.
// Every chunk checksum is checked before connecting, so a damaged snapshot never reaches a destination.
import { runtimePageRuns } from '../state/exec-state.js';
import { encodeGuestState } from '../state/guest-state.js';
import { connect, newSessionId, type FramedChannel, type Security } from '../migration/transport/index.js';
import { RECOMMENDED_RUN_PAGES } from '../migration/wire/index.js';
import { sendBlob, sendDiscard } from '../migration/session/bulk-messages.js';
import { PageDigest } from '../migration/verify/digest.js';
import { MigrationError } from '../migration/session/report.js';
import { PageBitmap } from '../memory/page-bitmap.js';
import { PAGE_SIZE } from './format.js';
import { chainReader, loadSnapshot, verifyChunks, type SnapshotChain } from './chain.js';
import type { LayerReader } from './layer-reader.js';

const BULK_IN_FLIGHT = 4;

export interface ServeSnapshotOptions {
  host: string;
  port: number;
  security: Security;
  onPhase?: (phase: string) => void;
}

export interface ServeSnapshotReport {
  memoryBytes: number;
  pages: number;
  /** Pages sent with the state, before the commit (the runtime's: the unwound stack). */
  pagesBeforeCommit: number;
  pagesRequested: number;
  pagesPushed: number;
  bytesSent: number;
  /** Digest the destination computed equals the snapshot's. */
  verified: boolean;
  totalMs: number;
}

export async function serveSnapshot(source: string | SnapshotChain, opts: ServeSnapshotOptions): Promise<ServeSnapshotReport> {
  const t0 = performance.now();
  const chain = typeof source === 'string' ? loadSnapshot(source) : source;
  const { bytes, maxBytes } = chain.memory;
  const pageCount = bytes / PAGE_SIZE;
  const digest = new PageDigest(maxBytes);
  opts.onPhase?.('verifying snapshot');
  verifyChunks(chain, (page, count, data) => digest.set(page, data, count));
  const expectedDigest = digest.digestHex(pageCount);
  const files = new PageFiles(chainReader(chain));
  const sessionId = newSessionId();
  const common = { host: opts.host, port: opts.port, security: opts.security, sessionId };
  let bulk: FramedChannel | null = null;
  let urgent: FramedChannel | null = null;
  try {
    opts.onPhase?.('handshake');
    bulk = await connect({ ...common, channel: 'bulk' });
    urgent = await connect({ ...common, channel: 'urgent' });
    urgent.setNoDelay(true);
    bulk.setNoDelay(true);
    await bulk.sendMessage({
      type: 'SETUP',
      moduleHash: chain.state.module.hash,
      moduleSize: chain.moduleSource.length,
      memory: { bytes, maxBytes },
      preopens: chain.state.wasi.preopens,
      mode: 'postcopy',
    });
    const ack = await bulk.expect('SETUP_ACK', 30_000);
    if (ack.needModule) await sendBlob(bulk, 'MODULE', chain.moduleSource);

    // Pass 0: what the destination needs before the commit.
    opts.onPhase?.('switchover');
    const pending = new PageBitmap(pageCount);
    for (let p = 0; p < pageCount; p++) if (chain.location[p]! >= 0) pending.add(p);
    let pass0 = 0;
    let beforeCommit = 0;
    for (const [s, e] of new PageBitmap(pageCount).addRange(0, pageCount).subtract(pending).runs()) {
      await bulk.sendPages(s * PAGE_SIZE, e - s, 'untouched');
      pass0 += e - s;
    }
    for (const [first, end] of runtimePageRuns(chain.state.exec, pageCount)) {
      for (const [s, e] of pending.clone().intersect(new PageBitmap(pageCount).addRange(first, end)).runs()) {
        await bulk.sendPages(s * PAGE_SIZE, e - s, 'data', files.read(s, e - s));
        pass0 += e - s;
        beforeCommit += e - s;
      }
      pending.deleteRange(first, end);
    }
    await bulk.sendMessage({ type: 'PASS_END', pass: 0, dirtyPages: pass0 });
    await sendDiscard(bulk, pending, pageCount);
    await sendBlob(bulk, 'STATE', encodeGuestState(chain.state));
    await bulk.sendMessage({ type: 'COMMIT' });
    await bulk.expect('RUNNING', 60_000);

    opts.onPhase?.('postcopy');
    const pc = new FilePostcopy(files, pending, pageCount, bulk, urgent);
    await pc.run();
    opts.onPhase?.('verifying');
    const d = await closingMessages(bulk);
    const report: ServeSnapshotReport = {
      memoryBytes: bytes,
      pages: chain.presentPages,
      pagesBeforeCommit: beforeCommit,
      pagesRequested: pc.pagesRequested,
      pagesPushed: pc.pagesPushed,
      bytesSent: bulk.bytesSent + urgent.bytesSent,
      verified: d !== null && d.pageCount === pageCount && d.hex === expectedDigest,
      totalMs: Math.round(performance.now() - t0),
    };
    await bulk.close();
    await urgent.close();
    if (!report.verified) throw new MigrationError('protocol', 'the destination placed every page but its memory digest differs from the snapshot\'s');
    return report;
  } catch (err) {
    bulk?.destroy();
    urgent?.destroy();
    throw err;
  } finally {
    files.close();
  }
}

/** Page bytes from the newest layer holding each page, in a buffer of their own (frames keep it). */
class PageFiles {
  constructor(private readonly reader: LayerReader) {}
  read(first: number, count: number): Buffer {
    const out = Buffer.allocUnsafe(count * PAGE_SIZE);
    this.reader.readPages(first, count, out);
    return out;
  }
  close(): void {
    this.reader.close();
  }
}

/** Postcopy from files: each pending page is sent once, by the urgent or by the bulk stream. */
class FilePostcopy {
  private readonly sent: PageBitmap;
  private remaining: number;
  private cursor = 0;
  private failure: Error | null = null;
  pagesRequested = 0;
  pagesPushed = 0;

  constructor(
    private readonly files: PageFiles,
    private readonly pending: PageBitmap,
    private readonly pageCount: number,
    private readonly bulk: FramedChannel,
    private readonly urgent: FramedChannel,
  ) {
    this.sent = new PageBitmap(pageCount);
    this.remaining = pending.count();
  }

  async run(): Promise<void> {
    void this.serveRequests();
    const inFlight: Promise<void>[] = [];
    while (this.remaining > 0) {
      if (this.failure) throw this.failure;
      const p = this.nextPending();
      if (p < 0) break;
      const q = this.runEnd(p, this.pageCount);
      this.pagesPushed += this.send(this.bulk, p, q, inFlight);
      this.cursor = q;
      if (inFlight.length >= BULK_IN_FLIGHT) await inFlight.shift();
      else await new Promise<void>((r) => setImmediate(r)); // let urgent requests in between runs
    }
    await Promise.all(inFlight);
    if (this.failure) throw this.failure;
  }

  private async serveRequests(): Promise<void> {
    try {
      for (;;) {
        const msg = await this.urgent.recv();
        if (!msg) return;
        if (msg.type !== 'PAGE_REQUEST') throw new MigrationError('protocol', `unexpected ${msg.type} on the urgent channel`);
        const first = msg.offset / PAGE_SIZE;
        const end = Math.min(first + msg.count, this.pageCount);
        for (let p = first; p < end; ) {
          if (!this.pending.has(p) || this.sent.has(p)) { p++; continue; }
          const q = this.runEnd(p, end);
          this.pagesRequested += this.send(this.urgent, p, q);
          p = q;
        }
        this.cursor = end; // the bulk stream continues right after the fault
      }
    } catch (err) {
      if (this.remaining > 0) this.failure ??= err as Error;
    }
  }

  private runEnd(p: number, limit: number): number {
    let q = p + 1;
    while (q < limit && q - p < RECOMMENDED_RUN_PAGES && this.pending.has(q) && !this.sent.has(q)) q++;
    return q;
  }

  private nextPending(): number {
    for (let pass = 0; pass < 2; pass++) {
      const from = pass === 0 ? this.cursor : 0;
      const to = pass === 0 ? this.pageCount : this.cursor;
      for (let p = from; p < to; p++) if (this.pending.has(p) && !this.sent.has(p)) return p;
    }
    return -1;
  }

  private send(channel: FramedChannel, p: number, q: number, inFlight?: Promise<void>[]): number {
    const data = this.files.read(p, q - p);
    this.sent.addRange(p, q);
    this.remaining -= q - p;
    const sending = channel.sendPages(p * PAGE_SIZE, q - p, 'data', data);
    sending.catch((err: Error) => (this.failure ??= err));
    inFlight?.push(sending);
    return q - p;
  }
}

/**
 * The destination's closing messages after the last page: its fault figures (FAULT_STATS, not used
 * here), the DIGEST of every page as placed, and DONE. Returns the digest (null if none came).
 */
async function closingMessages(bulk: FramedChannel): Promise<{ pageCount: number; hex: string } | null> {
  let digest: { pageCount: number; hex: string } | null = null;
  for (;;) {
    const msg = await bulk.recv();
    if (!msg) throw new MigrationError('protocol', 'the destination closed the connection before DONE');
    if (msg.type === 'DONE') {
      await bulk.sendMessage({ type: 'DONE' }); // acknowledged: the destination may now close
      return digest;
    }
    if (msg.type === 'DIGEST') digest = { pageCount: msg.pageCount, hex: msg.hex };
    else if (msg.type === 'ERROR') throw new MigrationError('protocol', `the destination failed: ${msg.message}`);
    else if (msg.type !== 'FAULT_STATS') throw new MigrationError('protocol', `unexpected ${msg.type} from the destination after the last page`);
  }
}

