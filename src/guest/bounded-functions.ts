// Bounded functions: those whose every activation provably ends after a small amount of work,
// so they need no safepoint and Asyncify leaves them and their call sites alone; and, from them,
// which calls may unwind.
import { UNWINDABLE_WASI_CALLS } from './instrument-meta.js';
import { childVisitors, Unsupported, type BinaryenApi, type ChildVisitor } from './binaryen-api.js';
import { EXEMPT_BUDGET_EXPRESSIONS, EXEMPT_MAX_ITERATIONS, boundedTripCount } from './counted-loops.js';
import { walk } from './tree-facts.js';

/**
 * The most guest work, in expressions (a loop's body counted once per iteration, a callee's work
 * at each call), that a function without a safepoint may do per activation: a quarter of a
 * millisecond or so, added to the time to the next safepoint of its caller.
 */
export const BOUNDED_BUDGET_EXPRESSIONS = 262144;

/** Defined functions whose bodies call nothing (no call, call_indirect or call_ref). */
export function leafFunctions(b: BinaryenApi, mod: BinaryenApi): Set<string> {
  const leaves = new Set<string>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (!f.module && f.body && (b.getSideEffects(f.body, mod) & b.SideEffects.Calls) === 0) leaves.add(f.name);
  }
  return leaves;
}

/**
 * Defined functions whose every activation ends after at most BOUNDED_BUDGET_EXPRESSIONS of work,
 * callees included: no `call_indirect`, no call to an import that may block (the unwindable
 * WASI calls; other imports count as 16 expressions of host work), no recursion (a function on
 * a cycle of the call graph is never bounded), and every loop an innermost loop that calls
 * nothing and whose trip count `boundedTripCount` proves small enough to be exempted — the same
 * rule `amortiseInnermostLoops` applies after `log-execution`, so such a function ends up with
 * no safepoint at all. Functions that call nothing and have no loop are the simplest case (the
 * only one before INSTRUMENTATION_VERSION 8).
 */
export function boundedFunctions(b: BinaryenApi, mod: BinaryenApi): Set<string> {
  const fields = childVisitors(b);
  const blocking = new Set<string>(UNWINDABLE_WASI_CALLS);
  const importCost = new Map<string, number>(); // import name → cost, or -1 for blocking
  const bodies = new Map<string, number>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module) importCost.set(f.name, blocking.has(f.base) ? -1 : 16);
    else bodies.set(f.name, f.body);
  }
  // Per function: its own work (loops multiplied out) and its direct callees, or null if it has
  // something that rules it out on its own.
  const own = new Map<string, { work: number; calls: string[] } | null>();
  for (const [name, body] of bodies) own.set(name, ownWork(b, fields, body));
  const work = new Map<string, number>(); // bounded functions → total work
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string): number | null => {
    if (state.get(name) === 'done') return work.get(name) ?? null;
    if (state.get(name) === 'visiting') return null; // recursion
    state.set(name, 'visiting');
    const o = own.get(name);
    let total: number | null = o ? o.work : null;
    if (o) {
      for (const c of o.calls) {
        if (total === null) break;
        const ic = importCost.get(c);
        const w = ic !== undefined ? (ic < 0 ? null : ic) : visit(c);
        total = w === null ? null : total + w;
        if (total !== null && total > BOUNDED_BUDGET_EXPRESSIONS) total = null;
      }
    }
    state.set(name, 'done');
    if (total !== null) work.set(name, total);
    return total;
  };
  // Deep call chains: visit callees first, iteratively by depth, to keep the JS stack shallow.
  for (const name of bodies.keys()) visit(name);
  return new Set(work.keys());
}

/**
 * The work of one activation of a function body, not counting its callees, with each loop's body
 * counted once per iteration; and its direct call targets, one per call site. Null if the body
 * has a `call_indirect`, a loop that is not an innermost call-free loop with a provably small trip
 * count, or an expression this analysis does not know.
 */
function ownWork(b: BinaryenApi, fields: Map<number, ChildVisitor>, body: number): { work: number; calls: string[] } | null {
  if (!body) return null;
  const calls: string[] = [];
  let ok = true;
  let nextParent = 0;
  let nextIndex = 0;
  const size = (expr: number): number => {
    if (!expr || !ok) return 0;
    const parent = nextParent;
    const index = nextIndex;
    nextParent = nextIndex = 0;
    const id = b.getExpressionId(expr) as number;
    const children = fields.get(id);
    if (!children || id === b.CallIndirectId) {
      ok = false;
      return 0;
    }
    if (id === b.CallId) calls.push(b.Call.getTarget(expr));
    if (id === b.BlockId) {
      let n = 1;
      const count: number = b.Block.getNumChildren(expr);
      for (let i = 0; i < count; i++) {
        nextParent = expr;
        nextIndex = i;
        n += size(b.Block.getChildAt(expr, i));
      }
      nextParent = nextIndex = 0;
      return n;
    }
    if (id === b.LoopId) {
      const name = b.Loop.getName(expr);
      const inner = b.Loop.getBody(expr);
      const facts = walk(b, fields, inner, '', []);
      if (!name || facts.loops > 0 || facts.calls.length > 0 || facts.indirect) {
        ok = false;
        return 0;
      }
      const trips = boundedTripCount(b, fields, { loop: expr, name, rest: inner, facts, parent, index });
      if (trips === null || trips > EXEMPT_MAX_ITERATIONS || trips * Math.max(1, facts.size) > EXEMPT_BUDGET_EXPRESSIONS) {
        ok = false;
        return 0;
      }
      return 1 + trips * facts.size;
    }
    let n = 1;
    children(expr, (c) => {
      n += size(c);
    });
    return n;
  };
  let w: number;
  try {
    w = size(body);
  } catch (err) {
    if (err instanceof Unsupported) return null;
    throw err;
  }
  return ok && w <= BOUNDED_BUDGET_EXPRESSIONS ? { work: w, calls } : null;
}

/** Whether a call to `callee` may unwind: an unwindable WASI import, or a function with a safepoint. */
export function mayUnwindFrom(b: BinaryenApi, mod: BinaryenApi, bounded: Set<string>): (callee: string) => boolean {
  const importBase = new Map<string, string>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module) importBase.set(f.name, f.base);
  }
  const unwindable = new Set<string>(UNWINDABLE_WASI_CALLS);
  return (callee) => {
    const base = importBase.get(callee);
    return base !== undefined ? unwindable.has(base) : !bounded.has(callee);
  };
}
