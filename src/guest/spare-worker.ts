// The threads `ferry run` and `ferry restore` start ahead (src/sys/spare-threads.ts keeps them): a
// guest's worker, adopted by Guest.spawn, and a lazy restore's fault server, adopted by
// FaultServer.start. A `ferry run` spends about as long loading its own modules and reading the
// module cache as a worker takes to boot, so started first thing the worker is ready when wanted.
// Kept tiny on purpose: bin/ferry.js imports it before anything else of the runtime.
import { statSync } from 'node:fs';
import type { Worker } from 'node:worker_threads';
import { spareThreadId, startSpare, takeSpare } from '../sys/spare-threads.js';
import { v8FlagsApplied } from './tiering.js';

/**
 * The guest thread's stack (Node's default for a worker is 4 MiB). A resumed split function
 * (loop-resume.ts) runs its F$resume copy, whose TurboFan frame is several KB, for the rest of its
 * activation: 4 MiB held ~700-1000 levels of recursion through one. The stack is reserved, not
 * committed: only the pages a deep recursion touches cost memory.
 */
export const GUEST_STACK_MB = 64;

/** The threads that can be started ahead: the guest's, and a lazy restore's fault server. */
export type SpareKind = 'guest' | 'fault';

const SCRIPTS: Record<SpareKind, { url: () => URL; stackSizeMb?: number }> = {
  guest: { url: guestWorkerScript, stackSizeMb: GUEST_STACK_MB },
  fault: { url: () => new URL('../memory/fault-worker.js', import.meta.url) },
};

const PLAIN_GUEST_SCRIPT = new URL('./worker.js', import.meta.url);
const BUNDLED_GUEST_SCRIPT = new URL('./worker.bundle.cjs', import.meta.url);
const GUEST_BOOT_SCRIPT = new URL('./worker.boot.cjs', import.meta.url);

/**
 * In a guest thread's workerData: Ferry's V8 flags were set when it started, so its boot script
 * (scripts/bundle.mjs writes it) loads the bundle with the code cache made under them.
 */
export const FLAGGED_CODE_CACHE_HINT = 'flaggedCodeCache';

/** The hints for a guest thread started now (its workerData, beside its init or the spare mark). */
export function guestThreadHints(): Record<string, boolean> {
  return v8FlagsApplied() ? { [FLAGGED_CODE_CACHE_HINT]: true } : {};
}
let guestScript: URL | null = null;

/**
 * The script a guest's thread runs: the one-file CommonJS bundle of worker.js and its ~30 modules
 * that `npm run build` makes (scripts/bundle.mjs), which a new thread loads ≈ 35 ms sooner than
 * the modules one by one, started through its boot script, which loads it with its code cache; or
 * worker.js itself where there is no bundle, or the bundle is older than worker.js (tsc rewrites
 * every output, so a bundle tsc ran after may be stale: never used). FERRY_WORKER_BUNDLE=0 always
 * takes worker.js.
 */
export function guestWorkerScript(): URL {
  guestScript ??= pickGuestScript();
  return guestScript;
}

function pickGuestScript(): URL {
  if (process.env['FERRY_WORKER_BUNDLE'] === '0') return PLAIN_GUEST_SCRIPT;
  // The bundle is started through its boot file, which loads it with its code cache (bin/code-cache.cjs).
  return bundleIfFresh(BUNDLED_GUEST_SCRIPT, PLAIN_GUEST_SCRIPT) === BUNDLED_GUEST_SCRIPT ? bundleIfFresh(GUEST_BOOT_SCRIPT, BUNDLED_GUEST_SCRIPT) : PLAIN_GUEST_SCRIPT;
}

/** `bundle` if it exists and is no older than `plain` (what it was made from), else `plain`. */
export function bundleIfFresh(bundle: URL, plain: URL): URL {
  try {
    return statSync(bundle).mtimeMs >= statSync(plain).mtimeMs ? bundle : plain;
  } catch {
    return plain; // no bundle: built by tsc alone
  }
}

/**
 * A spare guest thread started with this hint rehearses the WASI restore path while it waits for
 * its init (worker.ts), so that a restore adopting it skips that step. Only for spares booted with
 * time to spare (keepGuestThreadReady): the one `ferry run` starts is on its start's critical path.
 */
export const REHEARSE_HINT = 'rehearse';

/** Starts a spare worker of `kind` if none is waiting. Harmless if nothing ever takes it. */
export function startSpareWorker(kind: SpareKind = 'guest', rehearse = false): void {
  const hints = kind === 'guest' ? guestThreadHints() : {};
  startSpare(kind, SCRIPTS[kind].url(), SCRIPTS[kind].stackSizeMb, rehearse ? { ...hints, [REHEARSE_HINT]: true } : hints);
}

/** The spare worker of `kind`, now owned by the caller (who must post it its init), or null. */
export function takeSpareWorker(kind: SpareKind = 'guest'): Worker | null {
  return takeSpare(kind);
}

let keepReady = false;

/**
 * A process that starts or restores guests one after another (a host of sandboxes, a restore
 * service) can keep one guest thread booted ahead: each guest then adopts a thread that has
 * already loaded Node and the runtime (about 0.1 s of the ~0.13 s an unprepared restore takes
 * here) and the next one boots while the guest runs. It costs one idle thread (about 17 MB of
 * resident memory here) for as long as it is on. Off by default: `ferry run` and `ferry restore`
 * run one guest per process and start their one spare themselves (bin/ferry.js). Turned off, it
 * ends the thread it kept waiting; the promise says whether there was one, once it has ended.
 */
export async function keepGuestThreadReady(on = true): Promise<boolean> {
  const was = keepReady;
  keepReady = on;
  if (on) startSpareWorker('guest', true);
  const kept = !on && was ? takeSpare('guest') : null;
  if (kept) await kept.terminate();
  return kept !== null;
}

/** The thread id of the guest thread booted ahead and waiting (the next guest adopts it), or null. */
export function waitingGuestThread(): number | null {
  return spareThreadId('guest');
}

/**
 * Called once a guest runs: boots the next spare if keepGuestThreadReady() is on (and none is
 * waiting). Not earlier: the boot would compete with that guest's launch and restore.
 */
export function refillGuestThread(): void {
  if (keepReady) startSpareWorker('guest', true);
}
