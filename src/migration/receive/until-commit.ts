// The stream up to the source's COMMIT: pages placed as they come, memory grown, passes counted,
// the final DISCARD rounds applied, the guest state assembled, checked and staged on the waiting
// guest thread, and the source's PING barrier before its pause answered. Nothing here runs the
// guest: a failure leaves nothing behind.
import type { PreparedGuest, StagedGuest } from '../../guest/guest.js';
import { HOST_PAGE_SIZE, WASM_PAGE_SIZE, type GuestMemory } from '../../memory/guest-memory.js';
import { decodeGuestState, type GuestState } from '../../state/guest-state.js';
import type { Preopen, StdioBinding } from '../../wasi/wasi.js';
import type { FramedChannel } from '../transport/index.js';
import { ChunkAssembler, Feature, WireError, type MessageOf, type PageFrameChecker } from '../wire/index.js';
import type { IncomingMemory } from './incoming-memory.js';
import type { DestinationLink } from './link.js';
import { postcopyBufferBytes } from '../session/bulk-buffers.js';
import { collectGarbageNow } from '../session/heap.js';
import { SwitchoverTrace, type PhaseLog } from '../session/phases.js';
import { MigrationError } from '../session/report.js';
import type { DowntimePriority } from '../../sys/sched.js';
import type { AddressMove } from '../../net/address-hooks.js';
import { IncomingSockets } from './sockets.js';
import type { PrecopyReceiver } from '../dataplane/precopy-plane.js';

/** A PING after at least this much stream since the last collection is answered after one. */
const GC_BEFORE_PONG_BYTES = 16 * 1024 * 1024;

export interface PrecommitContext {
  bulk: FramedChannel;
  link: DestinationLink;
  setup: MessageOf<'SETUP'>;
  mem: GuestMemory;
  checker: PageFrameChecker;
  incoming: IncomingMemory;
  /** Native precopy's receiving thread (Feature.NATIVE_PRECOPY): PASS_END waits for its MARK, the pause barrier for its CLOSE. */
  nativePrecopy: PrecopyReceiver | null;
  /** The guest's thread, instrumenting or waiting for its state. */
  preparing: Promise<PreparedGuest>;
  preopens: Preopen[];
  stdio: StdioBinding;
  phases: PhaseLog;
  downtimePriority: DowntimePriority;
  /** What progress reports show, updated as frames arrive. */
  counts: { pass: number; pagesReceived: number };
  /** A pass ended: worth a progress report. */
  onPassEnd: () => void;
  /** The service address this host takes when the guest's sockets arrive (--service-address, --on-acquire). */
  addressMove: AddressMove;
}

export interface AtCommit {
  staged: StagedGuest;
  /** Memory size the guest state was taken at. */
  stateMemoryBytes: number;
  /** The switchover's trace, begun at the PING barrier (or at the COMMIT without one). */
  trace: SwitchoverTrace;
  /** Kernel buffer size for the postcopy stream, sized at the first PING (0: no PING came). */
  postcopyBuffer: number;
  /** The guest's sockets, re-created in repair mode (null: it has none): resume() them before it runs. */
  sockets: IncomingSockets | null;
}

/** Reads the bulk channel up to and including COMMIT; a failure closes the sockets restored so far. */
export async function receiveUntilCommit(c: PrecommitContext): Promise<AtCommit> {
  const got: { sockets: IncomingSockets | null } = { sockets: null };
  try {
    return await untilCommit(c, got);
  } catch (err) {
    got.sockets?.abort();
    throw err;
  }
}

