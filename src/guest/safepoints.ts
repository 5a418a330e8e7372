// Safepoint placement: which of `log-execution`'s safepoints stay (function entries that can
// recurse, loop heads), how often hot innermost loops check theirs, and the check itself, inlined.
import { SAFEPOINT_FLAG_ADDR, UNWINDABLE_WASI_CALLS, YIELD_IMPORT } from './instrument-meta.js';
import { childVisitors, Unsupported, type BinaryenApi } from './binaryen-api.js';
import { EXEMPT_BUDGET_EXPRESSIONS, EXEMPT_MAX_ITERATIONS, boundedTripCount } from './counted-loops.js';
import { walk, type LoopSite, type TreeFacts } from './tree-facts.js';

/**
 * Turns `log-execution`'s imported `log_execution(id)` into a defined function whose body is the
 * check `if (i64.atomic.load(SAFEPOINT_FLAG_ADDR) != 0) ferry.yield(id)`, and inlines it into every
 * safepoint: the common case is one load and a branch, with no call at all.
 */
export function inlineSafepointCheck(b: BinaryenApi, mod: BinaryenApi, name: string): void {
  const yieldName = 'ferry$yield';
  mod.addFunctionImport(yieldName, YIELD_IMPORT.module, YIELD_IMPORT.name, b.createType([b.i32]), b.none);
  mod.removeFunction(name);
  const body = mod.if(
    mod.i64.ne(mod.i64.atomic.load(0, mod.i32.const(SAFEPOINT_FLAG_ADDR)), mod.i64.const(0n)),
    mod.call(yieldName, [mod.local.get(0, b.i32)], b.none),
  );
  mod.addFunction(name, b.createType([b.i32]), b.none, [], body);
  // The check is 7 expressions: inline everything that small (a few other tiny functions go with
  // it), but nothing larger — functions with one caller included — so traps keep naming them.
  const always: number = b.getAlwaysInlineMaxSize();
  const oneCaller: number = b.getOneCallerInlineMaxSize();
  const flexible: number = b.getFlexibleInlineMaxSize();
  b.setAlwaysInlineMaxSize(8);
  b.setOneCallerInlineMaxSize(0);
  b.setFlexibleInlineMaxSize(0);
  try {
    mod.runPasses(['inlining']);
  } finally {
    b.setAlwaysInlineMaxSize(always);
    b.setOneCallerInlineMaxSize(oneCaller);
    b.setFlexibleInlineMaxSize(flexible);
  }
  // The now-unused function is dropped by the optimizer's cleanup.
}

/**
 * Guest work, in Binaryen expressions, allowed between two safepoints of an amortised loop: a few
 * microseconds on these machines (V8 runs roughly one expression per nanosecond or faster).
 */
export const SAFEPOINT_BUDGET_EXPRESSIONS = 4096;
/** The most iterations of an amortised loop between two safepoints. */
export const SAFEPOINT_MAX_ITERATIONS = 1024;

/**
 * A safepoint at the head of a hot innermost loop costs a flag load and a branch per iteration,
 * and, since the loop can then unwind, Asyncify's state checks around its body on every
 * iteration too. An innermost loop (no loop inside) that calls only functions that cannot unwind
 * (no calls and no loops: bounded, safepoint-free) is rewritten so its safepoint runs once every N
 * iterations, N chosen from the size of an iteration so that a safepoint is still reached every
 * SAFEPOINT_BUDGET_EXPRESSIONS expressions of guest work:
 *
 *   loop $L (body: safepoint; B)   →   loop $L' (safepoint; c = N;
 *                                         loop $L (if (--c == 0) br $L'; B))
 *
 * Every branch in B to $L still reaches the inner loop's head; one in N goes round through $L' and
 * its safepoint. The inner loop contains no call that can unwind, so Asyncify leaves it whole
 * (one state check per entry, not per iteration). Locals, including the counter, are saved and
 * restored by Asyncify like any other, so a rewind resumes right after the safepoint.
 *
 * An innermost loop that calls nothing at all and provably runs at most EXEMPT_MAX_ITERATIONS
 * times and EXEMPT_BUDGET_EXPRESSIONS expressions per entry (`boundedTripCount`) loses its
 * safepoint instead: with no branch out of it V8 can unroll it. Whatever encloses it keeps its own
 * safepoint, so the guest work between two safepoints stays bounded — though not by
 * EXEMPT_BUDGET_EXPRESSIONS: several exempt loops in a row (or an exempt loop in a leaf function
 * called several times per iteration of its caller) add up before the next safepoint.
 */
