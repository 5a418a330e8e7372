// Guest clocks. Monotonic and cputime clocks are host clocks plus an offset, so that after a restore on
// another host they continue from the value captured and never go backwards. Realtime is the host's wall
// clock: wall time is not the guest's to keep.
import { CLOCK } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';

function hostMonotonicNs(): bigint {
  return process.hrtime.bigint();
}

/** Process CPU time (Node exposes no per-thread figure; thread cputime uses the same clock). */
function hostCputimeNs(): bigint {
  const u = process.cpuUsage();
  return BigInt(u.user + u.system) * 1000n;
}

function hostRealtimeNs(): bigint {
  // timeOrigin + now() keeps sub-millisecond resolution (a double at ~1.7e18 ns is good to ~256 ns).
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
}

export class GuestClocks {
  private monotonicOffset = 0n;
  private cputimeOffset = 0n;

  /** Starts the guest clocks at the given values (from a capture) instead of the host's. */
  continueFrom(monotonicNs: bigint, cputimeNs: bigint): void {
    this.monotonicOffset = monotonicNs - hostMonotonicNs();
    this.cputimeOffset = cputimeNs - hostCputimeNs();
  }

  monotonicNs(): bigint {
    return hostMonotonicNs() + this.monotonicOffset;
  }

  cputimeNs(): bigint {
    return hostCputimeNs() + this.cputimeOffset;
  }

  realtimeNs(): bigint {
    return hostRealtimeNs();
  }

  now(id: number): bigint {
    switch (id) {
      case CLOCK.REALTIME: return this.realtimeNs();
      case CLOCK.MONOTONIC: return this.monotonicNs();
      case CLOCK.PROCESS_CPUTIME:
      case CLOCK.THREAD_CPUTIME: return this.cputimeNs();
      default: throw new WasiErrno(ERRNO.INVAL, `unknown clock ${id}`);
    }
  }

  resolution(id: number): bigint {
    switch (id) {
      case CLOCK.MONOTONIC: return 1n;
      case CLOCK.REALTIME: return 1000n;
      case CLOCK.PROCESS_CPUTIME:
      case CLOCK.THREAD_CPUTIME: return 1000n;
      default: throw new WasiErrno(ERRNO.INVAL, `unknown clock ${id}`);
    }
  }
}
