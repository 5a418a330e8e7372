// The compiled form of the instrumented modules this process started guests from, kept for the
// next guest of the same module. A host that starts or restores guest after guest
// (keepGuestThreadReady) then neither compiles the module again on its main thread nor boots a
// warm-up thread for it: the code V8 compiled for the first guest's big functions (warm-up.ts)
// lives in this module object and serves every instance made from it. WebAssembly.Module is
// immutable and shared between threads, so guests running at once may share it too.
import type { CachedModule } from './module-cache.js';

/** At most this many modules stay compiled (least recently started first out): their code stays in memory. */
export const KEPT_MODULES = 4;

const kept = new Map<string, WebAssembly.Module>();

/** The compiled module of `mod` (by its cache entry): the one kept from an earlier guest, or compiled now and kept. */
export function compiledModule(mod: CachedModule): WebAssembly.Module {
  const key = `${mod.entryDir}:${mod.binary.length}`;
  const found = kept.get(key);
  if (found) {
    kept.delete(key); // to the end: most recently used
    kept.set(key, found);
    return found;
  }
  const module = new WebAssembly.Module(mod.binary as Uint8Array<ArrayBuffer>);
  kept.set(key, module);
  if (kept.size > KEPT_MODULES) kept.delete(kept.keys().next().value!);
  return module;
}
