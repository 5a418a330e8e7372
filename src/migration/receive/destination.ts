// The migration destination: listens on one port, takes one migration (bulk and urgent channels of
// one session), places the pages the source streams, and at the source's COMMIT resumes the guest
// from its state — with every page present (precopy) or with holes served by userfaultfd
// (postcopy). Before COMMIT nothing runs: any failure leaves nothing behind. Every frame is checked
// against the memory geometry before a byte of it is placed. The steps live beside it: who gets in
// (admission.ts), the connections (link.ts), the stream up to COMMIT (until-commit.ts), and what
// follows the commit (completion.ts).
import { Guest, type PreparedGuest } from '../../guest/guest.js';
import { ModuleCache } from '../../guest/module-cache.js';
import type { InstrumentProgressListener } from '../../guest/instrument-runner.js';
import { sha256Hex } from '../../state/hash.js';
import { GuestMemory, WASM_PAGE_SIZE } from '../../memory/guest-memory.js';
import { PageStateTable } from '../../memory/page-state.js';
import { rehearseDecoding } from '../../state/guest-state.js';
import type { Preopen, StdioBinding } from '../../wasi/wasi.js';
import { DEFAULT_HANDSHAKE_MS, listen, type FramedChannel, type MigrationListener, type Security } from '../transport/index.js';
import type { ServiceAddress } from '../../net/service-address.js';
import { ChunkAssembler, Feature, PageFrameChecker, WireError, type MessageOf } from '../wire/index.js';
import { PageDigest } from '../verify/digest.js';
import { IncomingMemory, type DataplaneLink } from './incoming-memory.js';
import type { PrecopyReceiver } from '../dataplane/precopy-plane.js';
import { close as closeFd, dup } from '../../sys/fd.js';
import { nativeFaultsEnabled } from '../dataplane/connect.js';
import { ALL_FEATURES } from '../wire/index.js';
import { UrgentRequests } from './urgent/requests.js';
import { MIN_POSTCOPY_BUFFER } from '../session/bulk-buffers.js';
import { PhaseLog } from '../session/phases.js';
import { DowntimePriority } from '../../sys/sched.js';
import { MigrationError, type MigrationProgress, type PostcopyReport } from '../session/report.js';
import { SourceAdmission, type Refusal } from './admission.js';
import { DestinationLink } from './link.js';
import { receiveUntilCommit } from './until-commit.js';
import { SessionCompletion } from './completion.js';

export type { Refusal } from './admission.js';

export interface DestinationOptions {
  host: string;
  port: number;
  security: Security;
  /** This host's preopens: every guest path the source's guest has must be mapped here. */
  preopens: Preopen[];
  /** This host's streams for the guest's stdin/stdout/stderr. */
  stdio: StdioBinding;
  cache?: ModuleCache;
  onProgress?: (p: MigrationProgress) => void;
  /** Hears the steps of instrumenting the module, when this host has not instrumented it before. */
  onInstrumentProgress?: InstrumentProgressListener;
  /** How long a postcopy destination waits for a lost source to reconnect (default 10 min). */
  recoverTimeoutS?: number;
  /** Each connection's limit from arrival to HELLO_ACK, and an authenticated source's to SETUP (default 5 s). */
  handshakeTimeoutMs?: number;
  /** Connections before HELLO_ACK at once; more are closed on arrival (default 64). */
  maxUnauthenticated?: number;
  /** While waiting for a source: give up (receive() rejects) after this many refused peers (default: never). */
  maxRefused?: number;
  /** Called once for every peer refused (the CLI prints one line for each). */
  onRefused?: (r: Refusal) => void;
  /** Service addresses this host takes for a guest whose sockets move (--service-address): checked at SETUP. */
  serviceAddresses?: ServiceAddress[];
  /** Run right before the addresses are taken (--on-acquire); a failure before the commit aborts. */
  onAcquire?: string;
}

export { DEFAULT_RECOVER_TIMEOUT_S } from '../session/defaults.js';
import { DEFAULT_RECOVER_TIMEOUT_S } from '../session/defaults.js';

