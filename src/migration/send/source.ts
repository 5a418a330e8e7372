// The migration source: streams a running guest's memory to a destination (precopy passes driven
// by the dirty tracker), pauses it at a safepoint for the switchover, sends its state and the
// commit, and — in postcopy — serves the pages the destination still lacks until it has them all.
//
// Commit point: before COMMIT is sent, any failure resumes the guest here and the destination
// discards what it received. Once COMMIT is sent this side never resumes the guest: exactly one
// side ever runs it.
import { Guest } from '../../guest/guest.js';
import { GuestMemory, HOST_PAGE_SIZE, WASM_PAGE_SIZE } from '../../memory/guest-memory.js';
import { DirtyTracker } from '../../memory/dirty-tracker.js';
import { PageBitmap } from '../../memory/page-bitmap.js';
import { scanResidency } from '../../memory/residency.js';
import { encodeGuestState, type GuestState } from '../../state/guest-state.js';
import { withoutRuns } from '../../state/exec-state.js';
import type { Security } from '../transport/index.js';
import { ALL_FEATURES, Feature } from '../wire/index.js';
import { sendBlob, sendDiscard, sendDiscardRuns } from '../session/bulk-messages.js';
import { digestFrozenMemory } from '../verify/digest.js';
import { PageSender } from './page-sender.js';
import { collectGarbageNow } from '../session/heap.js';
import { DowntimePriority } from '../../sys/sched.js';
import { PhaseLog, SwitchoverTrace } from '../session/phases.js';
import { SourceLink } from './link.js';
import { AfterCommit } from './after-commit.js';
import { LiveMemoryProvider } from './live-memory.js';
import { decideAfterPass } from './convergence.js';
import {
  MigrationError,
  type MigrationMode,
  type MigrationPhase,
  type MigrationProgress,
  type MigrationReport,
} from '../session/report.js';

export interface SourceOptions {
  host: string;
  port: number;
  security: Security;
  mode: MigrationMode;
  /** Bytes/s cap on the bulk channel. */
  maxBandwidth?: number;
  /** Stop-and-copy only when the rest fits this downtime at the measured bandwidth. */
  downtimeTargetMs: number;
  /** Give up on precopy (or, in auto mode, switch to postcopy) after this long. */
  precopyTimeoutS: number;
  verify: boolean;
  /** After the commit, how long postcopy keeps trying to reconnect a lost destination. */
  recoverTimeoutS: number;
  onProgress?: (p: MigrationProgress) => void;
}

export { SOURCE_DEFAULTS } from '../session/defaults.js';

/** Postcopy DISCARD rounds before the pause, at most; the rounds stop once one is this small. */
const DISCARD_ROUNDS = 4;
const SMALL_DISCARD_PAGES = 1024;

export class MigrationSource {
  private readonly phases = new PhaseLog('source');
  private readonly t0 = this.phases.t0;
  /** Real-time scheduling of this thread through the downtime. */
  private readonly downtimePriority = new DowntimePriority();
  /** The connections to the destination, reconnections included. */
  private readonly link: SourceLink;
  /** From the commit on: postcopy, recovery, the closing figures. */
  private readonly after: AfterCommit;
  private sender: PageSender | null = null;
  private pass = 0;
  private dirtyPages = 0;
  private rate = 0;
  private dirtyRate = 0;
  private expectedDowntimeMs: number | null = null;
  private cancelled = false;
  private committed = false;
  private errorText: string | null = null;
  private effectiveMode: 'precopy' | 'postcopy' = 'precopy';
  private readonly pages: LiveMemoryProvider;