async function untilCommit(c: PrecommitContext, got: { sockets: IncomingSockets | null }): Promise<AtCommit> {
  const { bulk, mem, checker, incoming, counts } = c;
  let state: ChunkAssembler | null = null;
  let socketBlob: ChunkAssembler | null = null;
  let staged: StagedGuest | null = null;
  let stateMemoryBytes = 0;
  let trace: SwitchoverTrace | null = null;
  let collectedAt = 0;
  let prepared = false;
  const streamStart = performance.now();
  let postcopyBuffer = 0;
  let nativeOpen = c.nativePrecopy !== null;
  let nativeCounted = 0;
  for (;;) {
    const r = await bulk.recvWithOffset();
    trace?.mark(() => `got ${r?.msg.type}`);
    if (!r) throw new WireError('TRUNCATED', bulk.bytesReceived, 'the stream ended before the commit; nothing was run');
    const { msg, offset } = r;
    switch (msg.type) {
      case 'PAGES': {
        checker.checkPages(msg, offset);
        const first = msg.offset / HOST_PAGE_SIZE;
        counts.pagesReceived += msg.count;
        if (msg.kind === 'data') incoming.placeData(first, msg.count, msg.data!);
        else incoming.placeZero(first, msg.count);
        trace?.mark(() => `PAGES ${first}+${msg.count} placed`);
        continue;
      }
      case 'GROW':
        checker.checkGrow(msg, offset);
        mem.grow((msg.newBytes - mem.sizeBytes) / WASM_PAGE_SIZE);
        c.nativePrecopy?.setPageCount(mem.pageCount);
        continue;
      case 'PASS_END':
      {
        // Native precopy: the pass's pages came on the data plane; what follows here must see them placed.
        let nativePages = 0;
        if (nativeOpen) {
          const placed = await c.nativePrecopy!.passPlaced(msg.pass);
          nativePages = placed - nativeCounted;
          nativeCounted += nativePages;
          counts.pagesReceived += nativePages;
        }
        checker.checkPassEnd(msg, offset, nativePages);
        counts.pass = msg.pass + 1;
        c.onPassEnd();
        continue;
      }
      case 'DISCARD':
        trace?.mark(`DISCARD ${msg.ranges.length} ranges`);
        for (const range of msg.ranges) {
          if (range.offset + range.count * HOST_PAGE_SIZE > mem.sizeBytes) {
            throw new WireError('BAD_PAGES', offset, `DISCARD ${range.offset}+${range.count} pages lies outside memory of ${mem.sizeBytes} bytes`);
          }
          incoming.discard(range.offset / HOST_PAGE_SIZE, range.count);
        }
        continue;
      case 'SOCKETS':
        // Before STATE: the staged guest adopts the sockets when it takes its state.
        if (state || (socketBlob?.complete ?? false)) throw new WireError('BAD_ORDER', offset, 'SOCKETS after the guest state, or twice');
        if (((bulk.session?.features ?? 0) & Feature.SOCKETS) === 0) throw new WireError('BAD_ORDER', offset, 'SOCKETS without the SOCKETS feature');
        socketBlob ??= new ChunkAssembler('SOCKETS', msg.totalBytes);
        socketBlob.add(msg.offset, msg.data, offset, msg.totalBytes);
        if (socketBlob.complete) {
          trace?.mark('SOCKETS whole');
          got.sockets = IncomingSockets.restore(socketBlob.result(), c.addressMove, offset);
          const sockets = got.sockets;
          trace?.mark(() => `sockets re-created (${sockets.timing})`);
        }
        continue;
      case 'STATE':
        if (staged) throw new WireError('BAD_ORDER', offset, 'a second guest state');
        if (socketBlob && !socketBlob.complete) throw new WireError('BAD_ORDER', offset, 'STATE inside SOCKETS');
        if (!state) trace?.mark('STATE arriving');
        state ??= new ChunkAssembler('STATE', msg.totalBytes);
        state.add(msg.offset, msg.data, offset, msg.totalBytes);
        if (state.complete) {
          // The whole state is in (the source sends it right after its pause, ahead of the last
          // pages): check it and let the waiting worker set up all but memory meanwhile.
          const guestState = decodeGuestState(state.result());
          trace?.mark('state decoded');
          checkState(guestState, c.setup, mem);
          stateMemoryBytes = guestState.memory.bytes;
          staged = (await c.preparing).stageRestore(guestState, { preopens: c.preopens, stdio: c.stdio, ...(got.sockets ? { sockets: got.sockets.adopted } : {}) });
          trace?.mark('state staged');
        }
        continue;
      case 'PING':
        // The source pauses its guest only after this barrier's PONG: the module must be
        // instrumented and the guest's thread waiting before then, so that no instrumentation
        // (seconds to minutes for a big module) ever falls between the pause and the resume.
        if (!prepared) {
          await c.preparing;
          prepared = true;
          incoming.rehearsePlacement();
          c.phases.note('guest prepared (worker waiting for the state)');
        }
        await c.link.urgentJoined(bulk.peer);
        // The source's barrier before its pause: everything before this frame is placed. The
        // first one ends the stream of the precopy passes: its rate, and the round trip this
        // side's TCP estimated meanwhile, size both ends' buffers for the postcopy stream
        // (session/bulk-buffers.ts; this side decides, since the source's own estimate on loopback
        // counts the time a busy receiver takes to acknowledge).
        if (postcopyBuffer === 0) {
          const rcvRttUs = bulk.pathInfo()?.rcvRttUs ?? 0;
          // With native precopy the pages came on the data plane: its bytes are the stream's too.
          const streamed = bulk.bytesReceived + (c.nativePrecopy?.read().bytesReceived ?? 0);
          const rate = (streamed / Math.max(1, performance.now() - streamStart)) * 1000;
          postcopyBuffer = postcopyBufferBytes(rate, rcvRttUs);
          c.phases.note(`switchover (path: ${(rate / 1e6).toFixed(1)} MB/s, rtt ${rcvRttUs} us: postcopy buffers ${postcopyBuffer} bytes)`);
        }
        // After the memory stream (not after the small DISCARD rounds), collect garbage first:
        // the downtime follows within milliseconds (see session/heap.ts).
        if (bulk.bytesReceived - collectedAt > GC_BEFORE_PONG_BYTES) {
          collectGarbageNow();
          collectedAt = bulk.bytesReceived;
        }
        await bulk.sendMessage({ type: 'PONG', nonce: msg.nonce });
        c.phases.note('pause barrier answered');
        // The source pauses its guest now; but the barrier after SOCKETS is inside the downtime
        // already, so the trace begun at the pause goes on.
        if (!got.sockets || !trace) trace = new SwitchoverTrace('destination');
        // Until RUNNING is out this thread runs ahead of normal threads (see the source's pause).
        c.downtimePriority.raise();
        continue;
      case 'COMMIT':
        break;
      default:
        throw new WireError('BAD_ORDER', offset, `unexpected ${msg.type} before COMMIT`);
    }
    break;
  }
  trace ??= new SwitchoverTrace('destination');
  trace.mark('COMMIT');
  if (nativeOpen) {
    // The source closes its native precopy stream before its pause (postcopy), or after the last
    // pages it sends there inside the downtime (stop-and-copy): either way every page it sent is
    // placed once the thread has answered CLOSE.
    await c.nativePrecopy!.closed();
    trace.mark('native precopy stream closed');
    c.phases.note('switchover (native precopy stream closed)');
  }
  if (!staged) throw new WireError('BAD_ORDER', bulk.bytesReceived, 'COMMIT without a (whole) guest state');
  if (mem.sizeBytes !== stateMemoryBytes) throw new MigrationError('protocol', `the memory grew to ${mem.sizeBytes} bytes after the guest state was sent`);
  return { staged, stateMemoryBytes, trace, postcopyBuffer, sockets: got.sockets };
}

function checkState(state: GuestState, setup: MessageOf<'SETUP'>, mem: GuestMemory): void {
  if (state.module.hash !== setup.moduleHash) throw new MigrationError('protocol', 'the guest state belongs to another module than the one announced');
  if (state.memory.bytes !== mem.sizeBytes) {
    throw new MigrationError('protocol', `the guest state says ${state.memory.bytes} bytes of memory, the stream built ${mem.sizeBytes}`);
  }
}