export interface IncomingResult {
  guest: Guest;
  /** Resolves when every page is placed and the source was told (postcopy), at once otherwise. */
  completion: Promise<DestinationSummary>;
}

export interface DestinationSummary {
  mode: 'precopy' | 'postcopy';
  memoryBytes: number;
  bytesReceived: number;
  pagesReceived: number;
  postcopy?: PostcopyReport;
  /** Completed without the source's acknowledgement of the closing messages: why (docs/failures.md). */
  closingLost?: string;
}

export class MigrationDestination {
  private listener: MigrationListener | null = null;
  private readonly phases = new PhaseLog('destination');
  private readonly t0 = this.phases.t0;
  /** Real-time scheduling of this thread through the downtime. */
  private readonly downtimePriority = new DowntimePriority();
  private readonly link = new DestinationLink();
  private readonly admission: SourceAdmission;
  private readonly counts = { pass: 0, pagesReceived: 0 };
  private incoming: IncomingMemory | null = null;
  /** Native precopy's receiving thread, and the data plane connection taken for it, until the commit. */
  private nativePrecopy: PrecopyReceiver | null = null;
  private earlyDataplane: DataplaneLink | null = null;
  private completion: SessionCompletion | null = null;
  private errorText: string | null = null;
  private readonly cache: ModuleCache;
  private preparing: Promise<PreparedGuest> | null = null;
  private readonly recoverTimeoutMs: number;

  constructor(private readonly opts: DestinationOptions) {
    this.cache = opts.cache ?? new ModuleCache();
    this.recoverTimeoutMs = (opts.recoverTimeoutS ?? DEFAULT_RECOVER_TIMEOUT_S) * 1000;
    this.admission = new SourceAdmission({ serviceAddresses: opts.serviceAddresses ?? [], preopens: opts.preopens, handshakeMs: this.handshakeMs, maxRefused: opts.maxRefused, onRefused: opts.onRefused });
  }

  /** Peers refused so far (what GET /guest/migration shows as `refused`, and a metrics counter). */
  get refused(): number {
    return this.admission.count;
  }

  /** Starts listening; returns the port (useful with port 0). */
  async listen(): Promise<number> {
    // Urgent connections go straight to their own thread, which makes their TLS sessions: the
    // answers to the guest's faults never wait for this thread (see receive/urgent/request-thread.ts).
    let thread: UrgentRequests | null = null;
    const listener = await listen({
      host: this.opts.host,
      port: this.opts.port,
      security: this.opts.security,
      handshakeTimeoutMs: this.handshakeMs,
      ...(this.opts.maxUnauthenticated !== undefined ? { maxUnauthenticated: this.opts.maxUnauthenticated } : {}),
      urgentHandoff: (fd, peer, timeoutMs) => thread!.handoff(fd, peer, timeoutMs),
      // The native fault path, unless this host turns it off (FERRY_NATIVE_FAULTS=0): granted in
      // HELLO_ACK, and its connections taken; elsewhere that preface is refused as unknown.
      // FERRY_MOVE_SOCKETS=0 withholds SOCKETS: a source whose guest holds sockets is then refused.
      // Native precopy (on the same connection) too, unless FERRY_NATIVE_PRECOPY=0 here.
      features: (process.env.FERRY_MOVE_SOCKETS === '0' ? ALL_FEATURES & ~Feature.SOCKETS : ALL_FEATURES) |
        (nativeFaultsEnabled() ? Feature.NATIVE_FAULTS | (process.env['FERRY_NATIVE_PRECOPY'] !== '0' ? Feature.NATIVE_PRECOPY : 0) : 0),
      ...(nativeFaultsEnabled() ? { dataplaneHandoff: (fd: number, _peer: string, sessionHex: string) => this.link.onDataplane(fd, sessionHex) } : {}),
    });
    this.link.urgentThread = thread = new UrgentRequests(this.opts.security, listener);
    this.listener = listener;
    // A refused peer never ends the wait: it is counted, reported, and the listener goes on.
    listener.on('rejected', (err, phase) => this.admission.refuse(err.peer, phase, err));
    return listener.port;
  }

  private get handshakeMs(): number {
    return this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS;
  }

