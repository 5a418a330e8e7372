// What a function body contains, as far as safepoints are concerned: its size, calls and loops,
// and for each loop the same facts about its body (read once, used by safepoint placement, the
// counted-loop exemption and the bounded-function analysis).
import { childVisitors, Unsupported, type BinaryenApi, type ChildVisitor } from './binaryen-api.js';
import { functionsOnCycles, type FunctionFacts } from './call-graph.js';

/** What a subtree contains, as far as safepoints are concerned. */
export interface TreeFacts {
  size: number; // expressions
  loops: number;
  indirect: boolean; // call_indirect
  calls: string[]; // direct call targets, one entry per call site
}

export interface LoopSite {
  loop: number; // the Loop expression (its body starts with its safepoint call)
  name: string;
  rest: number; // the loop's original body (after the safepoint call)
  facts: TreeFacts;
  /** The block the loop is a direct child of, and its index there (0 if none). */
  parent: number;
  index: number;
}

/** Collects the facts of a subtree, and the loops in it (with their own facts). */
export function walk(b: BinaryenApi, fields: Map<number, ChildVisitor>, root: number, safepointFn: string, loops: LoopSite[]): TreeFacts {
  const facts: TreeFacts = { size: 0, loops: 0, indirect: false, calls: [] };
  // The block the next visited expression is a direct child of, and its index there (0, 0: none).
  let nextParent = 0;
  let nextIndex = 0;
  const visit = (expr: number): void => {
    if (!expr) return;
    const parent = nextParent;
    const index = nextIndex;
    nextParent = nextIndex = 0;
    const id = b.getExpressionId(expr) as number;
    const children = fields.get(id);
    if (!children) throw new Unsupported();
    facts.size++;
    if (id === b.BlockId) {
      const n: number = b.Block.getNumChildren(expr);
      for (let i = 0; i < n; i++) {
        nextParent = expr;
        nextIndex = i;
        visit(b.Block.getChildAt(expr, i));
      }
      nextParent = nextIndex = 0;
      return;
    }
    if (id === b.LoopId) {
      facts.loops++;
      const body = b.Loop.getBody(expr);
      const head = body && b.getExpressionId(body) === b.BlockId && b.Block.getNumChildren(body) === 2 ? b.Block.getChildAt(body, 0) : 0;
      if (head && b.getExpressionId(head) === b.CallId && b.Call.getTarget(head) === safepointFn && !b.Block.getName(body)) {
        const rest = b.Block.getChildAt(body, 1);
        const inner = walk(b, fields, rest, safepointFn, loops);
        facts.size += inner.size + 2;
        facts.loops += inner.loops;
        facts.indirect ||= inner.indirect;
        for (const c of inner.calls) facts.calls.push(c);
        facts.calls.push(safepointFn);
        const name = b.Loop.getName(expr);
        if (name) loops.push({ loop: expr, name, rest, facts: inner, parent, index });
        return;
      }
    }
    if (id === b.CallId) facts.calls.push(b.Call.getTarget(expr));
    if (id === b.CallIndirectId) facts.indirect = true;
    children(expr, visit);
  };
  visit(root);
  return facts;
}

/**
 * Each defined function's facts for the call graph (a body this walk cannot read calls anything),
 * the functions on its cycles, and the functions in the table (what a call_indirect may reach).
 */
export function callGraphFacts(b: BinaryenApi, mod: BinaryenApi): [Map<string, FunctionFacts>, Set<string>] {
  const fields = childVisitors(b);
  const facts = new Map<string, FunctionFacts>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module) continue;
    try {
      const t = walk(b, fields, f.body, '', []);
      facts.set(f.name, { size: t.size, calls: t.calls, indirect: t.indirect });
    } catch (err) {
      if (!(err instanceof Unsupported)) throw err;
      facts.set(f.name, { size: 0, calls: [], indirect: true, unknown: true });
    }
  }
  const table = new Set<string>();
  for (let i = 0; i < mod.getNumElementSegments(); i++) {
    for (const name of b.getElementSegmentInfo(mod.getElementSegmentByIndex(i)).data) table.add(name);
  }
  return [facts, functionsOnCycles(facts, table)];
}
