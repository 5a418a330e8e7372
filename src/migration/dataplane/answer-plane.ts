// Source side of the native fault path: one native thread (native/dataplane/dp_answer.c) reads the
// destination's page requests and answers each straight from the guest's memory, ahead of the bulk
// stream. This class starts and stops it and reads its counters.
import { startOwning } from './socket-fd.js';
import { dataplaneAddon, AnswerThreadStat, DataplaneRole, DATAPLANE_STAT_SLOTS, type DataplaneHandle, type DataplaneRoleValue } from '../../sys/dataplane.js';
import { raisedPriorityWanted } from '../../sys/sched.js';

export interface AnswerPlaneOptions {
  /** Connected socket to the destination's fault thread; taken (closed by stop()). */
  sock: number;
  role?: DataplaneRoleValue;
  /** The guest's memory from page 0 (after the commit: paused, no holes). */
  memory: Uint8Array;
  pageCount: number;
  /** Pages the destination lacks (PageBitmap words over a SharedArrayBuffer). */
  pending: Uint32Array;
  /** Claims shared with the bulk stream (PageClaims words). */
  claims: Uint32Array;
  secret: Uint8Array;
  /** The thread streams the postcopy bulk too (every pending page nobody claimed, after the answers). */
  bulk?: boolean;
  /** --max-bandwidth (bytes/s): a token bucket paces the bulk frames (never the answers). */
  maxBandwidth?: number | undefined;
  timeoutMs?: number;
  raisePriority?: boolean;
}

export interface AnswerPlaneStats {
  requests: number;
  pagesSent: number;
  /** Page just after the last one requested: the bulk stream follows the faults from there. */
  cursor: number;
  /** Pages answered that the bulk stream had claimed already (they cross twice). */
  twice: number;
  bytesSent: number;
  bytesReceived: number;
  /** Of pagesSent, those the bulk stream sent (bulk mode). */
  pushed: number;
  /** Bulk mode: every pending page has been sent. */
  bulkDone: boolean;
}

export class AnswerPlane {
  readonly ended: Promise<string | null>;
  private readonly stats = new Float64Array(new SharedArrayBuffer(DATAPLANE_STAT_SLOTS * 8));
  private handle: DataplaneHandle | null;
  private result: string | null = null;

  constructor(o: AnswerPlaneOptions) {
    let ended!: (e: string | null) => void;
    this.ended = new Promise((resolve) => (ended = resolve));
    this.handle = startOwning(o.sock, () => {
      const options = {
        sock: o.sock, role: o.role ?? DataplaneRole.CONNECTOR, timeoutMs: o.timeoutMs ?? 10_000,
        raisePriority: (o.raisePriority ?? true) && raisedPriorityWanted(),
        memory: o.memory, pageCount: o.pageCount, pending: o.pending, claims: o.claims, stats: this.stats, secret: o.secret,
        bulk: o.bulk ?? false,
        ...(o.maxBandwidth ? { maxBandwidth: Math.round(o.maxBandwidth) } : {}),
      };
      const addon = dataplaneAddon();
      return () => addon.startAnswer(options, (error) => ended(error));
    });
  }

  read(): AnswerPlaneStats {
    const s = this.stats;
    return {
      requests: s[AnswerThreadStat.REQUESTS]!, pagesSent: s[AnswerThreadStat.PAGES_SENT]!, cursor: s[AnswerThreadStat.CURSOR]!,
      twice: s[AnswerThreadStat.TWICE]!, bytesSent: s[AnswerThreadStat.BYTES_SENT]!, bytesReceived: s[AnswerThreadStat.BYTES_RECEIVED]!,
      pushed: s[AnswerThreadStat.PUSHED]!, bulkDone: s[AnswerThreadStat.BULK_DONE] === 1,
    };
  }

  stop(): string | null {
    if (this.handle) {
      this.result = dataplaneAddon().stop(this.handle);
      this.handle = null;
    }
    return this.result;
  }
}
