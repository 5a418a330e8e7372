// The last transforming stage of instrumentation: Binaryen's -O2 pipeline, run in its three parts
// so that the resume copies and escape wrappers (loop-resume.ts) can take a lighter middle part.
//
// A split function exists twice, or three times: its fast body, which runs whenever the guest runs;
// its resume copy, which runs only after a rewind (the rest of one activation); and, for a function
// that escapes, its escape wrapper, which runs only to suspend, unwind or rewind it. The last two
// carry Asyncify's code. Most functions of a module with many small looping functions are split, so
// -O2's function passes ran over about twice the code plain Asyncify's do, and were most of a cold
// instrumentation (generated 2 MiB module: 8.7 of 14.9 s, against 6.2 s for the whole of
// `wasm-opt --asyncify -O2`). The fast bodies and every other function still get the whole -O2;
// the resume copies and escape wrappers get the passes that clean up Asyncify's locals, and then
// the global passes (which re-optimise what they inline into or change, copies included).
// The global pass lists follow Binaryen's default pipeline (pass.cpp) for a module without GC; with
// every function taking the whole function pipeline they give output byte-identical to
// `optimize()` on compute, memtouch, bc and cmark with this Binaryen (132), and a few bytes off on
// fileio and kvserver, where `optimize()`'s dead-argument pass drops one more unused result.
// Either is valid: only how much is optimised differs, never what the code does.
import type { BinaryenApi } from './binaryen-api.js';
import { isEscapeWrapper, isResumeCopy } from './loop-resume.js';

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
 * The function passes of a resume copy or an escape wrapper: single-use locals sunk into their use,
 * unused ones dropped, the rest coalesced (Asyncify's code adds many, and every local is a slot in
 * the Liftoff frame these functions first run in), and what that leaves empty removed. -O2's whole
 * list on them took 2.6 s of the generated 2 MiB module's instrumentation; these, about 1 s.
 */
const LIGHT_PASSES = ['simplify-locals-nostructure', 'reorder-locals', 'coalesce-locals', 'vacuum'];

/** Optimises `mod` at the levels set on `b` (the caller sets -O2). */
export function optimise(b: BinaryenApi, mod: BinaryenApi): void {
  mod.runPasses(GLOBAL_PRE_PASSES);
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = mod.getFunctionByIndex(i);
    const info = b.getFunctionInfo(f);
    if (info.module || !info.body) continue; // an import
    if (isResumeCopy(info.name) || isEscapeWrapper(info.name)) mod.runPassesOnFunction(f, LIGHT_PASSES);
    else mod.optimizeFunction(f);
  }
  mod.runPasses(GLOBAL_POST_PASSES);
}