  progress(): MigrationProgress {
    const last = this.admission.last;
    return {
      refused: this.admission.count,
      lastRefused: last ? { peer: last.peer, phase: last.phase, reason: last.reason } : null,
      role: 'destination',
      state: this.phases.current,
      mode: this.incoming?.isPostcopy ? 'postcopy' : 'precopy',
      pass: this.counts.pass,
      bytesSent: this.link.bytesSent,
      bytesReceived: this.link.bytesReceived,
      pagesSent: 0,
      pagesReceived: this.pagesReceived(),
      dirtyPages: this.incoming?.pendingPages ?? 0,
      rateBytesPerSec: 0,
      dirtyRatePagesPerSec: 0,
      expectedDowntimeMs: null,
      elapsedMs: Math.round(performance.now() - this.t0),
      postcopy: this.incoming?.report() ?? null,
      error: this.errorText,
      outages: this.completion?.outages ?? 0,
      pausedMs: Math.round(this.completion?.pausedMs ?? 0),
      guestBlocked: (this.incoming?.waitingFaults ?? 0) > 0,
    };
  }

  /** Postcopy fault latencies measured here so far (µs), for GET /metrics; null before postcopy. */
  faultLatenciesUs(): readonly number[] | null {
    return this.incoming?.isPostcopy ? this.incoming.faultLatenciesUs : null;
  }

  /** Takes one migration and returns the running guest. */
  async receive(): Promise<IncomingResult> {
    if (!this.listener) await this.listen();
    try {
      return await this.receiveOnce();
    } catch (err) {
      this.downtimePriority.end();
      this.phases.enter('failed');
      this.errorText = (err as Error).message;
      const code = err instanceof WireError ? 'BAD_STREAM' : 'FAILED';
      const bulk = this.link.bulk;
      await bulk?.sendMessage({ type: 'ERROR', code, message: (err as Error).message.slice(0, 1000) }).catch(() => undefined);
      bulk?.destroy();
      await this.link.urgentThread?.terminate().catch(() => undefined);
      this.nativePrecopy?.stop();
      this.nativePrecopy = null;
      if (this.earlyDataplane) closeFd(this.earlyDataplane.fd);
      this.earlyDataplane = null;
      await this.incoming?.stop().catch(() => undefined);
      this.link.dropDataplane();
      await this.preparing?.then((p) => p.dispose()).catch(() => undefined);
      await this.listener?.close();
      throw err;
    }
  }