  constructor(
    private readonly guest: Guest,
    private readonly opts: SourceOptions,
  ) {
    this.pages = new LiveMemoryProvider(new GuestMemory(guest.memory, guest.maxMemoryBytes / WASM_PAGE_SIZE));
    this.link = new SourceLink({ host: opts.host, port: opts.port, security: opts.security }, {
      // DIGEST is offered only for --verify: the destination then hashes every page it places.
      features: opts.verify ? ALL_FEATURES : ALL_FEATURES & ~Feature.DIGEST,
      maxBandwidth: opts.maxBandwidth,
      pages: this.pages.readerSpec,
      maxPages: this.pages.maxPages,
      note: (what) => this.phases.note(`${this.phases.current} ${what}`),
      cancelled: () => this.cancelled,
    });
    this.after = new AfterCommit({ link: this.link, phases: this.phases, recoverTimeoutS: opts.recoverTimeoutS, report: () => this.report() });
  }

  private get postcopy() {
    return this.after.postcopy;
  }

  get isCommitted(): boolean {
    return this.committed;
  }

  progress(): MigrationProgress {
    return {
      role: 'source',
      state: this.phases.current,
      mode: this.opts.mode,
      pass: this.pass,
      bytesSent: this.bytesSent(),
      bytesReceived: this.bytesReceived(),
      pagesSent: (this.sender?.counters.pagesSent ?? 0) + (this.postcopy?.pagesSent ?? 0),
      // By kind, for GET /metrics: contents sent (postcopy's included), zero markers, never-touched ranges.
      dataPages: (this.sender?.counters.dataPages ?? 0) + (this.postcopy?.pagesSent ?? 0),
      zeroPages: this.sender?.counters.zeroPages ?? 0,
      untouchedPages: this.sender?.counters.untouchedPages ?? 0,
      dirtyPages: this.dirtyPages,
      rateBytesPerSec: Math.round(this.rate),
      dirtyRatePagesPerSec: Math.round(this.dirtyRate),
      expectedDowntimeMs: this.expectedDowntimeMs,
      elapsedMs: Math.round(performance.now() - this.t0),
      postcopy: this.postcopy?.report() ?? null,
      error: this.errorText ?? this.after.errorText,
      committed: this.committed,
      outages: this.after.outages,
      pausedMs: this.after.pausedMs,
    };
  }

  /** Aborts before switchover; the guest keeps running here. Refused after the commit point. */
  cancel(): boolean {
    if (this.committed) return false;
    this.cancelled = true;
    this.link.destroy(new MigrationError('cancelled', 'migration cancelled'));
    return true;
  }

  async run(): Promise<MigrationReport> {
    const tracker = new DirtyTracker(this.pages.mem);
    let pausedByUs = false;
    try {
      return await this.migrate(tracker, () => (pausedByUs = true));
    } catch (err) {
      this.downtimePriority.end();
      this.phases.enter(this.cancelled ? 'cancelled' : 'failed');
      this.errorText = (err as Error).message;
      tracker.stop();
      this.link.destroy();
      if (!this.committed) {
        if (pausedByUs && this.guest.status === 'paused') this.guest.resume();
        if (this.cancelled) throw new MigrationError('cancelled', 'migration cancelled; the guest keeps running here');
        if (err instanceof MigrationError) throw err;
        throw new MigrationError('transport', `${(err as Error).message}; the guest keeps running here`);
      }
      throw new MigrationError(
        'after-commit',
        `migration failed after the commit point: ${(err as Error).message}. The guest may be running on the destination; it is kept paused here with its memory (ferry migrate --abandon frees it)`,
      );
    }
  }

