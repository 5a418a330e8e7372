// Entry points that let another thread have V8 compile a guest's big functions (warm-up.ts).
//
// V8 compiles a Wasm function at its first call (lazy compilation), on the calling thread. On the
// guest thread that compile is a stretch without a safepoint check, and a pause requested then
// waits for it. Profiled (docs/design-notes.md, 2026-12-06, i13s): SQLite's pauses of 100-400 ms
// at load 8-10 were spent in the wrappers of its split functions (loop-resume.ts), compiling the
// F$fast or F$resume copy at its first call; a resume copy is first called by the first resume of
// its activation (cmark: a 70-80 ms pause per run). The compiled code belongs to the module, which every instance shares in every
// thread of the process. So each chosen function F gets a guard at its entry, `if (ferry$warming)
// return <zero>`, and an export `ferry_warm_<k>` that sets ferry$warming and calls F with zero
// arguments: on a throwaway instance (its own globals and memory) that compiles F and returns
// before F reads or writes anything. The guest's instance never sets ferry$warming: there the
// guard costs one global read per call of a function of at least WARM_MIN_EXPRESSIONS.
// Runs last, after Asyncify and the optimiser, so neither moves or duplicates the guard.
import { childVisitors, type BinaryenApi, type ChildVisitor } from './binaryen-api.js';
import { isResumeCopy } from './loop-resume.js';
import { zero } from './resume-frame.js';

import { WARM_EXPORT_PREFIX } from './instrument-meta.js';
/**
 * Functions at least this big (expressions, as instrumented) are warmed: ≈ 8-12 KB of code, whose
 * Liftoff compile takes a few ms on a quiet core and tens of ms on a loaded one.
 */
export const WARM_MIN_EXPRESSIONS = 4096;
/**
 * Resume copies from this size on are warmed too (INSTRUMENTATION_VERSION 17): those of the big
 * split functions, first compiled when a pause resumes, on the guest thread. Not the small escaping
 * functions' copies (an allocator's): with escape every one of them has a resume copy — SQLite's
 * 1673 were all warmed, a warm-up thread compiling cold code on every start — and a small one
 * compiles in well under a millisecond where it is first needed.
 */
const WARM_RESUME_MIN_EXPRESSIONS = 2048;
const G_WARMING = 'ferry$warming';

/** Adds the guards and exports; returns the number of functions warmed, biggest first in export order. */
export function addWarmExports(b: BinaryenApi, mod: BinaryenApi): number {
  const fields = childVisitors(b);
  const numeric = new Set<number>([b.none, b.i32, b.i64, b.f32, b.f64, b.v128]);
  const chosen: { name: string; size: number; params: number[]; results: number }[] = [];
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module) continue; // an import
    const params: number[] = b.expandType(f.params);
    if (!numeric.has(f.results) || params.some((t) => !numeric.has(t) || t === b.none)) continue;
    const size = countUpTo(b, fields, f.body as number, 64 * WARM_MIN_EXPRESSIONS); // sizes order the warm-up
    if (size < (isResumeCopy(f.name as string) ? WARM_RESUME_MIN_EXPRESSIONS : WARM_MIN_EXPRESSIONS)) continue;
    chosen.push({ name: f.name as string, size, params, results: f.results as number });
  }
  if (chosen.length === 0) return 0;
  mod.addGlobal(G_WARMING, b.i32, true, mod.i32.const(0));
  chosen.sort((x, y) => y.size - x.size);
  chosen.forEach((c, k) => {
    const fn = mod.getFunction(c.name);
    const body = b.getFunctionInfo(fn).body as number;
    const leave = c.results === b.none ? mod.return() : mod.return(zero(b, mod, c.results));
    b.Function.setBody(fn, mod.block(null, [mod.if(mod.global.get(G_WARMING, b.i32), leave), body], c.results));
    const call = mod.call(c.name, c.params.map((t) => zero(b, mod, t)), c.results);
    const warm = `ferry$warm${k}`;
    mod.addFunction(warm, b.none, b.none, [], mod.block(null, [
      mod.global.set(G_WARMING, mod.i32.const(1)),
      c.results === b.none ? call : mod.drop(call),
      mod.global.set(G_WARMING, mod.i32.const(0)),
    ]));
    mod.addFunctionExport(warm, `${WARM_EXPORT_PREFIX}${k}`);
  });
  return chosen.length;
}

/** The number of expressions in `root`, up to `cap` (a kind the walk does not know counts as `cap`). */
function countUpTo(b: BinaryenApi, fields: Map<number, ChildVisitor>, root: number, cap: number): number {
  let n = 0;
  const stack = [root];
  while (stack.length > 0 && n < cap) {
    const e = stack.pop()!;
    if (!e) continue;
    n++;
    const visit = fields.get(b.getExpressionId(e) as number);
    if (!visit) return cap;
    visit(e, (c) => stack.push(c));
  }
  return n;
}