export function amortiseInnermostLoops(b: BinaryenApi, mod: BinaryenApi, safepointFn: string): void {
  const fields = childVisitors(b);
  const sizes = new Map<string, number>(); // functions that cannot unwind → their size
  const sites = new Map<number, LoopSite[]>(); // function ref → its candidate loops
  const imports = new Set<string>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const fn = mod.getFunctionByIndex(i);
    const f = b.getFunctionInfo(fn);
    if (f.module) {
      imports.add(f.name);
      continue;
    }
    const found: LoopSite[] = [];
    let facts: TreeFacts;
    try {
      facts = walk(b, fields, f.body, safepointFn, found);
    } catch (err) {
      if (err instanceof Unsupported) continue; // left as log-execution made it
      throw err;
    }
    if (facts.loops === 0 && facts.calls.length === 0 && !facts.indirect) sizes.set(f.name, facts.size);
    if (found.length > 0) sites.set(fn, found);
  }
  // Imports that can unwind (the safepoint, blocking WASI calls) are named by Asyncify's list;
  // here every import other than the safepoint is treated as bounded host work, and the blocking
  // ones are excluded by name below.
  const unwindable = new Set<string>(UNWINDABLE_WASI_CALLS);
  const importBase = new Map<string, string>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module) importBase.set(f.name, f.base);
  }
  let k = 0;
  for (const [fn, found] of sites) {
    let counter = -1;
    for (const site of found) {
      if (site.facts.loops === 0 && site.facts.calls.length === 0 && !site.facts.indirect) {
        const trips = boundedTripCount(b, fields, site);
        if (trips !== null && trips <= EXEMPT_MAX_ITERATIONS && trips * Math.max(1, site.facts.size) <= EXEMPT_BUDGET_EXPRESSIONS) {
          b.Block.setChildAt(b.Loop.getBody(site.loop), 0, mod.nop());
          continue;
        }
      }
      let cost = site.facts.size;
      let ok = !site.facts.indirect && site.facts.loops === 0;
      for (const c of site.facts.calls) {
        if (!ok) break;
        if (imports.has(c)) {
          if (c === safepointFn || unwindable.has(importBase.get(c) ?? '')) ok = false;
          else cost += 16;
        } else {
          const size = sizes.get(c);
          if (size === undefined) ok = false;
          else cost += size;
        }
      }
      if (!ok) continue;
      const n = Math.min(SAFEPOINT_MAX_ITERATIONS, Math.floor(SAFEPOINT_BUDGET_EXPRESSIONS / Math.max(1, cost)));
      if (n < 2) continue;
      if (counter < 0) counter = b._BinaryenFunctionAddVar(fn, b.i32) as number;
      const outerName = `ferry$amortised${k++}`;
      const safepointCall = b.Block.getChildAt(b.Loop.getBody(site.loop), 0);
      const type = b.getExpressionType(site.loop);
      const inner = mod.loop(
        site.name,
        mod.block(null, [
          mod.br(outerName, mod.i32.eqz(mod.local.tee(counter, mod.i32.sub(mod.local.get(counter, b.i32), mod.i32.const(1)), b.i32))),
          site.rest,
        ], type),
      );
      b.Loop.setName(site.loop, outerName);
      b.Loop.setBody(site.loop, mod.block(null, [safepointCall, mod.local.set(counter, mod.i32.const(n)), inner], type));
    }
  }
}

/** The internal name of the import `log-execution` added, or null. */
export function safepointImportName(b: BinaryenApi, mod: BinaryenApi): string | null {
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module && f.base === 'log_execution') return f.name;
  }
  return null;
}

/**
 * `log-execution` logs not only at function entries and loop heads but also before every
 * `return` and before a function body's last expression. Those exit safepoints bound nothing (what
 * runs after them up to the caller's next safepoint is straight-line code), yet each one is an
 * unwind point: it made every function Asyncify'd — leaf functions and bounded functions
 * included, whose entry safepoints `pruneEntrySafepoints` removes to keep them out of Asyncify —
 * and made every innermost loop with a `return` in it look as if it called something that can
 * unwind, so it was never amortised. Only the entry (first child of the function body) and loop
 * heads (first child of a loop's body) are kept; every other safepoint call becomes a nop.
 * A function with an expression this walk does not know keeps all of its safepoints.
 */
export function dropExitSafepoints(b: BinaryenApi, mod: BinaryenApi, safepointFn: string): void {
  const fields = childVisitors(b);
  const isSafepoint = (e: number): boolean => b.getExpressionId(e) === b.CallId && b.Call.getTarget(e) === safepointFn;
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module || !f.body) continue;
    const drops: [number, number][] = []; // block, child index
    // `keepFirst`: the expression is the function body or a loop's body, where a safepoint as the
    // first child of a block is an entry or a loop head.
    const visit = (expr: number, keepFirst: boolean): void => {
      if (!expr) return;
      const id = b.getExpressionId(expr) as number;
      if (id === b.BlockId) {
        const n: number = b.Block.getNumChildren(expr);
        for (let k = 0; k < n; k++) {
          const c: number = b.Block.getChildAt(expr, k);
          if (isSafepoint(c)) {
            if (!(keepFirst && k === 0)) drops.push([expr, k]);
          } else visit(c, false);
        }
        return;
      }
      if (id === b.LoopId) return visit(b.Loop.getBody(expr), true);
      const children = fields.get(id);
      if (!children) throw new Unsupported();
      children(expr, (c) => visit(c, false));
    };
    try {
      visit(f.body, true);
    } catch (err) {
      if (err instanceof Unsupported) continue;
      throw err;
    }
    for (const [block, k] of drops) b.Block.setChildAt(block, k, mod.nop());
  }
}

/**
 * `log-execution` puts a safepoint at every function entry and loop head. A bounded function
 * (`boundedFunctions`: it ends after a bounded amount of work, its callees included, and calls
 * nothing that may block) loses its entry safepoint, and `amortiseInnermostLoops` exempts its
 * loops, so it has no safepoint left. It then cannot unwind, and Asyncify leaves it — and every
 * call to it — uninstrumented, which is where most of the cost of instrumentation goes (hot
 * calls of small helpers from big functions). Entry safepoints stay in every other function:
 * they bound recursion without loops — except in functions on no cycle of the call graph
 * (`entrySafepointFree`, call-graph.ts), which are in the set this is given too (version 12).
 */
export function pruneEntrySafepoints(b: BinaryenApi, mod: BinaryenApi, safepointFn: string, leaves: Set<string>): void {
  for (const name of leaves) {
    const body = b.getFunctionInfo(mod.getFunction(name)).body;
    if (!body || b.getExpressionId(body) !== b.BlockId || b.Block.getNumChildren(body) === 0) continue;
    const first = b.Block.getChildAt(body, 0);
    if (b.getExpressionId(first) === b.CallId && b.Call.getTarget(first) === safepointFn) b.Block.setChildAt(body, 0, mod.nop());
  }
}