  private async migrate(tracker: DirtyTracker, notePaused: () => void): Promise<MigrationReport> {
    const { guest, opts } = this;
    const mem = tracker.mem;

    // Preflight: a descriptor that cannot move fails the migration before it starts.
    await guest.pause();
    notePaused();
    const problems = guest.movabilityProblems();
    const preopens = guest.capture().wasi.preopens;
    guest.resume();
    if (problems.length > 0) throw new MigrationError('not-movable', `the guest cannot move: ${problems.join('; ')}`);

    // Handshake on the bulk channel; nothing else moves before the destination agrees.
    this.phases.note('connecting');
    const bulk = await this.link.open();
    this.phases.enter('handshake');
    // The guest runs through precopy and may grow its memory at any time: every size this side
    // sends pages against must have been announced first (SETUP, then GROW).
    const announcedBytes = mem.sizeBytes;
    await this.link.handshake({
      moduleHash: guest.moduleHash,
      moduleSize: guest.moduleSource.length,
      memory: { bytes: announcedBytes, maxBytes: mem.maxBytes },
      preopens,
      mode: opts.mode === 'precopy' ? 'precopy' : 'postcopy',
    }, guest.moduleSource);

    // Pass 0: every present page; zero pages as markers, never-touched ranges as ranges.
    this.phases.enter('precopy');
    tracker.start();
    const sender = (this.sender = new PageSender(bulk, this.pages));
    let sentBytes = announcedBytes;
    let passStart = performance.now();
    let bytesAtPassStart = this.bytesSent();
    // Pass 0 covers the memory as scanned, which may have grown since SETUP (a guest that
    // allocates as it starts: cmark reading its input): announce that size before its pages.
    const residency = this.pages.residency();
    sentBytes = await this.sendGrowth(mem, sentBytes, residency.present.size * HOST_PAGE_SIZE);
    await sender.sendLayout(residency.present, residency.zero, residency.present.size, { between: () => this.checkCancelled() });
    await sender.flush();
    await bulk.sendMessage({ type: 'PASS_END', pass: 0, dirtyPages: sender.counters.pagesSent });

    // Passes 1..n: pages written since the previous pass.
    let minDirty = Infinity;
    let stalled = 0;
    let dirty: PageBitmap;
    for (;;) {
      this.checkCancelled();
      const passMs = Math.max(1, performance.now() - passStart);
      this.rate = ((this.bytesSent() - bytesAtPassStart) / passMs) * 1000;
      dirty = tracker.collect();
      this.dirtyPages = dirty.count();
      this.dirtyRate = (this.dirtyPages / passMs) * 1000;
      const rate = Math.max(this.rate, 1);
      this.expectedDowntimeMs = ((this.dirtyPages * HOST_PAGE_SIZE) / rate) * 1000;
      this.report();
      if (this.dirtyPages < minDirty) {
        minDirty = this.dirtyPages;
        stalled = 0;
      } else stalled++;
      const elapsedS = (performance.now() - this.t0) / 1000;
      const decision = decideAfterPass({
        mode: opts.mode, expectedDowntimeMs: this.expectedDowntimeMs, downtimeTargetMs: opts.downtimeTargetMs,
        stalledPasses: stalled, elapsedS, precopyTimeoutS: opts.precopyTimeoutS,
        nextTotalBytes: this.bytesSent() + this.dirtyPages * HOST_PAGE_SIZE, memoryBytes: mem.sizeBytes,
      });
      if (decision === 'stop-and-copy' || decision === 'postcopy') break;
      if (decision === 'give-up') {
        throw new MigrationError(
          'not-converged',
          `precopy did not converge: ${this.dirtyPages} pages dirty after ${this.pass + 1} passes (${elapsedS.toFixed(1)} s); the guest keeps running here`,
          { converged: false, precopyPasses: this.pass + 1, bytesSent: this.bytesSent(), mode: 'precopy' },
        );
      }
      this.pass++;
      passStart = performance.now();
      bytesAtPassStart = this.bytesSent();
      sentBytes = await this.sendGrowth(mem, sentBytes);
      const sent = await sender.sendSet(dirty, mem.pageCount);
      await sender.flush();
      await bulk.sendMessage({ type: 'PASS_END', pass: this.pass, dirtyPages: sent });
    }

    const converged = this.expectedDowntimeMs !== null && this.expectedDowntimeMs <= opts.downtimeTargetMs;
    const postcopy = opts.mode !== 'precopy' && !converged;
    this.effectiveMode = postcopy ? 'postcopy' : 'precopy';
    this.phases.enter('switchover');
    await this.link.urgentReady();
    // Wait until the destination has placed everything sent so far: what it still has to read
    // when the guest pauses would otherwise queue in front of the state and the commit, inside
    // the downtime.
    await sender.flush();
    // While the destination drains, collect this side's garbage: a mark-compact that V8 would
    // otherwise owe the stream's buffers must not fall inside the downtime (see session/heap.ts).
    const drained = this.link.drainBarrier();
    collectGarbageNow();
    await drained;
    this.phases.note('switchover (stream drained)');
    // Postcopy: tell the destination now, while the guest still runs, which pages it holds are
    // stale, so it drops them ahead of the pause. The guest keeps writing meanwhile, so repeat
    // with what it wrote during each round until a round is small: the last set is dropped
    // inside the downtime, and each round's set is what the guest writes in one round trip plus
    // the destination's time to drop the previous set.
    if (postcopy) {
      let round = dirty;
      for (let i = 1; ; i++) {
        sentBytes = await this.sendGrowth(mem, sentBytes);
        await sendDiscard(bulk, round, sentBytes / HOST_PAGE_SIZE);
        await this.link.drainBarrier();
        if (i === DISCARD_ROUNDS || round.count() <= SMALL_DISCARD_PAGES) break;
        round = tracker.collect();
        dirty.union(round);
      }
    }

    this.phases.note('switchover (pause)');
    // ---- downtime starts ----
    // The bandwidth cap is for the background stream: the few frames of the switchover go out
    // at once (paced, a 1 MB state at 8 MB/s alone would add 125 ms of downtime).
    bulk.setMaxBandwidth(undefined);
    // Through the downtime this thread runs ahead of every normal thread on the host (the other
    // side's included, when it is the same host): each of its steps is the guest's time stopped.
    this.downtimePriority.raise();
    const tPause = performance.now();
    const trace = new SwitchoverTrace('source');
    guest.pauseNow();
    notePaused();
    trace.mark('paused');
    const state = guest.capture();
    trace.mark('captured');
    const late = guest.movabilityProblems();
    if (late.length > 0) throw new MigrationError('not-movable', `the guest cannot move: ${late.join('; ')}`);
    sentBytes = await this.sendGrowth(mem, sentBytes);
    const memoryBytes = mem.sizeBytes;
    const pageCount = mem.pageCount;
    const runtimeRuns = this.pages.runtimeRuns(state.exec);
    // The state goes first: the destination hands it to its waiting guest thread, which sets up
    // descriptors and globals while this side looks for the last written pages (a synchronous
    // walk of the page tables, 0.45-0.55 ms per GiB here) and sends the rest. Nothing here waits
    // for a turn of the event loop between frames: each would cost one inside the downtime.
    const queued: Promise<void>[] = [];
    const queue = (p: Promise<void>) => {
      p.catch(() => undefined); // observed by the Promise.all below, not an unhandled rejection meanwhile
      queued.push(p);
    };
    const stateBytes = encodeGuestState(state);
    trace.mark(`state encoded (${stateBytes.length} bytes)`);
    // The guest is paused: nothing needs protecting any more, so the last look only reads.
    let last: Array<[number, number]>;
    if (postcopy) {
      // The pages the runtime reads to resume (the unwound stack, the safepoint flags, which the
      // owner also writes) go with the state, with their final bytes: no hole is in the way of
      // either, they are off the critical path, and the DISCARD below leaves them out. Every
      // other page written since the last DISCARD becomes a hole too (pages in both are
      // harmless: discarding a pending page again changes nothing). One write, so that the state
      // leaves before the walk: a TLS socket holds a second write until a turn of the event loop.
      bulk.batch(() => {
        queue(sendBlob(bulk, 'STATE', stateBytes));
        for (const [first, end] of runtimeRuns) queue(sender.sendDataAtOnce(first, end));
      });
      trace.mark('state and runtime pages sent');
      last = tracker.peekRuns();
      const collected = last;
      trace.mark(() => `collected (${collected.length} runs, ${collected.reduce((n, [a, b]) => n + b - a, 0)} pages)`);
      queue(sendDiscardRuns(bulk, withoutRuns(last, runtimeRuns)));
    } else {
      queue(sendBlob(bulk, 'STATE', stateBytes));
      // Let the state's frames reach the socket before the walk: waiting for their confirmation
      // instead would take a turn of the event loop.
      await bulk.handedOver();
      last = tracker.peekRuns();
      trace.mark('collected');
      for (const [first, end] of last) dirty.addRange(first, end);
      await sender.sendSet(dirty, pageCount);
    }
    queue(sender.flush());
    queue(bulk.sendMessage({ type: 'COMMIT' }));
    trace.mark('commit queued');
    await Promise.all(queued);
    this.committed = true;
    trace.mark('committed');
    bulk.setMaxBandwidth(opts.maxBandwidth);
    const { bufferBytes } = await this.after.awaitRunning(tPause, postcopy);
    trace.mark('running');
    trace.print();
    // ---- downtime ends: the guest runs on the destination ----
    this.downtimePriority.end();
    // Unregistering the whole reservation takes 15-20 ms of this thread: not in the downtime, and
    // in postcopy not before the background stream either (the link would idle meanwhile): the
    // paused guest writes nothing, so the registration can stay until that stream is done.
    if (!postcopy) tracker.stop();
    const localDigest = opts.verify ? digestFrozenMemory(mem, pageCount, scanResidency(mem).present) : null;
    localDigest?.catch(() => undefined); // awaited when the destination's DIGEST comes

    if (postcopy) {
      // What the destination lacks: the DISCARDed pages but the runtime's (sent with data).
      const pending = dirty;
      for (const [first, end] of last) pending.addRange(first, end);
      for (const [first, end] of runtimeRuns) pending.deleteRange(first, end);
      this.after.startPostcopy(this.pages, pending, pageCount, bufferBytes);
    }
    const { verified } = await this.after.finish({ pageCount, verifyAgainst: localDigest, pushed: () => tracker.stop() });
    const downtimeMs = this.after.downtimeMs;
    const report: MigrationReport = {
      mode: this.effectiveMode,
      memoryBytes,
      totalMs: Math.round(performance.now() - this.t0),
      downtimeMs: Math.round((downtimeMs ?? 0) * 100) / 100,
      bytesSent: this.bytesSent(),
      bytesReceived: this.bytesReceived(),
      pagesSent: sender.counters.pagesSent + (this.postcopy?.pagesSent ?? 0),
      zeroPages: sender.counters.zeroPages,
      skippedNeverTouchedPages: sender.counters.untouchedPages,
      precopyPasses: this.pass + 1,
      converged,
      verified,
    };
    if (this.postcopy) report.postcopy = this.postcopy.report();
    await this.link.close();
    this.phases.enter('completed'); // last: a failure before this is reported as one
    this.report();
    return report;
  }

  /** Announces growth up to `bytes` (default: the memory's size now) if beyond `sentBytes`; returns the size announced. */
  private async sendGrowth(mem: GuestMemory, sentBytes: number, bytes = mem.sizeBytes): Promise<number> {
    if (bytes > sentBytes) {
      await this.sender!.flush();
      await this.link.bulk!.sendMessage({ type: 'GROW', newBytes: bytes });
      return bytes;
    }
    return sentBytes;
  }

  // Both count every connection of the migration, reconnections included.
  private bytesSent(): number {
    return this.link.bytesSent();
  }

  private bytesReceived(): number {
    return this.link.bytesReceived();
  }

  /** Retry now (and, given one, at another address) instead of waiting for the next backoff. */
  resumeNow(to?: { host: string; port: number; security?: Security }): boolean {
    return this.after.resumeNow(to);
  }

  /** Gives up a migration stuck after its commit point: the guest here is then stopped and freed. */
  abandon(): boolean {
    if (!this.committed) return false;
    this.after.abandon();
    return true;
  }

  private checkCancelled(): void {
    if (this.cancelled) throw new MigrationError('cancelled', 'migration cancelled');
  }

  private report(): void {
    this.opts.onProgress?.(this.progress());
  }
}

export type { GuestState };
