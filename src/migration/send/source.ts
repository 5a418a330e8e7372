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
import { runtimePageRuns, unwoundEnd, withoutRuns } from '../../state/exec-state.js';
import { connect, newSessionId, type FramedChannel, type Security } from '../transport/index.js';
import { isChannelFailure } from '../session/failures.js';
import { ALL_FEATURES, Feature } from '../wire/index.js';
import { sendBlob, sendDiscard, sendDiscardRuns } from '../session/bulk-messages.js';
import { digestFrozenMemory } from '../verify/digest.js';
import { MIN_POSTCOPY_BUFFER, clampPostcopyBuffer } from '../session/bulk-buffers.js';
import { PageSender } from './page-sender.js';
import { PostcopySource, type AnswerLink } from './postcopy-source.js';
import { connectDataplane, nativeFaultsEnabled } from '../../dataplane/connect.js';
import { dataplaneSecret } from '../../dataplane/keys.js';
import { close as closeFd } from '../../sys/fd.js';
import { collectGarbageNow } from '../session/heap.js';
import { DowntimePriority } from '../../sys/sched.js';
import { UrgentChannel } from './urgent/channel.js';
import { PhaseLog, SwitchoverTrace } from '../session/phases.js';
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
/** Attempts at the urgent channel before the migration fails, and the wait after the first. */
const URGENT_OPEN_ATTEMPTS = 3;
const URGENT_RETRY_MS = 100;

export class MigrationSource {
  private readonly phases = new PhaseLog('source');
  private readonly t0 = this.phases.t0;
  /** Real-time scheduling of this thread through the downtime. */
  private readonly downtimePriority = new DowntimePriority();
  private bulk: FramedChannel | null = null;
  private urgent: UrgentChannel | null = null;
  /** The urgent channel's opening, from the start of the migration until it is in `urgent`. */
  private urgentOpening: Promise<UrgentChannel> | null = null;
  private sender: PageSender | null = null;
  private postcopy: PostcopySource | null = null;
  private pass = 0;
  private dirtyPages = 0;
  private rate = 0;
  private dirtyRate = 0;
  private expectedDowntimeMs: number | null = null;
  private cancelled = false;
  private committed = false;
  private errorText: string | null = null;
  private effectiveMode: 'precopy' | 'postcopy' = 'precopy';
  private sessionId: Buffer | null = null;
  private target: { host: string; port: number; security: Security };
  private outages = 0;
  private pausedSince: number | null = null;
  private pausedMs = 0;
  private priorBytesSent = 0;
  private priorBytesReceived = 0;
  private abandoned = false;
  private wake: (() => void) | null = null;
  /** The native data plane connection until the commit hands it to the answer thread (-1: none). */
  private dataplaneFd = -1;

