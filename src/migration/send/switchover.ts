// The live source's switchover: from the end of precopy to the commit. The stream is drained
// (PING barrier) with this side's garbage collected meanwhile; in postcopy the pages written
// since their last copy are DISCARDed in rounds while the guest still runs; then the downtime:
// pause at a safepoint, capture, and in one go the state, (postcopy) the runtime's pages and the
// last DISCARD, or (precopy) the last written pages, then COMMIT.
import type { Guest } from '../../guest/guest.js';
import { HOST_PAGE_SIZE } from '../../memory/guest-memory.js';
import type { DirtyTracker } from '../../memory/dirty-tracker.js';
import type { PageBitmap } from '../../memory/page-bitmap.js';
import { encodeGuestState, rehearseEncoding } from '../../state/guest-state.js';
import { withoutRuns } from '../../state/exec-state.js';
import type { DowntimePriority } from '../../sys/sched.js';
import { sendBlob, sendDiscard, sendDiscardRuns } from '../session/bulk-messages.js';
import { collectGarbageNow } from '../session/heap.js';
import { SwitchoverTrace, type PhaseLog } from '../session/phases.js';
import { MigrationError } from '../session/report.js';
import type { SourceLink } from './link.js';
import type { LiveMemoryProvider } from './live-memory.js';
import type { AnnouncedSize } from './memory-size.js';
import type { PageSender } from './page-sender.js';
import { OutgoingSockets } from './sockets.js';
import type { AddressMove } from '../../net/address-hooks.js';
import type { PrecopySender } from '../dataplane/precopy-plane.js';

/** Postcopy DISCARD rounds before the pause, at most; the rounds stop once one is this small. */
const DISCARD_ROUNDS = 4;
const SMALL_DISCARD_PAGES = 1024;

export interface SwitchoverContext {
  guest: Guest;
  link: SourceLink;
  sender: PageSender;
  tracker: DirtyTracker;
  pages: LiveMemoryProvider;
  size: AnnouncedSize;
  phases: PhaseLog;
  downtimePriority: DowntimePriority;
  maxBandwidth: number | undefined;
  /** The guest was paused by this migration (a failure before the commit resumes it). */
  notePaused: () => void;
  /** COMMIT has left: from now on this side never resumes the guest. */
  committed: () => void;
  /** The destination moves sockets (Feature.SOCKETS): freeze and send them, give up the address. */
  socketsMove: boolean;
  addressMove: AddressMove;
  /** The sockets are frozen: the owner thaws them on a failure before the commit. */
  onFrozen: (s: OutgoingSockets) => void;
  /**
   * Native precopy's stream, still open for a stop-and-copy: the last written pages go on it as one
   * more pass (the destination's JavaScript placement, never used in native passes, would run cold
   * inside the downtime), then CLOSE. Null: closed already (postcopy), or not native.
   */
  native: { sender: PrecopySender; pass: number } | null;
}

export interface Switched {
  /** When the guest was paused (performance.now()): the downtime starts there. */
  tPause: number;
  /** When the switchover's last frame (COMMIT) was handed to the connection: where QEMU ends its downtime. */
  tSent: number;
  trace: SwitchoverTrace;
  memoryBytes: number;
  pageCount: number;
  /** The pages sent with the state (postcopy) — the runtime reads them first. */
  runtimeRuns: Array<[number, number]>;
  /** The pages written since the last collection, found inside the downtime. */
  last: Array<[number, number]>;
}

