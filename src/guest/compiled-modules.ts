// The compiled form of the instrumented modules this process started guests from, kept for the
// next guest of the same module. A host that starts or restores guest after guest
// (keepGuestThreadReady) then neither compiles the module again on its main thread nor boots a
// warm-up thread for it: the code V8 compiled for the first guest's big functions (warm-up.ts)
// lives in this module object and serves every instance made from it. WebAssembly.Module is
// immutable and shared between threads, so guests running at once may share it too.
import type { CachedModule } from './module-cache.js';

/** At most this many modules stay compiled (least recently started first out): their code stays in memory. */
export const KEPT_MODULES = 4;

/** By cache entry: the binary it was compiled from, and the module. */
const kept = new Map<string, { binary: Buffer; module: WebAssembly.Module }>();

/**
 * The compiled module of `mod`: the one kept from an earlier guest of the same cache entry and the
 * same instrumented bytes, or compiled now and kept. The bytes are compared, not assumed: another
 * process may re-instrument an entry with other settings (FERRY_LOOP_RESUME, FERRY_ESCAPE).
 */
export function compiledModule(mod: CachedModule): WebAssembly.Module {
  const binary = Buffer.from(mod.binary.buffer, mod.binary.byteOffset, mod.binary.byteLength);
  const found = kept.get(mod.entryDir);
  kept.delete(mod.entryDir); // back in below, at the end: most recently used
  if (found && found.binary.equals(binary)) {
    kept.set(mod.entryDir, found);
    return found.module;
  }
  const module = new WebAssembly.Module(mod.binary as Uint8Array<ArrayBuffer>);
  kept.set(mod.entryDir, { binary, module });
  if (kept.size > KEPT_MODULES) kept.delete(kept.keys().next().value!);
  return module;
}

/** The module kept for `mod`'s cache entry and bytes, without compiling one (tests). */
export function keptModule(mod: CachedModule): WebAssembly.Module | undefined {
  const found = kept.get(mod.entryDir);
  return found && found.binary.equals(Buffer.from(mod.binary.buffer, mod.binary.byteOffset, mod.binary.byteLength)) ? found.module : undefined;
}
