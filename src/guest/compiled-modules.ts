// The compiled form of the instrumented modules this process started guests from, kept for the
// next guest of the same module. A process that starts or restores guest after guest (with
// keepGuestThreadReady, or not) then neither compiles the module again on its main thread nor
// boots a warm-up thread for it: the code V8 compiled for the first guest's big functions
// (warm-up.ts) lives in this module object and serves every instance made from it.
// WebAssembly.Module is immutable and shared between threads, so guests running at once may
// share it too.
import type { CachedModule } from './module-cache.js';
import { applyTieringBudget } from './tiering.js';

/** At most this many modules stay compiled (least recently started first out): their code stays in memory. */
export const KEPT_MODULES = 4;

const kept = new Map<string, WebAssembly.Module>();

/**
 * What fixes an instrumented binary: its source (the cache entry) and the instrumentation's
 * version and settings, as module-cache.ts checks them (another process may re-instrument an
 * entry with FERRY_LOOP_RESUME or FERRY_ESCAPE set otherwise).
 */
function keyOf(mod: CachedModule): string {
  const m = mod.meta;
  return `${mod.entryDir}|${m.instrumentationVersion}|${m.loopResume}|${m.escape}`;
}

/** The compiled module of `mod`: the one kept from an earlier guest of the same key, or compiled now and kept. */
export function compiledModule(mod: CachedModule): WebAssembly.Module {
  const key = keyOf(mod);
  applyTieringBudget();
  const module = kept.get(key) ?? new WebAssembly.Module(mod.binary as Uint8Array<ArrayBuffer>);
  kept.delete(key); // (re)inserted at the end: most recently used
  kept.set(key, module);
  if (kept.size > KEPT_MODULES) kept.delete(kept.keys().next().value!);
  return module;
}

/** The module kept for `mod`, without compiling one (tests). */
export function keptModule(mod: CachedModule): WebAssembly.Module | undefined {
  return kept.get(keyOf(mod));
}
