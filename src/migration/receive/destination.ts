// The migration destination: listens on one port, takes one migration (bulk and urgent channels of
// one session), places the pages the source streams, and at the source's COMMIT resumes the guest
// from its state — with every page present (precopy) or with holes served by userfaultfd
// (postcopy). Before COMMIT nothing runs: any failure leaves nothing behind. Every frame is checked
// against the memory geometry before a byte of it is placed.
import { Guest, type PreparedGuest, type StagedGuest } from '../../guest/guest.js';
import { ModuleCache } from '../../guest/module-cache.js';
import type { InstrumentProgressListener } from '../../guest/instrument-runner.js';
import { sha256Hex } from '../../state/hash.js';
import { GuestMemory, HOST_PAGE_SIZE, WASM_PAGE_SIZE } from '../../memory/guest-memory.js';
import { PageStateTable } from '../../memory/page-state.js';
import { decodeGuestState, rehearseDecoding, type GuestState } from '../../state/guest-state.js';
import type { Preopen, StdioBinding } from '../../wasi/wasi.js';
import { DEFAULT_HANDSHAKE_MS, listen, TransportError, type BulkFirst, type FramedChannel, type MigrationListener, type RemoteChannel, type Security } from '../transport/index.js';
import { ChunkAssembler, Feature, PageFrameChecker, WireError, type Message, type MessageOf } from '../wire/index.js';
import { PageDigest } from '../verify/digest.js';
import { IncomingMemory, type DataplaneLink } from './incoming-memory.js';
import { nativeFaultsEnabled } from '../dataplane/connect.js';
import { dataplaneSecret } from '../dataplane/keys.js';
import { close as closeFd } from '../../sys/fd.js';
import { ALL_FEATURES } from '../wire/index.js';
import { UrgentRequests } from './urgent/requests.js';
import { MIN_POSTCOPY_BUFFER, postcopyBufferBytes } from '../session/bulk-buffers.js';
import { isChannelFailure } from '../session/failures.js';
import { PhaseLog, SwitchoverTrace } from '../session/phases.js';
import { collectGarbageNow } from '../session/heap.js';
import { DowntimePriority } from '../../sys/sched.js';
import { MigrationError, type MigrationPhase, type MigrationProgress, type PostcopyReport } from '../session/report.js';

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
}

/** A peer refused before any page moved: it failed the preface, TLS, HELLO or SETUP, or came while busy. */
export interface Refusal {
  peer: string;
  /** Where it failed: arrival, preface, TLS/HELLO, urgent TLS/HELLO, urgent handshake, SETUP. */
  phase: string;
  reason: string;
  /** Peers refused so far, this one included. */
  count: number;
}

export { DEFAULT_RECOVER_TIMEOUT_S } from '../session/defaults.js';
import { DEFAULT_RECOVER_TIMEOUT_S } from '../session/defaults.js';
/** Silence on both channels, while the guest waits on a page, after which the connection is lost. */
const SILENCE_MS = 10_000;
/** How long after its bulk channel a session's urgent channel may take to join, at most. */
const URGENT_JOIN_MS = 30_000;
/** A PING after at least this much stream since the last collection is answered after one. */
const GC_BEFORE_PONG_BYTES = 16 * 1024 * 1024;


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
}

export class MigrationDestination {
  private listener: MigrationListener | null = null;
  private readonly phases = new PhaseLog('destination');
  private readonly t0 = this.phases.t0;
  /** Real-time scheduling of this thread through the downtime. */
  private readonly downtimePriority = new DowntimePriority();
  private bulk: FramedChannel | null = null;
  /** The thread that holds the urgent connections (from listen() on). */
  private urgentThread: UrgentRequests | null = null;
  /** The session's urgent connection, held by that thread. */
  private urgent: RemoteChannel | null = null;
  /** Until the session's urgent connection has joined: its arrival. */
  private urgentArrival: Promise<void> | null = null;
  private pass = 0;
  private pagesReceived = 0;
  private incoming: IncomingMemory | null = null;
  private errorText: string | null = null;
  private readonly cache: ModuleCache;
  private preparing: Promise<PreparedGuest> | null = null;
  /** The module is instrumented and the guest's thread waits for its state (see the first PING). */
  private prepared = false;
  private sessionHex = '';
  private pausedSince: number | null = null;
  private pausedMs = 0;
  private outages = 0;
  private priorBytesReceived = 0;
  private priorBytesSent = 0;
  private readonly recoverTimeoutMs: number;
  /** Peers refused before any page moved (stray, hostile, wrong key, second source). */
  private refusedCount = 0;
  private lastRefusal: Refusal | null = null;
  /** True until a source has passed SETUP: refusals count towards maxRefused only then. */
  private waitingForSource = true;
  /** Rejects when maxRefused is reached while waiting. */
  private readonly gaveUp: Promise<never>;
  private giveUp!: (e: Error) => void;
  private hasGivenUp = false;
  /** The latest native data plane connection handed over by the listener, not yet in use (-1: none). */
  private dataplaneFd = -1;
  private dataplaneArrived: (() => void) | null = null;

