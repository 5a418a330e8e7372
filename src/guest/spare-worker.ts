// A guest worker thread started ahead of its guest. Starting a worker costs ~0.1 s (a Node
// environment of its own, then worker.js and the WASI layer it imports); a `ferry run` spends about
// as long loading its own modules and reading the module cache. Started first, the worker boots
// on the other core meanwhile, and the Guest adopts it instead of starting one after all that
// (Guest.spawn sends it its WorkerInit as the first message; see worker.ts).
// This module is kept tiny on purpose: it is imported before anything else of the runtime.
import { Worker } from 'node:worker_threads';

/**
 * The guest thread's stack (Node's default for a worker is 4 MiB). A resumed split function
 * (loop-resume.ts) runs its F$resume copy, whose TurboFan frame is several KB, for the rest of its
 * activation: 4 MiB held ~700-1000 levels of recursion through one. The stack is reserved, not
 * committed: only the pages a deep recursion touches cost memory.
 */
export const GUEST_STACK_MB = 64;

/** workerData of a spare: the worker waits for its WorkerInit as its first message. */
export const SPARE_WORKER_DATA = { spare: true } as const;

let spare: Worker | null = null;

/** Starts a spare guest worker if none is waiting. Harmless if no guest ever takes it. */
export function startSpareWorker(): void {
  if (spare) return;
  const w = new Worker(new URL('./worker.js', import.meta.url), { workerData: SPARE_WORKER_DATA, resourceLimits: { stackSizeMb: GUEST_STACK_MB } });
  // Unowned until adopted: it must not keep the process alive, and a failure to start is only
  // logged by the Guest that would have used it (it then starts a worker of its own).
  w.unref();
  const drop = () => {
    if (spare === w) spare = null;
  };
  w.once('error', drop);
  w.once('exit', drop);
  spare = w;
}

/** The spare worker, now owned by the caller (who must send it its WorkerInit), or null. */
export function takeSpareWorker(): Worker | null {
  const w = spare;
  spare = null;
  if (w) {
    w.removeAllListeners('error');
    w.removeAllListeners('exit');
    w.ref();
  }
  return w;
}
