// Has V8 compile the guest's big functions and resume copies (warm-exports.ts) on a thread of
// their own while the guest runs, so neither the guest thread nor the owner's event loop does.
//
// V8 compiles a Wasm function at its first call; on the guest thread that is a stretch without a
// safepoint check, which a pause waits for (warm-exports.ts has the figures). Tried before: every
// resume copy compiled on the guest thread before the start (250-740 ms at every SQLite start),
// and on the owner's thread once the guest ran (one big copy held the owner's event loop, and with
// it the owner's view of the next pause, for up to 0.5 s). So a short-lived worker
// (warm-up-worker.ts) calls each `ferry_warm_<k>` export, biggest function first, on a
// throwaway instance; the code lands in the module the guest's instance shares. It starts with the
// guest's worker where a pause is sure to come (a destination or a restore warms while pages
// arrive), and the guest's start does not wait for it.
//
// A fresh start defers it (`deferWarmUp`): until the guest is first asked to pause, or has run
// WARM_DELAY_MS, nothing is warmed. The warm-up is a cost on the second core (a Node environment
// of its own, ~50 ms, then the compiles: cmark ~40 ms, SQLite ~0.85 s) taken when TurboFan wants
// that core for the guest's hot functions, and it buys nothing but pause latency. A program that
// ends before anyone pauses it pays nothing (cmark's `ferry run`: 345 → 305 ms, node:wasi 220);
// until the warm-up, a big function compiles at its first call on the guest thread, as under
// node:wasi, and a pause in that window may wait for one Liftoff compile (a few ms).
// FERRY_WARM=0 turns it off; FERRY_WARM_DEBUG=1 prints each compile's time.
import { Worker } from 'node:worker_threads';
import { WARM_EXPORT_PREFIX } from './instrument-meta.js';

export interface WarmUp {
  /** Ends the warm-up thread if it still runs (the guest ended), or keeps a deferred one from starting. */
  cancel(): void;
  /** Resolves with the number of functions compiled: all of them, or 0 when cancelled, failed, or not needed (nothing to warm, turned off, or warmed before). */
  readonly done: Promise<number>;
}

/**
 * Modules whose warm-up finished: their compiled code serves every later instance made from the
 * same module object (compiled-modules.ts keeps it for the next guest), which needs no warm-up.
 */
const warmed = new WeakSet<WebAssembly.Module>();

/** No thread started: the guest compiles what it calls, or finds it compiled. */
const NO_WARM_UP: WarmUp = { cancel: () => undefined, done: Promise.resolve(0) };

/** How long a fresh guest runs before its warm-up starts unasked. */
export const WARM_DELAY_MS = 500;

/** A warm-up that starts later: at `now()` (a pause is coming), after `delayMs`, or never (cancelled first). */
export interface DeferredWarmUp extends WarmUp {
  /** Starts it now if it has not started (idempotent). */
  now(): void;
}

export function deferWarmUp(module: WebAssembly.Module, initialPages: number, delayMs = WARM_DELAY_MS): DeferredWarmUp {
  let started: WarmUp | null = null;
  let cancelled = false;
  let resolveDone!: (n: number) => void;
  const done = new Promise<number>((r) => (resolveDone = r));
  const now = (): void => {
    if (started || cancelled) return;
    clearTimeout(timer);
    started = startWarmUp(module, initialPages);
    void started.done.then(resolveDone);
  };
  const timer = setTimeout(now, delayMs);
  timer.unref();
  return {
    now,
    cancel: () => {
      cancelled = true;
      clearTimeout(timer);
      if (started) started.cancel();
      else resolveDone(0);
    },
    done,
  };
}

/** `initialPages`: the module's declared minimum memory (InstrumentedMeta.memory.initialPages). */
export function startWarmUp(module: WebAssembly.Module, initialPages: number): WarmUp {
  if (warmed.has(module)) return NO_WARM_UP;
  const names = WebAssembly.Module.exports(module).filter((e) => e.kind === 'function' && e.name.startsWith(WARM_EXPORT_PREFIX)).map((e) => e.name);
  if (names.length === 0 || process.env['FERRY_WARM'] === '0') return NO_WARM_UP;
  const debug = Boolean(process.env['FERRY_WARM_DEBUG']);
  let worker: Worker;
  try {
    worker = new Worker(new URL('./warm-up-worker.js', import.meta.url), { workerData: { module, initialPages, names, debug }, stdout: false, stderr: false });
  } catch (err) {
    if (debug) process.stderr.write(`warm: no warm-up thread: ${(err as Error).message}\n`);
    return NO_WARM_UP; // the guest compiles at first call, as before
  }
  worker.unref(); // never what keeps a process alive
  const done = new Promise<number>((resolve) => {
    let called = 0;
    worker.once('message', (n: number) => (called = n));
    // Only a cost is at stake: on any failure the guest compiles what is left itself, as before.
    worker.once('error', (err) => {
      if (debug) process.stderr.write(`warm: warm-up failed: ${err.message}\n`);
    });
    worker.once('exit', () => resolve(called));
  });
  void done.then((n) => n > 0 && warmed.add(module));
  return { cancel: () => void worker.terminate(), done };
}