  constructor(private readonly opts: DestinationOptions) {
    this.cache = opts.cache ?? new ModuleCache();
    this.recoverTimeoutMs = (opts.recoverTimeoutS ?? DEFAULT_RECOVER_TIMEOUT_S) * 1000;
    this.gaveUp = new Promise<never>((_, reject) => (this.giveUp = reject));
    this.gaveUp.catch(() => undefined);
  }

  /** Peers refused so far (what GET /guest/migration shows as `refused`, and a metrics counter). */
  get refused(): number {
    return this.refusedCount;
  }

  private noteRefusal(peer: string, phase: string, err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    // TransportError messages start with the peer; say it once.
    let reason = message;
    while (reason.startsWith(`${peer}: `)) reason = reason.slice(peer.length + 2);
    reason = reason.replace(/\s*\n\s*/g, ' ');
    const r: Refusal = { peer, phase, reason, count: ++this.refusedCount };
    this.lastRefusal = r;
    this.opts.onRefused?.(r);
    const max = this.opts.maxRefused;
    if (this.waitingForSource && max !== undefined && this.refusedCount >= max && !this.hasGivenUp) {
      this.hasGivenUp = true;
      this.giveUp(new MigrationError('refused', `gave up after ${this.refusedCount} refused peer(s) (--max-refused ${max}); the last, ${peer}, during ${phase}: ${reason}`));
    }
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
      // The native fault path, only where this host runs it (FERRY_NATIVE_FAULTS=1): granted in
      // HELLO_ACK, and its connections taken; elsewhere that preface is refused as unknown.
      ...(nativeFaultsEnabled() ? { features: ALL_FEATURES | Feature.NATIVE_FAULTS, dataplaneHandoff: (fd: number) => this.onDataplane(fd) } : {}),
    });
    this.urgentThread = thread = new UrgentRequests(this.opts.security, listener);
    this.listener = listener;
    // A refused peer never ends the wait: it is counted, reported, and the listener goes on.
    listener.on('rejected', (err, phase) => this.noteRefusal(err.peer, phase, err));
    return listener.port;
  }

  /**
   * A data plane connection arrived. It is not authenticated yet (its native thread does that with
   * FINISHED frames keyed from the session's TLS exporter): the newest replaces an unused older one.
   */
  private onDataplane(fd: number): void {
    if (this.dataplaneFd >= 0) closeFd(this.dataplaneFd);
    this.dataplaneFd = fd;
    this.dataplaneArrived?.();
  }

  /** The data plane connection for the session on `bulk`, with its keys: waits for it to arrive. */
  private async takeDataplane(bulk: FramedChannel): Promise<DataplaneLink> {
    if (this.dataplaneFd < 0) {
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve, reject) => {
        this.dataplaneArrived = resolve;
        timer = setTimeout(() => reject(new MigrationError('transport', `the source's native data plane connection did not arrive within ${URGENT_JOIN_MS / 1000} s`)), URGENT_JOIN_MS);
      }).finally(() => {
        clearTimeout(timer);
        this.dataplaneArrived = null;
      });
    }
    const fd = this.dataplaneFd;
    this.dataplaneFd = -1;
    return { fd, secret: dataplaneSecret(bulk.tlsSocket, bulk.session!.sessionId) };
  }

  private dropDataplane(): void {
    if (this.dataplaneFd >= 0) closeFd(this.dataplaneFd);
    this.dataplaneFd = -1;
  }

  private get handshakeMs(): number {
    return this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS;
  }

  progress(): MigrationProgress {
    return {
      refused: this.refusedCount,
      lastRefused: this.lastRefusal ? { peer: this.lastRefusal.peer, phase: this.lastRefusal.phase, reason: this.lastRefusal.reason } : null,
      role: 'destination',
      state: this.phases.current,
      mode: this.incoming?.isPostcopy ? 'postcopy' : 'precopy',
      pass: this.pass,
      bytesSent: this.priorBytesSent + (this.bulk?.bytesSent ?? 0) + (this.urgentThread?.bytesSent ?? 0),
      bytesReceived: this.bytesReceivedTotal(),
      pagesSent: 0,
      pagesReceived: this.pagesReceived,
      dirtyPages: this.incoming?.pendingPages ?? 0,
      rateBytesPerSec: 0,
      dirtyRatePagesPerSec: 0,
      expectedDowntimeMs: null,
      elapsedMs: Math.round(performance.now() - this.t0),
      postcopy: this.incoming?.report() ?? null,
      error: this.errorText,
      outages: this.outages,
      pausedMs: Math.round(this.pausedMs + (this.pausedSince === null ? 0 : performance.now() - this.pausedSince)),
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
      await this.bulk?.sendMessage({ type: 'ERROR', code, message: (err as Error).message.slice(0, 1000) }).catch(() => undefined);
      this.bulk?.destroy();
      await this.urgentThread?.terminate().catch(() => undefined);
      await this.incoming?.stop().catch(() => undefined);
      this.dropDataplane();
      await this.preparing?.then((p) => p.dispose()).catch(() => undefined);
      await this.listener?.close();
      throw err;
    }
  }

  private async receiveOnce(): Promise<IncomingResult> {
    const listener = this.listener!;
    // Waits for a source that passes authentication and SETUP; every other peer is refused and
    // the wait goes on (bounded by maxRefused, when given).
    const { session, setup } = await this.acceptSource();
    this.waitingForSource = false;
    this.sessionHex = session.sessionHex;
    const bulk = (this.bulk = session.bulk);
    // The stream starts on the bulk channel alone: the source's urgent channel (a thread of its
    // own to start, tens of ms) joins while the first pages move, and is waited for before the
    // pause (urgentJoined()).
    if (session.urgent) this.useUrgent(session.urgent);
    else {
      this.urgentArrival = listener.acceptUrgent(session.sessionHex).then((u) => this.useUrgent(u));
      this.urgentArrival.catch(() => undefined);
    }
    const haveModule = this.cache.has(setup.moduleHash);
    await bulk.sendMessage({ type: 'SETUP_ACK', needModule: !haveModule });
    if (!haveModule) await this.receiveModule(bulk, setup);
    const moduleBytes = this.cache.source(setup.moduleHash)!;

    const mem = GuestMemory.create(setup.memory.bytes / WASM_PAGE_SIZE, setup.memory.maxBytes / WASM_PAGE_SIZE);
    // The guest's thread starts now, while pages stream in: at the commit it only takes the state.
    // Instrumenting (on a cold cache) runs on a thread of its own while pages stream in; the
    // source may pause only once it is done (see PING below), never inside the downtime.
    let instrumenting = false;
    const onInstrumentProgress: InstrumentProgressListener = (p) => {
      if (!instrumenting) this.phases.note(`module instrumenting (${p.sourceBytes} bytes)`);
      instrumenting = true;
      this.opts.onInstrumentProgress?.(p);
    };
    this.preparing = this.cache.load(moduleBytes, { onProgress: onInstrumentProgress }).then((m) => {
      this.phases.note(m.fromCache ? 'module ready (from the cache)' : `module ready (instrumented in ${Math.round(m.instrumentMs)} ms)`);
      return Guest.prepare({ module: moduleBytes, memory: mem.memory, maxMemoryBytes: setup.memory.maxBytes, cache: this.cache });
    });
    this.preparing.catch(() => undefined);
    rehearseDecoding();
    const checker = new PageFrameChecker(setup.memory);
    // The digest is kept only when the source offered the DIGEST feature (it does for --verify).
    const digest = (bulk.session?.features ?? 0) & Feature.DIGEST ? new PageDigest(setup.memory.maxBytes) : null;
    const native = ((bulk.session?.features ?? 0) & Feature.NATIVE_FAULTS) !== 0;
    const incoming = (this.incoming = new IncomingMemory(mem, new PageStateTable(mem.maxPageCount), this.urgentThread!, checker, digest, native));
    await incoming.start();
    let state: ChunkAssembler | null = null;
    let staged: StagedGuest | null = null;
    let stagedMemoryBytes = 0;
    let trace: SwitchoverTrace | null = null;
    let collectedAt = 0;
    this.phases.enter('precopy');
    const streamStart = performance.now();
    let postcopyBuffer = 0;

    // ---- the stream up to COMMIT ----
    for (;;) {
      const r = await bulk.recvWithOffset();
      if (!r) throw new WireError('TRUNCATED', bulk.bytesReceived, 'the stream ended before the commit; nothing was run');
      const { msg, offset } = r;
      switch (msg.type) {
        case 'PAGES': {
          checker.checkPages(msg, offset);
          const first = msg.offset / HOST_PAGE_SIZE;
          this.pagesReceived += msg.count;
          if (msg.kind === 'data') incoming.placeData(first, msg.count, msg.data!);
          else incoming.placeZero(first, msg.count);
          continue;
        }
        case 'GROW':
          checker.checkGrow(msg, offset);
          mem.grow((msg.newBytes - mem.sizeBytes) / WASM_PAGE_SIZE);
          continue;
        case 'PASS_END':
          checker.checkPassEnd(msg, offset);
          this.pass = msg.pass + 1;
          this.report();
          continue;
        case 'DISCARD':
          trace?.mark(`DISCARD ${msg.ranges.length} ranges`);
          for (const range of msg.ranges) {
            if (range.offset + range.count * HOST_PAGE_SIZE > mem.sizeBytes) {
              throw new WireError('BAD_PAGES', offset, `DISCARD ${range.offset}+${range.count} pages lies outside memory of ${mem.sizeBytes} bytes`);
            }
            incoming.discard(range.offset / HOST_PAGE_SIZE, range.count);
          }
          continue;
        case 'STATE':
          if (staged) throw new WireError('BAD_ORDER', offset, 'a second guest state');
          if (!state) trace?.mark('STATE arriving');
          state ??= new ChunkAssembler('STATE', msg.totalBytes);
          state.add(msg.offset, msg.data, offset, msg.totalBytes);
          if (state.complete) {
            // The whole state is in (the source sends it right after its pause, ahead of the last
            // pages): check it and let the waiting worker set up all but memory meanwhile.
            const guestState = decodeGuestState(state.result());
            trace?.mark('state decoded');
            this.checkState(guestState, setup, mem);
            stagedMemoryBytes = guestState.memory.bytes;
            staged = (await this.preparing!).stageRestore(guestState, { preopens: this.opts.preopens, stdio: this.opts.stdio });
            trace?.mark('state staged');
          }
          continue;
        case 'PING':
          // The source pauses its guest only after this barrier's PONG: the module must be
          // instrumented and the guest's thread waiting before then, so that no instrumentation
          // (seconds to minutes for a big module) ever falls between the pause and the resume.
          if (!this.prepared) {
            await this.preparing;
            this.prepared = true;
            this.phases.note('guest prepared (worker waiting for the state)');
          }
          await this.urgentJoined(bulk.peer);
          // The source's barrier before its pause: everything before this frame is placed. The
          // first one ends the stream of the precopy passes: its rate, and the round trip this
          // side's TCP estimated meanwhile, size both ends' buffers for the postcopy stream
          // (session/bulk-buffers.ts; this side decides, since the source's own estimate on loopback
          // counts the time a busy receiver takes to acknowledge).
          if (postcopyBuffer === 0) {
            const rcvRttUs = bulk.pathInfo()?.rcvRttUs ?? 0;
            const rate = (bulk.bytesReceived / Math.max(1, performance.now() - streamStart)) * 1000;
            postcopyBuffer = postcopyBufferBytes(rate, rcvRttUs);
            this.phases.note(`switchover (path: ${(rate / 1e6).toFixed(1)} MB/s, rtt ${rcvRttUs} us: postcopy buffers ${postcopyBuffer} bytes)`);
          }
          // After the memory stream (not after the small DISCARD rounds), collect garbage first:
          // the downtime follows within milliseconds (see session/heap.ts).
          if (bulk.bytesReceived - collectedAt > GC_BEFORE_PONG_BYTES) {
            collectGarbageNow();
            collectedAt = bulk.bytesReceived;
          }
          await bulk.sendMessage({ type: 'PONG', nonce: msg.nonce });
          this.phases.note('pause barrier answered');
          trace = new SwitchoverTrace('destination'); // the source pauses its guest now
          // Until RUNNING is out this thread runs ahead of normal threads (see the source's pause).
          this.downtimePriority.raise();
          continue;
        case 'COMMIT':
          break;
        default:
          throw new WireError('BAD_ORDER', offset, `unexpected ${msg.type} before COMMIT`);
      }
      break;
    }
    await this.urgentJoined(bulk.peer);
    // The source opened its data plane connection right after its bulk channel: here long since.
    const dataplane = native ? await this.takeDataplane(bulk) : null;
    trace ??= new SwitchoverTrace('destination');
    trace.mark('COMMIT');
    if (!staged) throw new WireError('BAD_ORDER', bulk.bytesReceived, 'COMMIT without a (whole) guest state');
    if (mem.sizeBytes !== stagedMemoryBytes) throw new MigrationError('protocol', `the memory grew to ${mem.sizeBytes} bytes after the guest state was sent`);

    // ---- switchover: every page is in place or pending; let the staged guest run ----
    this.phases.enter('switchover');
    const pageCount = mem.pageCount;
    this.preparing = null;
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
    const completion = this.finish(guest, digest, pageCount, mem.sizeBytes);
    return { guest, completion };
  }

  private async finish(guest: Guest, digest: PageDigest | null, pageCount: number, memoryBytes: number): Promise<DestinationSummary> {
    const pc = this.incoming!;
    const postcopy = pc.isPostcopy;
    try {
      // Postcopy survives broken connections: the guest keeps running (it blocks only on pages
      // still missing) while this side waits for the source to reconnect with the same session,
      // tells it which pages it holds, and asks again for the pages its faults are waiting on.
      for (;;) {
        try {
          await this.serveSession(pc, postcopy, digest, pageCount);
          break;
        } catch (err) {
          if (!postcopy || !isChannelFailure(err)) throw err;
          await this.awaitReconnection(pc, err as Error, pageCount);
        }
      }
      // Complete once the source acknowledged the last figures; nothing after this can fail (the
      // closes below swallow their errors), so 'failed' can never follow 'completed'.
      this.phases.enter('completed');
      this.report();
      const summary: DestinationSummary = {
        mode: postcopy ? 'postcopy' : 'precopy',
        memoryBytes,
        bytesReceived: this.bytesReceivedTotal(),
        pagesReceived: this.pagesReceived,
      };
      if (postcopy) summary.postcopy = pc.report();
      await this.bulk!.close().catch(() => undefined);
      await this.urgentThread!.close().catch(() => undefined);
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
      this.bulk?.destroy();
      this.urgent?.destroy();
      await this.listener?.close();
      throw err;
    }
  }

  /** One connection's worth of postcopy (or just the closing messages): returns when done. */
  private async serveSession(pc: IncomingMemory, postcopy: boolean, digest: PageDigest | null, pageCount: number): Promise<void> {
    const bulk = this.bulk!;
    // One reader of the bulk channel at a time: the page loop, once every page is placed, hands
    // over the next message (the source's DONE acknowledgement) instead of consuming it.
    let bulkTail: Promise<Message | null> | null = null;
    if (postcopy && pc.pendingPages > 0) {
      const urgent = pc.native ? Promise.race([this.urgentThread!.whenLost(), pc.whenNativeLost()]) : this.urgentThread!.whenLost();
      const bulkPages = (async (): Promise<Message | null> => {
        for (;;) {
          const r = await bulk.recvWithOffset();
          if (!r) throw new WireError('TRUNCATED', bulk.bytesReceived, 'the stream ended during postcopy');
          if (r.msg.type === 'PAGES') pc.onBulkPages(r.msg, r.offset);
          else if (pc.pendingPages === 0) return r.msg;
          else throw new WireError('BAD_ORDER', r.offset, `unexpected ${r.msg.type} during postcopy`);
        }
      })();
      urgent.catch(() => undefined);
      bulkPages.catch(() => undefined);
      const watchdog = this.silenceWatchdog(pc);
      try {
        await Promise.race([pc.complete, urgent, bulkPages, watchdog.failed]);
      } finally {
        watchdog.stop();
      }
      bulkTail = bulkPages;
    }
    // Every page is in place: unregister (known-zero pages not yet touched become ordinary
    // zero-fill memory) and close the account.
    await pc.stop();
    if (postcopy) {
      const r = pc.report();
      await bulk.sendMessage({
        type: 'FAULT_STATS',
        faults: r.faults,
        pagesRequested: r.pagesRequested,
        pagesPushed: r.pagesPushed,
        latencyUs: r.faultLatencyUs,
        guestBlockedUs: Math.round(r.guestBlockedMs * 1000),
        durationMs: r.durationMs,
      });
    }
    if (digest) await bulk.sendMessage({ type: 'DIGEST', pageCount, hex: digest.digestHex(pageCount) });
    await bulk.sendMessage({ type: 'DONE' });
    // Complete only when the source says it got them: a connection cut after our DONE was written
    // but before it arrived must still end in a reconnection, not in a source retrying forever.
    const ack = bulkTail ? await withTimeout(bulkTail, 60_000, bulk.peer) : await bulk.expect('DONE', 60_000);
    if (ack?.type !== 'DONE') throw new WireError('BAD_ORDER', bulk.bytesReceived, `expected the source's DONE, got ${ack?.type ?? 'the end of the stream'}`);
  }

  /**
   * A connection can go silent without closing (a partition, a peer that hangs). While the guest
   * waits on a page, nothing arriving on either channel for SILENCE_MS means the connection is
   * lost: fail it, so recovery reconnects instead of leaving the guest blocked for ever.
   */
  private silenceWatchdog(pc: IncomingMemory): { failed: Promise<never>; stop(): void } {
    let fail!: (e: Error) => void;
    const failed = new Promise<never>((_, reject) => (fail = reject));
    failed.catch(() => undefined);
    let last = this.bytesReceivedTotal();
    let quietSince = performance.now();
    const timer = setInterval(() => {
      const now = this.bytesReceivedTotal();
      if (now !== last || pc.waitingFaults === 0) {
        last = now;
        quietSince = performance.now();
      } else if (performance.now() - quietSince > SILENCE_MS) {
        fail(new TransportError('TIMEOUT', this.bulk?.peer ?? 'source', `nothing received for ${SILENCE_MS / 1000} s while the guest waits on a page`));
      }
    }, 500);
    return { failed, stop: () => clearInterval(timer) };
  }

  /** Waits (up to the recovery timeout) for the source to come back with the same session. */
  private async awaitReconnection(pc: IncomingMemory, cause: Error, pageCount: number): Promise<void> {
    this.phases.enter('postcopy-paused');
    this.pausedSince = performance.now();
    this.outages++;
    this.errorText = `connection lost: ${cause.message}`;
    // A data plane connection held now came after the commit's was taken: it is the source's
    // reconnection (the source may notice the loss first and be back before this side notices).
    this.addBytes();
    this.bulk?.destroy();
    this.urgent?.destroy();
    this.report();
    const deadline = performance.now() + this.recoverTimeoutMs;
    for (;;) {
      const left = deadline - performance.now();
      if (left <= 0) throw new MigrationError('transport', `the source did not come back within ${Math.round(this.recoverTimeoutMs / 1000)} s after: ${cause.message}`);
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<null>((resolve) => (timer = setTimeout(() => resolve(null), left)));
      const session = await Promise.race([this.listener!.acceptSession(), timeout]).finally(() => clearTimeout(timer));
      if (!session) continue;
      if (session.sessionHex !== this.sessionHex) {
        await session.bulk.sendMessage({ type: 'REFUSE', reason: 'this destination is busy with another migration' }).catch(() => undefined);
        session.bulk.destroy();
        session.urgent.destroy();
        continue;
      }
      this.bulk = session.bulk;
      this.bulk.setNoDelay(true);
      await this.bulk.sendMessage({ type: 'RECEIVED_SET', set: { encoding: 'bitmap', startPage: 0, pageCount, bits: pc.receivedBits(pageCount) } });
      // The urgent thread asks again, on the new connection, for every page a fault still waits on
      // (the native fault thread too, on its new connection).
      this.useUrgent(session.urgent);
      if (pc.native) pc.attachDataplane(await this.takeDataplane(this.bulk));
      this.pausedMs += performance.now() - this.pausedSince;
      this.pausedSince = null;
      this.phases.enter('postcopy');
      this.errorText = null;
      this.report();
      return;
    }
  }

  /**
   * The first session whose source is authenticated (TLS, HELLO) and whose SETUP this host can
   * take. While it sends its SETUP every other session is refused at HELLO; a session refused at
   * SETUP (or silent, or sending something else) is closed, counted, and the wait goes on.
   */
  private async acceptSource(): Promise<{ session: BulkFirst; setup: MessageOf<'SETUP'> }> {
    const listener = this.listener!;
    for (;;) {
      const session = await Promise.race([listener.acceptBulk(), this.gaveUp]);
      listener.restrictTo(session.sessionHex);
      const bulk = session.bulk;
      // No Nagle on the bulk channel either: its small control frames (PONG, RUNNING, DIGEST) would
      // otherwise wait for the peer's delayed ACK — 40 ms on Linux — inside the downtime.
      bulk.setNoDelay(true);
      this.phases.enter('handshake');
      try {
        const setup = await Promise.race([bulk.expect('SETUP', this.handshakeMs), this.gaveUp]);
        const refusal = this.checkSetup(setup);
        if (refusal) {
          await bulk.sendMessage({ type: 'REFUSE', reason: refusal }).catch(() => undefined);
          throw new MigrationError('refused', `migration refused: ${refusal}`);
        }
        return { session, setup };
      } catch (err) {
        bulk.destroy();
        session.urgent?.destroy();
        listener.forget(session.sessionHex);
        listener.restrictTo(null);
        this.phases.enter('connecting');
        if (this.hasGivenUp) throw await this.gaveUp.catch((e: unknown) => e);
        this.noteRefusal(bulk.peer, 'SETUP', err);
        // noteRefusal may just have reached maxRefused: the next race ends at once.
      }
    }
  }

  /**
   * The session's urgent channel is in use. The source opens it before it pauses its guest (and
   * its PING before the pause waits here), so this waits only for a source that never opens it.
   */
  private async urgentJoined(peer: string): Promise<void> {
    if (!this.urgentArrival) return;
    try {
      await withTimeout(this.urgentArrival, URGENT_JOIN_MS, peer);
    } catch (err) {
      throw new MigrationError('transport', `the source's urgent channel did not join its session: ${(err as Error).message}`);
    }
    this.urgentArrival = null;
  }

  private useUrgent(urgent: RemoteChannel | FramedChannel): void {
    if (!('remote' in urgent)) throw new Error('internal: the urgent channel was not handed to the urgent thread');
    this.urgent = urgent;
    this.urgentThread!.use(urgent);
  }

  // The urgent thread counts its own bytes, over all its connections.
  private addBytes(): void {
    this.priorBytesReceived += this.bulk?.bytesReceived ?? 0;
    this.priorBytesSent += this.bulk?.bytesSent ?? 0;
  }

  private bytesReceivedTotal(): number {
    return this.priorBytesReceived + (this.bulk?.bytesReceived ?? 0) + (this.urgentThread?.bytesReceived ?? 0);
  }

  private checkState(state: GuestState, setup: MessageOf<'SETUP'>, mem: GuestMemory): void {
    if (state.module.hash !== setup.moduleHash) throw new MigrationError('protocol', 'the guest state belongs to another module than the one announced');
    if (state.memory.bytes !== mem.sizeBytes) {
      throw new MigrationError('protocol', `the guest state says ${state.memory.bytes} bytes of memory, the stream built ${mem.sizeBytes}`);
    }
  }

  private checkSetup(setup: MessageOf<'SETUP'>): string | null {
    const mapped = new Set(this.opts.preopens.map((p) => p.guestPath));
    const missing = setup.preopens.filter((g) => !mapped.has(g));
    if (missing.length > 0) {
      return `the guest needs preopened ${missing.map((m) => JSON.stringify(m)).join(', ')}, not mapped on this host (ferry run --incoming ... --dir HOST:${missing[0]})`;
    }
    if (setup.memory.maxBytes > 4 * 1024 ** 3) return 'memory maximum above 4 GiB';
    return null;
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

function withTimeout<T>(p: Promise<T>, ms: number, peer: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new TransportError('TIMEOUT', peer, `no answer within ${ms} ms`)), ms)));
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}
