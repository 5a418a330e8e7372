// poll_oneoff: clock and fd subscriptions, waited for in slices a pause can interrupt. A poll cut
// short by a pause keeps its deadline (WasiContext.pendingPoll, captured with the state), so a
// relative sleep does not start over when the guest resumes, here or on another host.
import * as fs from 'node:fs';
import { CLOCK, EVENTTYPE, SIZE_EVENT, SIZE_SUBSCRIPTION, SUBCLOCKFLAGS_ABSTIME } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';
import type { Descriptor } from './fd-table.js';
import { WAIT_SLICE_MS } from './options.js';
import type { WasiContext } from './context.js';

export function pollOneoff(c: WasiContext, inPtr: number, outPtr: number, nsubs: number, neventsPtr: number): number {
  if (nsubs === 0) throw new WasiErrno(ERRNO.INVAL);
  const m = c.m();
  const raw = m.copyOut(inPtr, nsubs * SIZE_SUBSCRIPTION);
  const key = Buffer.from(raw).toString('base64');
  const v = new DataView(raw.buffer);
  const now = c.clocks.monotonicNs();
  // A re-entry after a pause keeps the deadline it had: a relative sleep does not start over.
  const resumed = c.pendingPoll !== null && c.pendingPoll.subscriptions === key ? c.pendingPoll.deadlineNs : null;
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
      else if (id === CLOCK.REALTIME) deadline = now + (timeout - c.clocks.realtimeNs());
      else if (id === CLOCK.MONOTONIC) deadline = timeout;
      else deadline = now + (timeout - c.clocks.now(id));
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
    const events: { sub: Sub; error: number; nbytes: bigint }[] = [];
    const t = c.clocks.monotonicNs();
    let waitFd: Descriptor | null = null;
    for (const s of subs) {
      if (s.type === EVENTTYPE.CLOCK) {
        if (t >= s.deadline) events.push({ sub: s, error: 0, nbytes: 0n });
        continue;
      }
      let d: Descriptor;
      try {
        d = c.table.get(s.fd);
      } catch {
        events.push({ sub: s, error: ERRNO.BADF, nbytes: 0n });
        continue;
      }
      if (s.type === EVENTTYPE.FD_WRITE) events.push({ sub: s, error: 0, nbytes: 0n });
      else if (!d.stream && d.root !== null) {
        const size = d.kind === 'file' ? BigInt(fs.fstatSync(d.hostFd).size) - BigInt(d.offset) : 0n;
        events.push({ sub: s, error: 0, nbytes: size > 0n ? size : 0n });
      } else if (c.readable(d, 0)) events.push({ sub: s, error: 0, nbytes: 1n });
      else waitFd ??= d;
    }
    if (events.length > 0) {
      c.pendingPoll = null;
      events.forEach((e, i) => {
        const at = outPtr + i * SIZE_EVENT;
        m.zero(at, SIZE_EVENT);
        m.setU64(at, e.sub.userdata);
        m.setU16(at + 8, e.error);
        m.setU8(at + 10, e.sub.type);
        m.setU64(at + 16, e.nbytes);
      });
      m.setU32(neventsPtr, events.length);
      return 0;
    }
    if (c.hooks.pauseRequested()) {
      if (earliest !== null) c.pendingPoll = { subscriptions: key, deadlineNs: earliest };
      c.hooks.unwind();
      return 0;
    }
    const remainingMs = earliest === null ? WAIT_SLICE_MS : Math.max(0, Number(earliest - t) / 1e6);
    const slice = Math.min(WAIT_SLICE_MS, remainingMs);
    if (waitFd !== null) c.readable(waitFd, Math.ceil(slice));
    else c.sleepMs(slice);
  }
}