  private async receiveOnce(): Promise<IncomingResult> {
    const listener = this.listener!;
    // Waits for a source that passes authentication and SETUP; every other peer is refused and
    // the wait goes on (bounded by maxRefused, when given).
    const { session, setup } = await this.admission.accept(listener, this.phases);
    const bulk = (this.link.bulk = session.bulk);
    // The stream starts on the bulk channel alone: the source's urgent channel (a thread of its
    // own to start, tens of ms) joins while the first pages move, and is waited for before the
    // pause (urgentJoined()).
    this.link.expectUrgent(session.urgent ?? null, () => listener.acceptUrgent(session.sessionHex));
    const haveModule = this.cache.has(setup.moduleHash);
    await bulk.sendMessage({ type: 'SETUP_ACK', needModule: !haveModule });
    if (!haveModule) await this.receiveModule(bulk, setup);
    const moduleBytes = this.cache.source(setup.moduleHash)!;

    const mem = GuestMemory.create(setup.memory.bytes / WASM_PAGE_SIZE, setup.memory.maxBytes / WASM_PAGE_SIZE);
    const preparing = (this.preparing = this.prepareGuest(moduleBytes, mem, setup.memory.maxBytes));
    rehearseDecoding();
    const checker = new PageFrameChecker(setup.memory);
    // The digest is kept only when the source offered the DIGEST feature (it does for --verify).
    const features = bulk.session?.features ?? 0;
    const digest = features & Feature.DIGEST ? new PageDigest(setup.memory.maxBytes) : null;
    const native = (features & Feature.NATIVE_FAULTS) !== 0;
    const incoming = (this.incoming = new IncomingMemory(mem, new PageStateTable(mem.maxPageCount), this.link.urgentThread!, checker, digest, native));
    await incoming.start();
    this.link.dataplaneBytes = () => incoming.dataplaneBytes;
    // Native precopy: the passes' pages come on the data plane connection, placed by a native
    // thread from now until the source's CLOSE; the connection itself is kept for the commit.
    const early = (this.earlyDataplane = native && (features & Feature.NATIVE_PRECOPY) !== 0 ? await this.link.takeDataplane(bulk) : null);
    const precopyReceiver = early ? incoming.startNativePrecopy({ fd: dup(early.fd), secret: early.secret }) : null;
    if (precopyReceiver) {
      // The native precopy stream's bytes count with the data plane's (its counters outlive the
      // thread): without them the received bytes missed most of a move that converged natively.
      this.link.dataplaneBytes = () => {
        const d = incoming.dataplaneBytes;
        const p = precopyReceiver.read();
        return { sent: d.sent + p.bytesSent, received: d.received + p.bytesReceived };
      };
      this.nativePrecopy = precopyReceiver;
      this.phases.note('precopy (native precopy thread started)');
      // A refused frame or a torn connection fails the migration at once, not at the next PASS_END.
      void precopyReceiver.ended.then((err) => {
        if (err === null || this.nativePrecopy !== precopyReceiver) return;
        const failure = new MigrationError('protocol', `native precopy: ${err}; nothing was run`);
        void bulk.sendMessage({ type: 'ERROR', code: 'BAD_STREAM', message: failure.message.slice(0, 1000) }).catch(() => undefined).finally(() => bulk.destroy(failure));
      });
    }
    this.phases.enter('precopy');
    const { staged, trace, postcopyBuffer, sockets } = await receiveUntilCommit({
      bulk,
      link: this.link,
      setup,
      mem,
      checker,
      incoming,
      nativePrecopy: precopyReceiver,
      preparing,
      preopens: this.opts.preopens,
      stdio: this.opts.stdio,
      phases: this.phases,
      downtimePriority: this.downtimePriority,
      counts: this.counts,
      onPassEnd: () => this.report(),
      addressMove: { addresses: this.opts.serviceAddresses ?? [], hook: this.opts.onAcquire },
    });
    await this.link.urgentJoined(bulk.peer);
    // The source opened its data plane connection right after its bulk channel: here long since.
    const dataplane = early ?? (native ? await this.link.takeDataplane(bulk) : null);
    this.earlyDataplane = null; // from here incoming.activate() owns it
    this.nativePrecopy = null;

    // ---- switchover: every page is in place or pending; let the staged guest run ----
    this.phases.enter('switchover');
    const pageCount = mem.pageCount;
    this.preparing = null;
    // Out of repair mode before the guest runs: its first send must go out, not into a repair queue.
    sockets?.resume();
    trace.mark('go');
    const guest = await staged.go();
    trace.mark('guest running');
    // The bulk buffers are set before the source hears RUNNING, which tells it the size for its end.
    const bulkBufferBytes = incoming.isPostcopy ? postcopyBuffer || MIN_POSTCOPY_BUFFER : 0;
    if (bulkBufferBytes > 0) bulk.limitKernelBuffers(bulkBufferBytes);
    const running = bulk.sendMessage({ type: 'RUNNING', bulkBufferBytes });
    await bulk.handedOver();
    trace.mark('RUNNING written');
    // Faults the guest takes meanwhile wait in the request ring: activating the urgent thread (a
    // message to it, and its first run of that code) is not the guest's downtime, so it comes
    // after RUNNING is written; but not after its write is confirmed, which can take
    // milliseconds of incoming bulk stream handled first while the guest's faults wait.
    incoming.activate(pageCount, dataplane);
    this.downtimePriority.end();
    if (dataplane) this.phases.note('switchover (native fault thread started)');
    await running;
    trace.mark('activated');
    trace.print();
    this.phases.enter(incoming.isPostcopy ? 'postcopy' : 'verifying');
    this.report();
    this.completion = new SessionCompletion({
      link: this.link,
      listener,
      incoming,
      phases: this.phases,
      sessionHex: session.sessionHex,
      recoverTimeoutMs: this.recoverTimeoutMs,
      digest,
      pageCount,
      setError: (text) => (this.errorText = text),
      report: () => this.report(),
    });
    return { guest, completion: this.finish(guest, this.completion, mem.sizeBytes) };
  }

