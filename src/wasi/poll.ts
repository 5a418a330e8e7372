// poll_oneoff: clock subscriptions on the guest's monotonic clock (a re-entry after a pause keeps its
// deadline), sockets asked with one poll() beside the pause wake fd, pipes and stdin through the
// embedder's waitReadable hook, regular files always ready.
import * as fs from 'node:fs';
import { CLOCK, EVENTRWFLAGS_HANGUP, EVENTTYPE, SIZE_EVENT, SIZE_SUBSCRIPTION, SUBCLOCKFLAGS_ABSTIME } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';
import type { Descriptor } from './fd-table.js';
import { WAIT_SLICE_MS, type WasiContext } from './context.js';
import { waitFds as waitOnSockets } from './socket-ops.js';
import { poll, POLLERR, POLLHUP, POLLIN, POLLOUT } from '../sys/fd.js';

export function pollOneoff(ctx: WasiContext, inPtr: number, outPtr: number, nsubs: number, neventsPtr: number): number {
  if (nsubs === 0) throw new WasiErrno(ERRNO.INVAL);
  const m = ctx.m();
  const raw = m.copyOut(inPtr, nsubs * SIZE_SUBSCRIPTION);
  const key = Buffer.from(raw).toString('base64');
  const v = new DataView(raw.buffer);
  const now = ctx.clocks.monotonicNs();
  // A re-entry after a pause keeps the deadline it had: a relative sleep does not start over.
  const resumed = ctx.pendingPoll !== null && ctx.pendingPoll.subscriptions === key ? ctx.pendingPoll.deadlineNs : null;
  interface Sub { userdata: bigint; type: number; fd: number; deadline: bigint }
  const subs: Sub[] = [];
  for (let i = 0; i < nsubs; i++) {
    const o = i * SIZE_SUBSCRIPTION;
    const userdata = v.getBigUint64(o, true);
    const type = v.getUint8(o + 8);
    if (type === EVENTTYPE.CLOCK) {
      const id = v.getUint32(o + 16, true);
      const timeout = v.getBigUint64(o + 24, true);
      const abs = (v.getUint16(o + 40, true) & SUBCLOCKFLAGS_ABSTIME) !== 0;
      // Every deadline is kept on the guest monotonic clock (cputime clocks are treated as monotonic).
      let deadline: bigint;
      if (!abs) deadline = now + timeout;
      else if (id === CLOCK.REALTIME) deadline = now + (timeout - ctx.clocks.realtimeNs());
      else if (id === CLOCK.MONOTONIC) deadline = timeout;
      else deadline = now + (timeout - ctx.clocks.now(id));
      subs.push({ userdata, type, fd: -1, deadline });
    } else if (type === EVENTTYPE.FD_READ || type === EVENTTYPE.FD_WRITE) {
      subs.push({ userdata, type, fd: v.getUint32(o + 16, true), deadline: 0n });
    } else throw new WasiErrno(ERRNO.INVAL);
  }
  const clockDeadlines = subs.filter((s) => s.type === EVENTTYPE.CLOCK).map((s) => s.deadline);
  let earliest: bigint | null = clockDeadlines.length === 0 ? null : clockDeadlines.reduce((a, b) => (a < b ? a : b));
  if (resumed !== null && earliest !== null) {
    // Shift every clock subscription back by the time already waited before the pause.
    const shift = earliest - resumed;
    for (const s of subs) if (s.type === EVENTTYPE.CLOCK) s.deadline -= shift;
    earliest = resumed;
  }

  for (;;) {
    const events: { sub: Sub; error: number; nbytes: bigint; hangup: boolean }[] = [];
    const t = ctx.clocks.monotonicNs();
    // Sockets are asked with one poll() for all of them; pipes and stdin through the host's hook.
    const waitSubs: Sub[] = [];
    const waitFds: number[] = [];
    const waitEvents: number[] = [];
    let waitPipe: Descriptor | null = null;
    for (const s of subs) {
      if (s.type === EVENTTYPE.CLOCK) {
        if (t >= s.deadline) events.push({ sub: s, error: 0, nbytes: 0n, hangup: false });
        continue;
      }
      let d: Descriptor;
      try {
        d = ctx.table.get(s.fd);
      } catch {
        events.push({ sub: s, error: ERRNO.BADF, nbytes: 0n, hangup: false });
        continue;
      }
      if (d.socket !== undefined) {
        if (d.hostFd < 0) events.push({ sub: s, error: 0, nbytes: 0n, hangup: true }); // reset by a restore
        else if (s.type === EVENTTYPE.FD_READ && (d.pendingAccepts?.length ?? 0) > 0) events.push({ sub: s, error: 0, nbytes: 1n, hangup: false });
        else {
          waitSubs.push(s);
          waitFds.push(d.hostFd);
          waitEvents.push(s.type === EVENTTYPE.FD_READ ? POLLIN : POLLOUT);
        }
      } else if (s.type === EVENTTYPE.FD_WRITE) events.push({ sub: s, error: 0, nbytes: 0n, hangup: false });
      else if (!d.stream && d.root !== null) {
        const size = d.kind === 'file' ? BigInt(fs.fstatSync(d.hostFd).size) - BigInt(d.offset) : 0n;
        events.push({ sub: s, error: 0, nbytes: size > 0n ? size : 0n, hangup: false });
      } else if (ctx.readable(d, 0)) events.push({ sub: s, error: 0, nbytes: 1n, hangup: false });
      else waitPipe ??= d;
    }
    if (waitFds.length > 0) {
      const rev = poll(waitFds, waitEvents, 0);
      rev.forEach((r, i) => {
        if ((r & (waitEvents[i]! | POLLHUP | POLLERR)) === 0) return;
        events.push({ sub: waitSubs[i]!, error: 0, nbytes: r & waitEvents[i]! ? 1n : 0n, hangup: (r & POLLHUP) !== 0 });
      });
    }
    if (events.length > 0) {
      ctx.pendingPoll = null;
      events.forEach((e, i) => {
        const at = outPtr + i * SIZE_EVENT;
        m.zero(at, SIZE_EVENT);
        m.setU64(at, e.sub.userdata);
        m.setU16(at + 8, e.error);
        m.setU8(at + 10, e.sub.type);
        m.setU64(at + 16, e.nbytes);
        if (e.hangup) m.setU16(at + 24, EVENTRWFLAGS_HANGUP);
      });
      m.setU32(neventsPtr, events.length);
      return 0;
    }
    if (ctx.hooks.pauseRequested()) {
      if (earliest !== null) ctx.pendingPoll = { subscriptions: key, deadlineNs: earliest };
      ctx.hooks.unwind();
      return 0;
    }
    const remainingMs = earliest === null ? -1 : Math.max(0, Number(earliest - t) / 1e6);
    const slice = Math.min(WAIT_SLICE_MS, remainingMs < 0 ? WAIT_SLICE_MS : remainingMs);
    if (waitFds.length > 0) {
      // With a pipe in the set as well, wait on the sockets for one slice only, then look at the pipe again.
      const sockMs = waitPipe !== null ? Math.ceil(slice) : remainingMs < 0 ? -1 : Math.ceil(remainingMs);
      waitOnSockets(ctx, waitFds, waitEvents, sockMs);
    } else if (waitPipe !== null) ctx.readable(waitPipe, Math.ceil(slice));
    else ctx.sleepMs(slice);
  }
}
