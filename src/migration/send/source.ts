// The migration source: streams a running guest's memory to a destination (precopy passes driven
// by the dirty tracker), pauses it at a safepoint for the switchover, sends its state and the
// commit, and — in postcopy — serves the pages the destination still lacks until it has them all.
// This is the orchestrator: preflight, handshake (link.ts), precopy (precopy.ts), switchover
// (switchover.ts), then postcopy, recovery and the closing figures (after-commit.ts), and the report.
//
// Commit point: before COMMIT is sent, any failure resumes the guest here and the destination
// discards what it received. Once COMMIT is sent this side never resumes the guest: exactly one
// side ever runs it.
import { Guest } from '../../guest/guest.js';
import type { GuestExit } from '../../guest/guest-types.js';
import { GuestMemory, WASM_PAGE_SIZE } from '../../memory/guest-memory.js';
import { DirtyTracker } from '../../memory/dirty-tracker.js';
import { scanResidency } from '../../memory/residency.js';
import type { GuestState } from '../../state/guest-state.js';
import type { Security } from '../transport/index.js';
import { ALL_FEATURES, Feature } from '../wire/index.js';
import { digestFrozenMemory } from '../verify/digest.js';
import { DowntimePriority } from '../../sys/sched.js';
import { PhaseLog } from '../session/phases.js';
import { MigrationError, type MigrationProgress, type MigrationReport } from '../session/report.js';
import type { SourceOptions } from './source-options.js';
import { PageSender } from './page-sender.js';
import { SourceLink } from './link.js';
import { nativeFaultsEnabled } from '../dataplane/connect.js';
import { AfterCommit } from './after-commit.js';
import { nativePrecopyEnabled, PrecopySender } from '../dataplane/precopy-plane.js';
import { LiveMemoryProvider } from './live-memory.js';
import { AnnouncedSize } from './memory-size.js';
import { Precopy } from './precopy.js';
import { switchOver } from './switchover.js';
import type { OutgoingSockets } from './sockets.js';