  /**
   * The guest's thread starts now, while pages stream in: at the commit it only takes the state.
   * Instrumenting (on a cold cache) runs on a thread of its own while pages stream in; the source
   * may pause only once it is done (see the PING barrier), never inside the downtime.
   */
  private prepareGuest(moduleBytes: Uint8Array, mem: GuestMemory, maxMemoryBytes: number): Promise<PreparedGuest> {
    let instrumenting = false;
    const onInstrumentProgress: InstrumentProgressListener = (p) => {
      if (!instrumenting) this.phases.note(`module instrumenting (${p.sourceBytes} bytes)`);
      instrumenting = true;
      this.opts.onInstrumentProgress?.(p);
    };
    const preparing = this.cache.load(moduleBytes, { onProgress: onInstrumentProgress }).then((m) => {
      this.phases.note(m.fromCache ? 'module ready (from the cache)' : `module ready (instrumented in ${Math.round(m.instrumentMs)} ms)`);
      return Guest.prepare({ module: moduleBytes, memory: mem.memory, maxMemoryBytes, cache: this.cache });
    });
    preparing.catch(() => undefined);
    return preparing;
  }

  /**
   * Pages received so far: the precopy passes' (data and zero) and, after the commit, those placed
   * by postcopy. (Before, postcopy's were left out: a pass 0 cut short — send/convergence.ts — sent
   * most pages by postcopy, and the count fell to half the memory.)
   */
  private pagesReceived(): number {
    return this.counts.pagesReceived + (this.incoming?.postcopyPlaced ?? 0);
  }

  private async finish(guest: Guest, completion: SessionCompletion, memoryBytes: number): Promise<DestinationSummary> {
    const pc = this.incoming!;
    const postcopy = pc.isPostcopy;
    try {
      await completion.run();
      // Complete once the source acknowledged the last figures; nothing after this can fail (the
      // closes below swallow their errors), so 'failed' can never follow 'completed'.
      this.phases.enter('completed');
      this.report();
      const summary: DestinationSummary = {
        mode: postcopy ? 'postcopy' : 'precopy',
        memoryBytes,
        bytesReceived: this.link.bytesReceived,
        pagesReceived: this.pagesReceived(),
      };
      if (postcopy) summary.postcopy = pc.report();
      if (completion.closingLost) summary.closingLost = completion.closingLost;
      await this.link.bulk?.close().catch(() => undefined);
      await this.link.urgentThread!.close().catch(() => undefined);
      await this.listener?.close();
      return summary;
    } catch (err) {
      this.phases.enter('failed');
      this.errorText = (err as Error).message;
      if (pc.pendingPages > 0) {
        // Pages are missing and cannot come: stop the guest (it may be blocked on a hole) before
        // anything closes the userfaultfd, which would let blocked threads read zeros.
        await guest.stop();
      }
      await pc.stop().catch(() => undefined);
      this.link.destroy();
      await this.listener?.close();
      throw err;
    }
  }

  private async receiveModule(bulk: FramedChannel, setup: MessageOf<'SETUP'>): Promise<void> {
    const asm = new ChunkAssembler('MODULE', setup.moduleSize);
    while (!asm.complete) {
      const r = await bulk.recvWithOffset();
      if (!r) throw new WireError('TRUNCATED', bulk.bytesReceived, 'the stream ended inside the module');
      if (r.msg.type !== 'MODULE') throw new WireError('BAD_ORDER', r.offset, `expected MODULE, got ${r.msg.type}`);
      asm.add(r.msg.offset, r.msg.data, r.offset);
    }
    const bytes = asm.result();
    if (sha256Hex(bytes) !== setup.moduleHash) throw new MigrationError('protocol', 'the module received does not match its announced hash');
    this.cache.putSource(bytes);
  }

  private report(): void {
    this.opts.onProgress?.(this.progress());
  }
}
