// The last transforming stage of instrumentation: Binaryen's -O2 pipeline, run in its three parts
// so that the copies of split functions (loop-resume.ts) can take a lighter middle part.
//
// A split function exists twice, or three times: its fast body, which runs whenever the guest runs;
// its resume copy, which runs only after a rewind (the rest of one activation); and, for a function
// that escapes, its escape wrapper, which runs only to suspend, unwind or rewind it. Most functions
// of a module with many small looping functions are split, so -O2's function passes ran over about
// twice the code plain Asyncify's do, and were most of a cold instrumentation (generated 2 MiB
// module: 8.7 of 14.9 s, against 6.2 s for the whole of `wasm-opt --asyncify -O2`).
//
// Only the functions Asyncify rewrote need the whole function pipeline: its output is bloated, and
// -O2 is what makes it small again. None of a split function's copies is Asyncify's. The fast body
// is the compiler's optimised code plus our checks, the resume copy the same with its steering, the
// escape wrapper a small Asyncify'd frame; they all get the passes that sink single-use locals,
// coalesce the rest (each local is a slot in the Liftoff frame a function first runs in) and
// remove what that leaves empty, and then the global passes (which re-optimise what they inline
// into or change). For the fast bodies this was measured before it was kept
// (INSTRUMENTATION_VERSION 19): the generated 2 MiB module's cold instrumentation 12.1 → 9.3 s
// (`wasm-opt --asyncify -O2` 6.6 s), the fast bodies' share 3.2 → 0.8 s; the real programs ran no
// slower, SQLite and bc a little faster (alternating runs: SQLite 1318-1518 → 1163-1333 ms, bc
// 1993-2168 → 1696-2013 ms, cmark and bzip2 unchanged). -O2's function passes add little to code
// an optimising compiler already made, and keep nothing our checks need.
// The global pass lists follow Binaryen's default pipeline (pass.cpp) for a module without GC; with
// every function taking the whole function pipeline they give output byte-identical to
// `optimize()` on compute, memtouch, bc and cmark with this Binaryen (132), and a few bytes off on
// fileio and kvserver, where `optimize()`'s dead-argument pass drops one more unused result.
// Either is valid: only how much is optimised differs, never what the code does.
import type { BinaryenApi } from './binaryen-api.js';
import { isEscapeWrapper, isFastBody, isResumeCopy } from './loop-resume.js';

/** -O2's global passes ahead of the function passes (Binaryen's addDefaultGlobalOptimizationPrePasses, for a module without GC). */
const GLOBAL_PRE_PASSES = ['duplicate-function-elimination', 'memory-packing', 'once-reduction'];

/** -O2's global passes after the function passes (addDefaultGlobalOptimizationPostPasses). */
const GLOBAL_POST_PASSES = [
  'dae-optimizing',
  'inlining-optimizing',
  'duplicate-function-elimination',
  'duplicate-import-elimination',
  'simplify-globals-optimizing',
  'remove-unused-module-elements',
  'directize',
];

/**
 * The function passes of a split function's copies: single-use locals sunk into their use, unused
 * ones dropped, the rest coalesced, and what that leaves empty removed. -O2's whole list took
 * 2.6 s on the generated 2 MiB module's resume copies and escape wrappers, these about 1 s; on its
 * fast bodies 3.2 s, these 0.8 s.
 */
const LIGHT_PASSES = ['simplify-locals-nostructure', 'reorder-locals', 'coalesce-locals', 'vacuum'];

/**
 * Optimises `mod` at the levels set on `b` (the caller sets -O2). `escaping`: the functions whose
 * fast body took their own name (loop-resume.ts, finishEscapes).
 */
export function optimise(b: BinaryenApi, mod: BinaryenApi, escaping: ReadonlySet<string> = new Set()): void {
  mod.runPasses(GLOBAL_PRE_PASSES);
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = mod.getFunctionByIndex(i);
    const info = b.getFunctionInfo(f);
    if (info.module || !info.body) continue; // an import
    const name: string = info.name;
    if (isFastBody(name) || escaping.has(name) || isResumeCopy(name) || isEscapeWrapper(name)) mod.runPassesOnFunction(f, LIGHT_PASSES);
    else mod.optimizeFunction(f);
  }
  mod.runPasses(GLOBAL_POST_PASSES);
}