  constructor(
    private readonly guest: Guest,
    private readonly opts: SourceOptions,
  ) {
    this.target = { host: opts.host, port: opts.port, security: opts.security };
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
      error: this.errorText,
      committed: this.committed,
      outages: this.outages,
      pausedMs: Math.round(this.pausedMs + (this.pausedSince === null ? 0 : performance.now() - this.pausedSince)),
    };
  }

  /** Aborts before switchover; the guest keeps running here. Refused after the commit point. */
  cancel(): boolean {
    if (this.committed) return false;
    this.cancelled = true;
    this.bulk?.destroy(new MigrationError('cancelled', 'migration cancelled'));
    this.dropUrgent();
    return true;
  }

  /** Opens the urgent channel; a failed attempt is tried again after a short wait, a few times. */
  private async openUrgent(opts: Parameters<typeof UrgentChannel.open>[0]): Promise<UrgentChannel> {
    for (let attempt = 1; ; attempt++) {
      try {
        const urgent = await UrgentChannel.open(opts);
        this.phases.note(`${this.phases.current} (urgent channel connected)`);
        return urgent;
      } catch (err) {
        if (attempt >= URGENT_OPEN_ATTEMPTS || this.cancelled) throw err;
        this.phases.note(`${this.phases.current} (urgent channel failed: ${(err as Error).message}; trying again)`);
        await new Promise((r) => setTimeout(r, URGENT_RETRY_MS * attempt));
      }
    }
  }

  /** Ends the urgent channel, or the one still opening as soon as it opens. */
  private dropUrgent(): void {
    this.postcopy?.stopNative();
    if (this.dataplaneFd >= 0) closeFd(this.dataplaneFd);
    this.dataplaneFd = -1;
    this.urgent?.destroy();
    this.urgentOpening?.then((u) => u.destroy(), () => undefined);
  }

  async run(): Promise<MigrationReport> {
    const tracker = new DirtyTracker(new GuestMemory(this.guest.memory, this.guest.maxMemoryBytes / WASM_PAGE_SIZE));
    let pausedByUs = false;
    try {
      return await this.migrate(tracker, () => (pausedByUs = true));
    } catch (err) {
      this.downtimePriority.end();
      this.phases.enter(this.cancelled ? 'cancelled' : 'failed');
      this.errorText = (err as Error).message;
      tracker.stop();
      this.bulk?.destroy();
      this.dropUrgent();
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
    const sessionId = (this.sessionId = newSessionId());
    // DIGEST is offered only for --verify: the destination then hashes every page it places.
    const features = this.offeredFeatures();
    const common = { host: opts.host, port: opts.port, security: opts.security, sessionId, features };
    this.phases.note('connecting');
    // The urgent channel starts a thread of its own, tens of ms: the stream starts on the bulk
    // channel without it, and it is waited for before the switchover. Until then a failed
    // attempt is tried again; if the last one fails, the bulk channel is ended with its error, so
    // the migration stops at once.
    const urgentOpening = (this.urgentOpening = this.openUrgent({ ...common, memory: guest.memory, maxPages: mem.maxPageCount }));
    let urgentFailure: Error | null = null;
    urgentOpening.catch((err: Error) => {
      urgentFailure = err;
      this.bulk?.destroy(err);
    });
    this.bulk = await connect({ ...common, channel: 'bulk', maxBandwidth: opts.maxBandwidth });
    this.phases.note('connecting (bulk connected)');
    if (urgentFailure) throw urgentFailure;
    const bulk = this.bulk;
    // The native fault path, when both sides run it: its connection opens now, its threads start at the commit.
    if (this.isNative(bulk)) this.dataplaneFd = await connectDataplane(opts.host, opts.port);
    // Small control frames (STATE, COMMIT, PING) must not wait for a delayed ACK (Nagle).
    bulk.setNoDelay(true);
    this.phases.enter('handshake');
    // The guest runs through precopy and may grow its memory at any time: every size this side
    // sends pages against must have been announced first (SETUP, then GROW).
    const announcedBytes = mem.sizeBytes;
    await bulk.sendMessage({
      type: 'SETUP',
      moduleHash: guest.moduleHash,
      moduleSize: guest.moduleSource.length,
      memory: { bytes: announcedBytes, maxBytes: mem.maxBytes },
      preopens,
      mode: opts.mode === 'precopy' ? 'precopy' : 'postcopy',
    });
    const ack = await bulk.expect('SETUP_ACK', 30_000);
    if (ack.needModule) await sendBlob(bulk, 'MODULE', guest.moduleSource);

    // Pass 0: every present page; zero pages as markers, never-touched ranges as ranges.
    this.phases.enter('precopy');
    tracker.start();
    const sender = (this.sender = new PageSender(bulk, () => mem.view()));
    let sentBytes = announcedBytes;
    let passStart = performance.now();
    let bytesAtPassStart = this.bytesSent();
    // Pass 0 covers the memory as scanned, which may have grown since SETUP (a guest that
    // allocates as it starts: cmark reading its input): announce that size before its pages.
    const residency = scanResidency(mem);
    sentBytes = await this.sendGrowth(mem, sentBytes, residency.present.size * HOST_PAGE_SIZE);
    await this.sendPassZero(sender, residency.present, residency.zero, residency.present.size);
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
    this.urgent = await urgentOpening;
    // Wait until the destination has placed everything sent so far: what it still has to read
    // when the guest pauses would otherwise queue in front of the state and the commit, inside
    // the downtime.
    await sender.flush();
    // While the destination drains, collect this side's garbage: a mark-compact that V8 would
    // otherwise owe the stream's buffers must not fall inside the downtime (see session/heap.ts).
    const drained = this.drainBarrier();
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
        await this.drainBarrier();
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
    const runtimeRuns = runtimePageRuns(state.exec, pageCount, unwoundEnd(state.exec, mem.view()));
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
    let lost: Error | null = null;
    let downtimeMs: number | null = null;
    let postcopyBuffer = MIN_POSTCOPY_BUFFER; // the destination's choice, once RUNNING says it
    try {
      const running = await bulk.expect('RUNNING', 60_000);
      downtimeMs = performance.now() - tPause;
      postcopyBuffer = clampPostcopyBuffer(running.bulkBufferBytes);
      trace.mark('running');
      trace.print();
    } catch (err) {
      if (!postcopy || !isChannelFailure(err)) throw err;
      lost = err as Error; // the destination may well run the guest: recover, never resume here
    }
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
      const link = this.takeAnswerLink(this.bulk);
      this.postcopy = new PostcopySource(mem, pending, pageCount, this.bulk, this.urgent!, postcopyBuffer, link);
      if (link) this.phases.note('postcopy (native answer thread started)');
    } else if (this.dataplaneFd >= 0) {
      closeFd(this.dataplaneFd);
      this.dataplaneFd = -1;
    }
    let verified: boolean | null = null;
    // Postcopy survives broken connections: this side keeps the guest's memory and state, and
    // reconnects (with backoff, or at once on `ferry migrate --resume`) until the destination has
    // every page or the recovery timeout passes.
    for (;;) {
      try {
        if (lost) {
          await this.reconnect(lost);
          lost = null;
          downtimeMs ??= performance.now() - tPause;
        }
        if (this.postcopy) {
          this.phases.enter('postcopy');
          await this.postcopy.run();
          tracker.stop(); // while the destination makes its closing reports
          this.phases.enter('verifying');
          const st = await this.bulk!.expect('FAULT_STATS', 600_000);
          this.postcopy.setRemoteReport({
            pagesRequested: st.pagesRequested,
            pagesPushed: st.pagesPushed,
            faults: st.faults,
            faultLatencyUs: st.latencyUs,
            guestBlockedMs: Math.round(st.guestBlockedUs / 100) / 10,
            durationMs: st.durationMs,
          });
        }
        this.phases.enter('verifying');
        if (opts.verify) {
          const digestMsg = await this.bulk!.expect('DIGEST', 600_000);
          verified = digestMsg.pageCount === pageCount && (await localDigest!) === digestMsg.hex;
        }
        await this.bulk!.expect('DONE', 60_000);
        // Acknowledge: until it sees this, the destination keeps listening for a reconnection
        // (its closing messages may not have reached this side).
        await this.bulk!.sendMessage({ type: 'DONE' });
        break;
      } catch (err) {
        if (!this.postcopy || !isChannelFailure(err)) throw err;
        lost = err as Error;
      }
    }
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
    this.postcopy?.stopNative();
    await this.bulk!.close();
    await this.urgent!.close();
    this.phases.enter('completed'); // last: a failure before this is reported as one
    this.report();
    return report;
  }

  /** Feature bits this side offers: DIGEST for --verify; the native fault path where enabled (FERRY_NATIVE_FAULTS=1). */
  private offeredFeatures(): number {
    let f = this.opts.verify ? ALL_FEATURES : ALL_FEATURES & ~Feature.DIGEST;
    if (nativeFaultsEnabled() && this.opts.mode !== 'precopy') f |= Feature.NATIVE_FAULTS;
    return f;
  }

  private isNative(bulk: FramedChannel): boolean {
    return ((bulk.session?.features ?? 0) & Feature.NATIVE_FAULTS) !== 0;
  }

  /** The data plane connection with its keys, for the answer thread (null when the fault path is not native). */
  private takeAnswerLink(bulk: FramedChannel): AnswerLink | null {
    if (this.dataplaneFd < 0) return null;
    const fd = this.dataplaneFd;
    this.dataplaneFd = -1;
    return { fd, secret: dataplaneSecret(bulk.tlsSocket, this.sessionId!) };
  }

  private async sendPassZero(sender: PageSender, present: PageBitmap, zero: PageBitmap, pageCount: number): Promise<void> {
    // Walk the memory as alternating runs: untouched (not present), zero-page mapped, data.
    let p = 0;
    const presentRuns = present.runs();
    for (const [s, e] of presentRuns) {
      if (s > p) await sender.sendEmpty(p, s, 'untouched');
      let q = s;
      while (q < e) {
        const isZero = zero.has(q);
        let r = q + 1;
        while (r < e && zero.has(r) === isZero) r++;
        if (isZero) await sender.sendEmpty(q, r, 'zero');
        else await sender.sendData(q, r);
        q = r;
      }
      p = e;
      this.checkCancelled();
    }
    if (p < pageCount) await sender.sendEmpty(p, pageCount, 'untouched');
  }

  private async drainBarrier(): Promise<void> {
    const nonce = (Math.random() * 0xffffffff) >>> 0;
    await this.bulk!.sendMessage({ type: 'PING', nonce });
    const pong = await this.bulk!.expect('PONG', 120_000);
    if (pong.nonce !== nonce) throw new MigrationError('protocol', `PONG ${pong.nonce} does not answer PING ${nonce}`);
  }

  /** Announces growth up to `bytes` (default: the memory's size now) if beyond `sentBytes`; returns the size announced. */
  private async sendGrowth(mem: GuestMemory, sentBytes: number, bytes = mem.sizeBytes): Promise<number> {
    if (bytes > sentBytes) {
      await this.sender!.flush();
      await this.bulk!.sendMessage({ type: 'GROW', newBytes: bytes });
      return bytes;
    }
    return sentBytes;
  }

  // Both count every connection of the migration, reconnections included.
  private bytesSent(): number {
    return this.priorBytesSent + (this.bulk?.bytesSent ?? 0) + (this.urgent?.bytesSent ?? 0);
  }

  private bytesReceived(): number {
    return this.priorBytesReceived + (this.bulk?.bytesReceived ?? 0) + (this.urgent?.bytesReceived ?? 0);
  }

  /**
   * Reconnects both channels with the same session until the recovery timeout, then takes the
   * destination's RECEIVED_SET: the pages it holds are done, every other pending page is sent
   * (again, if the lost connection swallowed it).
   */
  private async reconnect(cause: Error): Promise<void> {
    this.phases.enter('postcopy-paused');
    this.outages++;
    this.errorText = `connection lost: ${cause.message}`;
    const since = performance.now();
    this.pausedSince = since;
    this.priorBytesSent = this.bytesSent();
    this.priorBytesReceived = this.bytesReceived();
    this.bulk?.destroy();
    this.urgent?.destroy();
    this.bulk = null;
    this.urgent = null;
    this.report();
    const deadline = since + this.opts.recoverTimeoutS * 1000;
    let delay = 100;
    for (let attempt = 1; ; attempt++) {
      if (this.abandoned) throw new MigrationError('after-commit', 'abandoned by the operator');
      if (performance.now() > deadline) {
        throw new MigrationError('after-commit', `could not reconnect to the destination within ${this.opts.recoverTimeoutS} s (last error: ${this.errorText})`);
      }
      try {
        const features = this.offeredFeatures();
        const common = { host: this.target.host, port: this.target.port, security: this.target.security, sessionId: this.sessionId!, features };
        const bulk = await connect({ ...common, channel: 'bulk', maxBandwidth: this.opts.maxBandwidth });
        bulk.setNoDelay(true);
        let urgent: UrgentChannel;
        try {
          urgent = await UrgentChannel.open({ ...common, memory: this.guest.memory, maxPages: this.postcopy!.maxPages });
        } catch (err) {
          bulk.destroy();
          throw err;
        }
        this.bulk = bulk;
        this.urgent = urgent;
        if (this.isNative(bulk)) this.dataplaneFd = await connectDataplane(this.target.host, this.target.port);
        const held = await bulk.expect('RECEIVED_SET', 30_000);
        if (held.set.encoding !== 'bitmap' || held.set.startPage !== 0) throw new MigrationError('protocol', 'RECEIVED_SET must be a bitmap from page 0');
        this.postcopy!.resume(bulk, urgent, held.set.bits, held.set.pageCount, this.takeAnswerLink(bulk));
        this.pausedMs += performance.now() - since;
        this.pausedSince = null;
        this.errorText = null;
        this.phases.enter('postcopy');
        this.report();
        return;
      } catch (err) {
        if (err instanceof MigrationError) throw err;
        this.errorText = `reconnect attempt ${attempt}: ${(err as Error).message}`;
        if (this.dataplaneFd >= 0) closeFd(this.dataplaneFd);
        this.dataplaneFd = -1;
        this.bulk?.destroy();
        this.urgent?.destroy();
        this.bulk = null;
        this.urgent = null;
        await this.sleepUnlessWoken(delay);
        delay = Math.min(delay * 2, 5000);
      }
    }
  }

  /** Retry now (and, given one, at another address) instead of waiting for the next backoff. */
  resumeNow(to?: { host: string; port: number; security?: Security }): boolean {
    if (this.phases.current !== 'postcopy-paused') return false;
    if (to) this.target = { host: to.host, port: to.port, security: to.security ?? this.target.security };
    this.wake?.();
    return true;
  }

  /** Gives up a migration stuck after its commit point: the guest here is then stopped and freed. */
  abandon(): boolean {
    if (!this.committed) return false;
    this.abandoned = true;
    this.wake?.();
    this.bulk?.destroy();
    this.urgent?.destroy();
    return true;
  }

  private sleepUnlessWoken(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.wake = done;
    });
  }

  private checkCancelled(): void {
    if (this.cancelled) throw new MigrationError('cancelled', 'migration cancelled');
  }

  private report(): void {
    this.opts.onProgress?.(this.progress());
  }
}

export type { GuestState };
