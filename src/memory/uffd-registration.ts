// Who holds the userfaultfd registration of a guest memory. The kernel lets one userfaultfd
// register a range (a second gets EBUSY, naming nobody); the dirty tracker (write-protect) and the
// fault server (missing pages) both need the whole reservation, so at most one of them may run on
// a memory at a time. This module is the one place that knows, and its refusal says who holds it.
// Ferry registers from the main thread only; the table is that thread's.
import type { Userfaultfd } from '../sys/uffd.js';
import type { GuestMemory } from './guest-memory.js';

export class RegistrationBusyError extends Error {
  readonly code = 'EBUSY';
  constructor(readonly holder: string, wanted: string, base: number) {
    super(`guest memory at 0x${base.toString(16)} is already registered with userfaultfd by ${holder}; ${wanted} cannot register it too (stop the ${holder} first)`);
    this.name = 'RegistrationBusyError';
  }
}

const holders = new Map<number, { end: number; holder: string }>();

/** A held registration: release() unregisters the range and frees it for another holder. */
export interface Registration {
  release(): void;
}

/**
 * Registers the memory's whole reservation on `uffd` in `mode` for `holder` (a name for errors),
 * after checking that no other holder has it (RegistrationBusyError).
 */
export function registerReservation(uffd: Userfaultfd, mem: GuestMemory, mode: number, holder: string): Registration {
  const base = mem.base;
  const end = base + mem.maxBytes;
  for (const [b, h] of holders) if (b < end && base < h.end) throw new RegistrationBusyError(h.holder, holder, base);
  uffd.register(base, mem.maxBytes, mode);
  holders.set(base, { end, holder });
  let held = true;
  return {
    release() {
      if (!held) return;
      held = false;
      holders.delete(base);
      uffd.unregister(base, mem.maxBytes);
    },
  };
}
