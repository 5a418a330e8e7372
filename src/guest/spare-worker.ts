// The threads `ferry run` and `ferry restore` start ahead (src/sys/spare-threads.ts keeps them): a
// guest's worker, adopted by Guest.spawn, and a lazy restore's fault server, adopted by
// FaultServer.start. A `ferry run` spends about as long loading its own modules and reading the
// module cache as a worker takes to boot, so started first thing the worker is ready when wanted.
// Kept tiny on purpose: bin/ferry.js imports it before anything else of the runtime.
import type { Worker } from 'node:worker_threads';
import { startSpare, takeSpare } from '../sys/spare-threads.js';

/**
 * The guest thread's stack (Node's default for a worker is 4 MiB). A resumed split function
 * (loop-resume.ts) runs its F$resume copy, whose TurboFan frame is several KB, for the rest of its
 * activation: 4 MiB held ~700-1000 levels of recursion through one. The stack is reserved, not
 * committed: only the pages a deep recursion touches cost memory.
 */
export const GUEST_STACK_MB = 64;

/** The threads that can be started ahead: the guest's, and a lazy restore's fault server. */
export type SpareKind = 'guest' | 'fault';

const SCRIPTS: Record<SpareKind, { url: URL; stackSizeMb?: number }> = {
  guest: { url: new URL('./worker.js', import.meta.url), stackSizeMb: GUEST_STACK_MB },
  fault: { url: new URL('../memory/fault-worker.js', import.meta.url) },
};

/** Starts a spare worker of `kind` if none is waiting. Harmless if nothing ever takes it. */
export function startSpareWorker(kind: SpareKind = 'guest'): void {
  startSpare(kind, SCRIPTS[kind].url, SCRIPTS[kind].stackSizeMb);
}

/** The spare worker of `kind`, now owned by the caller (who must post it its init), or null. */
export function takeSpareWorker(kind: SpareKind = 'guest'): Worker | null {
  return takeSpare(kind);
}