/** `dirty`: the pages written since their last copy (postcopy adds every later round to it). */
export async function switchOver(c: SwitchoverContext, postcopy: boolean, dirty: PageBitmap): Promise<Switched> {
  const { guest, link, sender, tracker, size } = c;
  const bulk = link.bulk!;
  c.phases.enter('switchover');
  await link.urgentReady();
  // Wait until the destination has placed everything sent so far: what it still has to read
  // when the guest pauses would otherwise queue in front of the state and the commit, inside
  // the downtime.
  await sender.flush();
  // While the destination drains, collect this side's garbage: a mark-compact that V8 would
  // otherwise owe the stream's buffers must not fall inside the downtime (see session/heap.ts).
  const drained = link.drainBarrier();
  collectGarbageNow();
  // And compile the code of the downtime's steps: the state's encoding, the runtime pages' read
  // and every frame the switchover sends, all cold in a process whose pages went natively.
  rehearseEncoding();
  sender.rehearseRead();
  bulk.rehearseEncoding();
  await drained;
  c.phases.note('switchover (stream drained)');
  // Postcopy: tell the destination now, while the guest still runs, which pages it holds are
  // stale, so it drops them ahead of the pause. The guest keeps writing meanwhile, so repeat
  // with what it wrote during each round until a round is small: the last set is dropped
  // inside the downtime, and each round's set is what the guest writes in one round trip plus
  // the destination's time to drop the previous set.
  if (postcopy) {
    let round = dirty;
    for (let i = 1; ; i++) {
      await size.grow();
      await sendDiscard(bulk, round, size.bytes / HOST_PAGE_SIZE);
      await link.drainBarrier();
      if (i === DISCARD_ROUNDS || round.count() <= SMALL_DISCARD_PAGES) break;
      round = tracker.collect();
      dirty.union(round);
    }
  }

  // The last walk's thread starts now, to walk at the pause (its start kept out of the downtime).
  if (postcopy) tracker.armWalk();
  c.phases.note('switchover (pause)');
  // ---- downtime starts ----
  // The bandwidth cap is for the background stream: the few frames of the switchover go out
  // at once (paced, a 1 MB state at 8 MB/s alone would add 125 ms of downtime).
  bulk.setMaxBandwidth(undefined);
  c.native?.sender.setCapped(false); // the native stream's cap too: its last pass is inside the downtime
  // Through the downtime this thread runs ahead of every normal thread on the host (the other
  // side's included, when it is the same host): each of its steps is the guest's time stopped.
  c.downtimePriority.raise();
  const tPause = performance.now();
  const trace = new SwitchoverTrace('source');
  guest.pauseNow();
  c.notePaused();
  trace.mark('paused');
  // Postcopy's last look at the page tables starts now, on a thread of its own, and runs beside
  // the capture, the state's encoding and its sending below (before, it came after them).
  const walk = postcopy ? tracker.peekRunsAside() : null;
  const state = guest.capture();
  trace.mark('captured');
  const late = guest.movabilityProblems({ socketsMove: c.socketsMove });
  if (late.length > 0) throw new MigrationError('not-movable', `the guest cannot move: ${late.join('; ')}`);
  // The sockets: the address leaves first (a client's packet then finds no one at A and is
  // dropped, never answered with a reset), then every socket is frozen in repair mode. The
  // destination takes the address when their image arrives, to re-create them on it.
  let socketBytes: Buffer | null = null;
  if (c.socketsMove) {
    const hasSockets = Object.keys(guest.hostSockets()).length > 0;
    if (hasSockets || c.addressMove.addresses.length > 0) {
      const released = OutgoingSockets.releaseFirst(c.addressMove);
      c.onFrozen(released);
      trace.mark('address released');
      released.freeze(guest, state);
      socketBytes = released.bytes;
      trace.mark(() => `sockets frozen (${released.describe()})`);
    }
  }
  if (socketBytes) {
    // Ahead of the state (the staged guest adopts them with it), and answered before anything
    // else goes: the destination takes the address and re-creates the sockets when the blob is
    // whole, and either can fail there (no interface, a failing --on-acquire hook, a port in
    // use). The PING barrier makes that failure arrive here before COMMIT leaves, so it rolls
    // back like any other: one round trip more in the downtime, only for a guest with sockets.
    await sendBlob(bulk, 'SOCKETS', socketBytes);
    await link.drainBarrier();
    trace.mark('sockets re-created on the destination');
  }
  await size.grow();
  const memoryBytes = c.pages.mem.sizeBytes;
  const pageCount = c.pages.pageCount;
  const runtimeRuns = c.pages.runtimeRuns(state.exec);
  // The state goes first: the destination hands it to its waiting guest thread, which sets up
  // descriptors and globals while this side takes the last written pages (in postcopy from the
  // walk started at the pause; a walk of the page tables takes 0.45-0.9 ms per GiB here) and
  // sends the rest. Nothing here waits
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
    last = walk!.result();
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
    if (c.native) {
      const before = c.native.sender.read();
      await c.native.sender.sendPass(c.native.pass, dirty, pageCount, false);
      const after = c.native.sender.read();
      sender.counters.pagesSent += after.dataPages - before.dataPages + after.zeroPages - before.zeroPages;
      sender.counters.dataPages += after.dataPages - before.dataPages;
      sender.counters.zeroPages += after.zeroPages - before.zeroPages;
      // CLOSE, answered once the destination's thread has placed every page before it.
      await c.native.sender.close();
      trace.mark('last pages sent natively, precopy stream closed');
    } else await sender.sendSet(dirty, pageCount);
  }
  queue(sender.flush());
  queue(bulk.sendMessage({ type: 'COMMIT' }));
  trace.mark('commit queued');
  await Promise.all(queued);
  const tSent = performance.now();
  c.committed();
  trace.mark('committed');
  bulk.setMaxBandwidth(c.maxBandwidth);
  return { tPause, tSent, trace, memoryBytes, pageCount, runtimeRuns, last };
}
