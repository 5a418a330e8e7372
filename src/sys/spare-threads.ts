// Worker threads started before the work they are for exists, one per kind, and the other end: a
// worker script's init, from workerData or, for a spare, its first message. Starting a worker costs
// ~0.1 s (a Node environment of its own, then its script and what that imports); started first
// thing, a spare boots on another core while its owner loads. Which scripts are started ahead is
// the guest runtime's choice (src/guest/spare-worker.ts); this module only keeps them.
// Kept tiny on purpose: it is imported before anything else of the runtime.
import { Worker, parentPort, workerData } from 'node:worker_threads';

/** workerData of a spare: the worker waits for its init as its first message. */
export const SPARE_WORKER_DATA = { spare: true } as const;

// One registry per process, kept on globalThis: bin/ferry.js starts the spares with its copy of this
// module, and the CLI's bundle (scripts/bundle.mjs), which has a copy of its own, takes them.
const REGISTRY = Symbol.for('ferry.spare-threads');
const spares: Map<string, Worker> = ((globalThis as Record<symbol, unknown>)[REGISTRY] as Map<string, Worker> | undefined) ??
  ((globalThis as Record<symbol, unknown>)[REGISTRY] = new Map<string, Worker>());

/**
 * Starts a spare worker of `kind` running `script`, if none of that kind is waiting. `hints` go
 * into its workerData beside the spare mark: what the script may do while it waits for its init.
 */
export function startSpare(kind: string, script: URL, stackSizeMb?: number, hints: Record<string, boolean> = {}): void {
  if (spares.has(kind)) return;
  const w = new Worker(script, { workerData: { ...hints, ...SPARE_WORKER_DATA }, ...(stackSizeMb ? { resourceLimits: { stackSizeMb } } : {}) });
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

/** The thread id of the spare worker of `kind` waiting to be taken, or null. */
export function spareThreadId(kind: string): number | null {
  return spares.get(kind)?.threadId ?? null;
}

/** The spare worker of `kind`, now owned by the caller (who must post it its init), or null. */
export function takeSpare(kind: string): Worker | null {
  const w = spares.get(kind) ?? null;
  spares.delete(kind);
  if (w) {
    w.removeAllListeners('error');
    w.removeAllListeners('exit');
    w.ref();
  }
  return w;
}

/** In a spare's script: whether its starter set `hint` (startSpare's hints). */
export function spareHint(hint: string): boolean {
  return workerDataField(hint) === true;
}

/** A field of this worker's workerData, when that is an object. */
function workerDataField(name: string): unknown {
  return typeof workerData === 'object' && workerData !== null ? (workerData as Record<string, unknown>)[name] : undefined;
}

/** In a worker script: its init, from workerData, or as the first message when it was started as a spare. */
export function workerInit<T>(): Promise<T> | T {
  if (workerDataField('spare') !== SPARE_WORKER_DATA.spare) return workerData as T;
  return new Promise((resolve) => parentPort!.once('message', (m: T) => resolve(m)));
}