export type { SourceOptions } from './source-options.js';
export { SOURCE_DEFAULTS } from '../session/defaults.js';

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
  private precopy: Precopy | null = null;
  /** The native precopy stream's thread (Feature.NATIVE_PRECOPY), from the handshake to the switchover. */
  private nativePrecopy: PrecopySender | null = null;
  private cancelled = false;
  private committed = false;
  private errorText: string | null = null;
  private effectiveMode: 'precopy' | 'postcopy' = 'precopy';
  private readonly pages: LiveMemoryProvider;
  /** The guest's frozen sockets and released address, from the pause to the end (Feature.SOCKETS). */
  private sockets: OutgoingSockets | null = null;

  constructor(
    private readonly guest: Guest,
    private readonly opts: SourceOptions,
  ) {
    this.pages = new LiveMemoryProvider(new GuestMemory(guest.memory, guest.maxMemoryBytes / WASM_PAGE_SIZE));
    this.link = new SourceLink({ host: opts.host, port: opts.port, security: opts.security }, {
      // DIGEST is offered only for --verify: the destination then hashes every page it places.
      // The native fault path (on unless FERRY_NATIVE_FAULTS=0) is offered where postcopy may happen,
      // and its connection wherever native precopy rides on it (unless turned off; --max-bandwidth
      // caps the native stream with a token bucket of its own).
      features: (opts.verify ? ALL_FEATURES : ALL_FEATURES & ~Feature.DIGEST) | nativeFeatures(opts),
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
      pass: this.precopy?.pass ?? 0,
      bytesSent: this.link.bytesSent(),
      bytesReceived: this.link.bytesReceived(),
      pagesSent: (this.sender?.counters.pagesSent ?? 0) + (this.postcopy?.pagesSent ?? 0),
      // By kind, for GET /metrics: contents sent (postcopy's included), zero markers, never-touched ranges.
      dataPages: (this.sender?.counters.dataPages ?? 0) + (this.postcopy?.pagesSent ?? 0),
      zeroPages: this.sender?.counters.zeroPages ?? 0,
      untouchedPages: this.sender?.counters.untouchedPages ?? 0,
      dirtyPages: this.precopy?.dirtyPages ?? 0,
      rateBytesPerSec: Math.round(this.precopy?.rate ?? 0),
      dirtyRatePagesPerSec: Math.round(this.precopy?.dirtyRate ?? 0),
      expectedDowntimeMs: this.precopy?.expectedDowntimeMs ?? null,
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
    // A guest that ends before the commit (it finished its work, or trapped) has nothing left to
    // move: fail at once rather than stream the memory of a program that no longer runs. The
    // destination sees the stream end before COMMIT and runs nothing.
    let ended: GuestExit | null = null;
    const onExit = (e: GuestExit) => {
      if (this.committed) return;
      ended = e;
      this.link.destroy(new MigrationError('guest', endedText(e)));
    };
    this.guest.once('exit', onExit);
    try {
      return await this.migrate(tracker, () => (pausedByUs = true));
    } catch (err) {
      if (ended && !this.committed) err = new MigrationError('guest', endedText(ended));
      this.downtimePriority.end();
      this.phases.enter(this.cancelled ? 'cancelled' : 'failed');
      this.errorText = (err as Error).message;
      tracker.stop();
      this.nativePrecopy?.stop();
      this.link.destroy();
      if (!this.committed) {
        // The sockets first: the guest must find its connections out of repair mode, and adopt
        // what the freeze took from its listeners' accept queues.
        const accepted = this.sockets?.rollback();
        this.sockets = null;
        if (pausedByUs && this.guest.status === 'paused') this.guest.resume(accepted);
        if (this.cancelled) throw new MigrationError('cancelled', 'migration cancelled; the guest keeps running here');
        if (err instanceof MigrationError) throw err;
        throw new MigrationError('transport', `${(err as Error).message}; the guest keeps running here`);
      }
      throw new MigrationError(
        'after-commit',
        `migration failed after the commit point: ${(err as Error).message}. The guest may be running on the destination; it is kept paused here with its memory (ferry migrate --abandon frees it)`,
      );
    } finally {
      this.guest.off('exit', onExit);
    }
  }

  private async migrate(tracker: DirtyTracker, notePaused: () => void): Promise<MigrationReport> {
    const { guest, opts } = this;
    const mem = this.pages.mem;

    // Preflight: a descriptor that cannot move fails the migration before it starts.
    await guest.pause();
    notePaused();
    // Sockets are no problem here: whether they can move is the destination's answer to HELLO.
    const problems = guest.movabilityProblems({ socketsMove: true });
    const holdsSockets = Object.keys(guest.hostSockets()).length > 0;
    const preopens = guest.capture().wasi.preopens;
    guest.resume();
    if (problems.length > 0) throw new MigrationError('not-movable', `the guest cannot move: ${problems.join('; ')}`);

    // Handshake on the bulk channel; nothing else moves before the destination agrees.
    this.phases.note('connecting');
    const bulk = await this.link.open();
    const socketsMove = ((bulk.session?.features ?? 0) & Feature.SOCKETS) !== 0;
    if (holdsSockets && !socketsMove) {
      throw new MigrationError('not-movable', 'the guest holds TCP sockets and the destination does not move sockets (it lacks the SOCKETS feature: an older ferry, or FERRY_MOVE_SOCKETS=0 there); nothing was moved, the guest keeps running here');
    }
    this.phases.enter('handshake');
    const setupBytes = mem.sizeBytes;
    await this.link.handshake({
      moduleHash: guest.moduleHash,
      moduleSize: guest.moduleSource.length,
      memory: { bytes: setupBytes, maxBytes: mem.maxBytes },
      preopens,
      mode: opts.mode === 'precopy' ? 'precopy' : 'postcopy',
    }, guest.moduleSource);

    this.phases.enter('precopy');
    const sender = (this.sender = new PageSender(bulk, this.pages));
    const precopyLink = this.link.precopyLink();
    if (precopyLink) {
      const native = (this.nativePrecopy = new PrecopySender({
        sock: precopyLink.fd, secret: precopyLink.secret, memory: () => mem.view(), maxPages: this.pages.maxPages, maxBandwidth: opts.maxBandwidth,
      }));
      this.link.precopyBytes = () => {
        const s = native.read();
        return { sent: s.bytesSent, received: s.bytesReceived };
      };
      this.phases.note('precopy (native precopy thread started)');
    }
    const size = new AnnouncedSize(mem, bulk, sender, setupBytes);
    const precopy = (this.precopy = new Precopy({
      bulk, sender, native: this.nativePrecopy, tracker, pages: this.pages, size, opts, t0: this.t0, note: (what) => this.phases.note(what),
      bytesSent: () => this.link.bytesSent(), checkCancelled: () => this.checkCancelled(), report: () => this.report(),
    }));
    const { dirty, converged } = await precopy.run();

    const postcopy = opts.mode !== 'precopy' && !converged;
    if (this.nativePrecopy && postcopy) {
      // CLOSE each way before the pause: the postcopy threads later start on this connection
      // afresh. (A stop-and-copy sends its last pages on it inside the downtime, then closes it.)
      await this.nativePrecopy.close();
      this.phases.note('precopy (native precopy stream closed)');
    }
    this.effectiveMode = postcopy ? 'postcopy' : 'precopy';
    const sw = await switchOver({
      guest, link: this.link, sender, tracker, pages: this.pages, size, phases: this.phases,
      downtimePriority: this.downtimePriority, maxBandwidth: opts.maxBandwidth, notePaused,
      committed: () => (this.committed = true),
      socketsMove,
      addressMove: { addresses: opts.serviceAddresses ?? [], hook: opts.onRelease },
      onFrozen: (s) => (this.sockets = s),
      native: this.nativePrecopy && !postcopy ? { sender: this.nativePrecopy, pass: precopy.pass + 1 } : null,
    }, postcopy, dirty);
    this.sockets?.committed();
    const { bufferBytes } = await this.after.awaitRunning(sw.tPause, postcopy);
    sw.trace.mark('running');
    sw.trace.print();
    // ---- downtime ends: the guest runs on the destination ----
    this.downtimePriority.end();
    // Unregistering the whole reservation takes 15-20 ms of this thread: not in the downtime, and
    // in postcopy not before the background stream either (the link would idle meanwhile): the
    // paused guest writes nothing, so the registration can stay until that stream is done.
    if (!postcopy) tracker.stop();
    const localDigest = opts.verify ? digestFrozenMemory(mem, sw.pageCount, scanResidency(mem).present) : null;
    localDigest?.catch(() => undefined); // awaited when the destination's DIGEST comes
    if (postcopy) {
      // What the destination lacks: the DISCARDed pages but the runtime's (sent with data).
      const pending = dirty;
      for (const [first, end] of sw.last) pending.addRange(first, end);
      for (const [first, end] of sw.runtimeRuns) pending.deleteRange(first, end);
      this.after.startPostcopy(this.pages, pending, sw.pageCount, bufferBytes, this.pages.mem.view());
    }
    const { verified } = await this.after.finish({ pageCount: sw.pageCount, verifyAgainst: localDigest, pushed: () => tracker.stop() });
    const report: MigrationReport = {
      mode: this.effectiveMode,
      memoryBytes: sw.memoryBytes,
      totalMs: Math.round(performance.now() - this.t0),
      downtimeMs: Math.round((this.after.downtimeMs ?? 0) * 100) / 100,
      switchoverSentMs: Math.round((sw.tSent - sw.tPause) * 100) / 100,
      bytesSent: this.link.bytesSent(),
      bytesReceived: this.link.bytesReceived(),
      pagesSent: sender.counters.pagesSent + (this.postcopy?.pagesSent ?? 0),
      zeroPages: sender.counters.zeroPages,
      skippedNeverTouchedPages: sender.counters.untouchedPages,
      precopyPasses: precopy.pass + 1,
      ...(precopy.cut ? { precopyCut: precopy.cut } : {}),
      converged,
      verified,
    };
    if (this.postcopy) report.postcopy = this.postcopy.report();
    if (this.after.closingLost) report.closingLost = this.after.closingLost;
    await this.link.close();
    this.phases.enter('completed'); // last: a failure before this is reported as one
    this.report();
    return report;
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

/** The native data plane features a source offers. */
function nativeFeatures(opts: SourceOptions): number {
  if (!nativeFaultsEnabled()) return 0;
  const precopy = nativePrecopyEnabled();
  if (opts.mode === 'precopy' && !precopy) return 0;
  return Feature.NATIVE_FAULTS | (precopy ? Feature.NATIVE_PRECOPY : 0);
}

/** Why a migration ended when its guest did, before the commit. */
function endedText(e: GuestExit): string {
  const how = e.reason === 'exit' ? `exited with code ${e.code}` : e.reason === 'trap' ? `trapped (${e.message ?? 'unknown trap'})` : e.reason === 'stopped' ? 'was stopped' : `failed (${e.message ?? 'unknown error'})`;
  return `the guest ${how} before the switchover: there is nothing left to move, and the destination runs nothing`;
}

export type { GuestState };
