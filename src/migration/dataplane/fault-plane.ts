// Destination side of the native fault path: one native thread (native/dataplane/dp_fault.c) reads
// the guest memory's userfaultfd, fills known-zero pages, asks the source for pending ones on its
// own connection and places the answers. This class starts and stops it and reads what it shares:
// counters and fault latencies, with no JavaScript per fault.
import type { FaultStats } from '../../memory/fault-stats.js';
import type { PageStateTable } from '../../memory/page-state.js';
import type { SharedRequests } from '../receive/page-placer.js';
import { startOwning } from './socket-fd.js';
import { dataplaneAddon, DataplaneRole, DataplaneState, DATAPLANE_STAT_SLOTS, FaultThreadStat, type DataplaneHandle, type DataplaneRoleValue } from '../../sys/dataplane.js';
import { raisedPriorityWanted } from '../../sys/sched.js';

export interface FaultPlaneOptions {
  /** The guest memory's userfaultfd, registered for MISSING faults, non-blocking (not taken). */
  uffd: number;
  /** Connected socket to the source's answer thread; taken (closed by stop()). */
  sock: number;
  role?: DataplaneRoleValue;
  /** Address of guest page 0. */
  base: number;
  /** Pages the source may send (the memory's size at the commit). */
  pageCount: number;
  states: PageStateTable;
  /** Shared with the thread that places the bulk stream (PagePlacer): request times, waiting count. */
  requests: SharedRequests;
  secret: Uint8Array;
  faultAround?: number;
  timeoutMs?: number;
  /** --verify: PageDigest.buffer, whose entries the thread sets for the pages it places. */
  digest?: SharedArrayBuffer;
  /** Latency samples kept (a ring). */
  latencyRing?: number;
  raisePriority?: boolean;
  /** The uffd has UFFD_FEATURE_MOVE: place through a pool of pages made ahead (FaultThreadOptions.movePool). */
  movePool?: boolean;
}

/** The fault worker's counters (memory/fault-stats.ts), plus what the native thread also carries. */
export interface FaultPlaneStats extends FaultStats {
  bytesSent: number;
  bytesReceived: number;
  /** Pages that arrived in answers (placed or not). */
  pagesReceived: number;
  /** Of pagesPlaced, those a request asked for; the rest came unasked, from a bulk stream on the data plane. */
  placedAsked: number;
  /** Of pagesPlaced, those moved in from the pool made ahead (UFFDIO_MOVE); the rest were copied. */
  pagesMoved: number;
  /** Pages of the pool made ahead so far (0 without movePool). */
  poolReady: number;
  state: 'handshake' | 'running' | 'stopped' | 'failed';
}

const STATE_NAMES = ['handshake', 'running', 'stopped', 'failed'] as const;

export class FaultPlane {
  /** Resolves when the thread ends: with its failure, or null when it was stopped. */
  readonly ended: Promise<string | null>;
  private readonly stats = new Float64Array(new SharedArrayBuffer(DATAPLANE_STAT_SLOTS * 8));
  /** Set while the thread starts (inside startOwning: an allocation that throws must close the socket). */
  private latencies!: Float64Array;
  private handle: DataplaneHandle | null;
  private result: string | null = null;

  constructor(o: FaultPlaneOptions) {
    let ended!: (e: string | null) => void;
    this.ended = new Promise((resolve) => (ended = resolve));
    this.handle = startOwning(o.sock, () => {
      const shared = o.states.shared();
      this.latencies = new Float64Array(new SharedArrayBuffer((o.latencyRing ?? 1 << 17) * 8));
      const options = {
        uffd: o.uffd, sock: o.sock, role: o.role ?? DataplaneRole.ACCEPTOR, timeoutMs: o.timeoutMs ?? 10_000,
        raisePriority: (o.raisePriority ?? true) && raisedPriorityWanted(),
        base: o.base, pageCount: o.pageCount, faultAround: o.faultAround ?? 1,
        states: new Uint8Array(shared.states, 0, shared.pageCount), stateCounts: new Int32Array(shared.counts, 0, 3),
        times: new BigInt64Array(o.requests.times), waiting: new Int32Array(o.requests.waiting),
        stats: this.stats, latencies: this.latencies, secret: o.secret,
        ...(o.digest ? { digest: new Uint32Array(o.digest) } : {}),
        movePool: o.movePool ?? false,
      };
      const addon = dataplaneAddon();
      return () => addon.startFault(options, (error) => ended(error));
    });
  }

  /** The thread's counters now. */
  read(): FaultPlaneStats {
    const s = this.stats;
    return {
      faults: s[FaultThreadStat.FAULTS]!, zeroFills: s[FaultThreadStat.ZERO_FILLS]!, requests: s[FaultThreadStat.REQUESTS]!,
      deduped: s[FaultThreadStat.DEDUPED]!, wakes: s[FaultThreadStat.WAKES]!, pagesPlaced: s[FaultThreadStat.PAGES_PLACED]!,
      eexist: s[FaultThreadStat.EEXIST]!, latencySamples: s[FaultThreadStat.LATENCY_COUNT]!,
      bytesSent: s[FaultThreadStat.BYTES_SENT]!, bytesReceived: s[FaultThreadStat.BYTES_RECEIVED]!,
      pagesReceived: s[FaultThreadStat.PAGES_RECEIVED]!, placedAsked: s[FaultThreadStat.PLACED_ASKED]!,
      pagesMoved: s[FaultThreadStat.MOVED]!, poolReady: s[FaultThreadStat.POOL_READY]!, state: STATE_NAMES[s[FaultThreadStat.STATE]!] ?? 'failed',
    };
  }

  get running(): boolean {
    return this.stats[FaultThreadStat.STATE] === DataplaneState.RUNNING;
  }

  /**
   * Latencies (µs) of the faults whose pages this thread placed, samples [from, count) of its ring
   * (the oldest are overwritten beyond the ring's length). Returns them and the next `from`.
   */
  latenciesSince(from: number): { samples: number[]; next: number } {
    const count = this.stats[FaultThreadStat.LATENCY_COUNT]!;
    const ring = this.latencies.length;
    const start = Math.max(from, count - ring);
    const samples: number[] = [];
    for (let i = start; i < count; i++) samples.push(this.latencies[i % ring]!);
    return { samples, next: count };
  }

  /** Stops and joins the thread (closing its socket); returns why it ended if it failed first. */
  stop(): string | null {
    if (this.handle) {
      this.result = dataplaneAddon().stop(this.handle);
      this.handle = null;
    }
    return this.result;
  }
}
