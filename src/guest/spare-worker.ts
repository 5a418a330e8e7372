// Worker threads started before the work they are for exists. Starting a worker costs ~0.1 s (a
// Node environment of its own, then its script and what that imports); a `ferry run` or `ferry
// restore` spends about as long loading its own modules and reading the module cache. Started
// first, a spare boots on the other core meanwhile, and its owner adopts it instead of starting one
// after all that: the guest's thread (worker.js, adopted by Guest.spawn) and, for a lazy restore,
// the fault server's thread (../memory/fault-worker.js, adopted by FaultServer.start). An adopted
// spare gets its init as its first message (see `workerInit`).
// This module is kept tiny on purpose: it is imported before anything else of the runtime.
import { Worker, parentPort, workerData } from 'node:worker_threads';

/**
 * The guest thread's stack (Node's default for a worker is 4 MiB). A resumed split function
 * (loop-resume.ts) runs its F$resume copy, whose TurboFan frame is several KB, for the rest of its
 * activation: 4 MiB held ~700-1000 levels of recursion through one. The stack is reserved, not
 * committed: only the pages a deep recursion touches cost memory.
 */
export const GUEST_STACK_MB = 64;

/** workerData of a spare: the worker waits for its init as its first message. */
export const SPARE_WORKER_DATA = { spare: true } as const;

/** The threads that can be started ahead: the guest's, and a lazy restore's fault server. */
export type SpareKind = 'guest' | 'fault';

const SCRIPTS: Record<SpareKind, { url: URL; stackSizeMb?: number }> = {
  guest: { url: new URL('./worker.js', import.meta.url), stackSizeMb: GUEST_STACK_MB },
  fault: { url: new URL('../memory/fault-worker.js', import.meta.url) },
};

const spares = new Map<SpareKind, Worker>();

/** Starts a spare worker of `kind` if none is waiting. Harmless if nothing ever takes it. */
export function startSpareWorker(kind: SpareKind = 'guest'): void {
  if (spares.has(kind)) return;
  const { url, stackSizeMb } = SCRIPTS[kind];
  const w = new Worker(url, { workerData: SPARE_WORKER_DATA, ...(stackSizeMb ? { resourceLimits: { stackSizeMb } } : {}) });
  // Unowned until adopted: it must not keep the process alive, and a failure to start is only
  // noticed by the owner that would have used it (it then starts a worker of its own).
  w.unref();
  const drop = () => {
    if (spares.get(kind) === w) spares.delete(kind);
  };
  w.once('error', drop);
  w.once('exit', drop);
  spares.set(kind, w);
}

/** The spare worker of `kind`, now owned by the caller (who must post it its init), or null. */
export function takeSpareWorker(kind: SpareKind = 'guest'): Worker | null {
  const w = spares.get(kind) ?? null;
  spares.delete(kind);
  if (w) {
    w.removeAllListeners('error');
    w.removeAllListeners('exit');
    w.ref();
  }
  return w;
}

/** In a worker script: its init, from workerData, or as the first message when it was started as a spare. */
export function workerInit<T>(): Promise<T> | T {
  const spare = typeof workerData === 'object' && workerData !== null && (workerData as typeof SPARE_WORKER_DATA).spare === SPARE_WORKER_DATA.spare;
  if (!spare) return workerData as T;
  return new Promise((resolve) => parentPort!.once('message', (m: T) => resolve(m)));
}
