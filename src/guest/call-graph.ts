// The guest's call graph, as far as safepoints care: which functions lie on a cycle (recursion,
// direct or through the table), and which may lose their entry safepoint.
//
// A function entry safepoint exists to bound recursion without loops: every other way for a guest
// to run long passes a loop head (which keeps its own safepoint) or a call into a function on a
// cycle (which keeps its entry safepoint). So a function on no cycle needs no entry safepoint,
// provided the straight-line work it can do before reaching another safepoint stays small. Without
// it, a function whose only unwind point was its entry (most small helpers: `free`, a number
// library's copy routine) is left out of Asyncify entirely, and so is every call to it.
// Pure functions over plain facts, so that the rules are unit-tested without Binaryen.

/** What instrumentation knows of one defined function's body. */
export interface FunctionFacts {
  /** Expressions in the body (a loop's body counted once). */
  size: number;
  /** Direct call targets, one entry per call site (imports included). */
  calls: readonly string[];
  /** The body has a call_indirect (it may call any function in the table). */
  indirect: boolean;
  /** The body could not be read: it is assumed to call anything. */
  unknown?: boolean;
}

/**
 * Defined functions on a cycle of the call graph: a function calling itself, or part of a
 * strongly connected component of two or more. A call_indirect is an edge to every function in
 * the table; a body that could not be read, an edge to every defined function.
 */
export function functionsOnCycles(facts: ReadonlyMap<string, FunctionFacts>, tableFunctions: ReadonlySet<string>): Set<string> {
  const TABLE = '\u0000table';
  const ANY = '\u0000any';
  const succ = (n: string): string[] => {
    if (n === TABLE) return [...tableFunctions].filter((f) => facts.has(f));
    if (n === ANY) return [...facts.keys()];
    const f = facts.get(n)!;
    const out = f.calls.filter((c) => facts.has(c));
    if (f.indirect) out.push(TABLE);
    if (f.unknown) out.push(ANY);
    return out;
  };
  // Tarjan's algorithm, iterative (call graphs of big modules are deep).
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const onStack = new Set<string>();
  const stack: string[] = [];
  const onCycle = new Set<string>();
  let next = 0;
  const roots = [...facts.keys(), TABLE, ANY];
  for (const root of roots) {
    if (index.has(root)) continue;
    const frames: { node: string; succ: string[]; i: number }[] = [];
    const open = (node: string): void => {
      index.set(node, next);
      low.set(node, next);
      next++;
      stack.push(node);
      onStack.add(node);
      frames.push({ node, succ: succ(node), i: 0 });
    };
    open(root);
    while (frames.length > 0) {
      const fr = frames[frames.length - 1]!;
      if (fr.i < fr.succ.length) {
        const w = fr.succ[fr.i++]!;
        if (!index.has(w)) open(w);
        else if (onStack.has(w)) low.set(fr.node, Math.min(low.get(fr.node)!, index.get(w)!));
        continue;
      }
      frames.pop();
      const parent = frames[frames.length - 1];
      if (parent) low.set(parent.node, Math.min(low.get(parent.node)!, low.get(fr.node)!));
      if (low.get(fr.node) !== index.get(fr.node)) continue;
      const component: string[] = [];
      for (;;) {
        const w = stack.pop()!;
        onStack.delete(w);
        component.push(w);
        if (w === fr.node) break;
      }
      const selfLoop = component.length === 1 && succ(component[0]!).includes(component[0]!);
      if (component.length > 1 || selfLoop) for (const w of component) if (facts.has(w)) onCycle.add(w);
    }
  }
  return onCycle;
}

/**
 * Defined functions that may go without an entry safepoint: every function on no cycle whose
 * straight-line work up to the next safepoint stays within `budget` expressions — its own body
 * plus, at each direct call site, the same work of a callee that has no entry safepoint either
 * (a callee that keeps one counts nothing: its safepoint comes first). `bounded` functions (their
 * whole activation provably small) are included whatever their size.
 */
export function entrySafepointFree(facts: ReadonlyMap<string, FunctionFacts>, onCycle: ReadonlySet<string>, bounded: ReadonlySet<string>, budget: number): Set<string> {
  const free = new Set<string>();
  const cost = new Map<string, number>(); // functions decided → their work before a safepoint (Infinity: keeps its entry)
  const decide = (root: string): void => {
    // Depth-first over the acyclic part of the graph, callees before callers, without recursion.
    const frames: { name: string; i: number; total: number }[] = [];
    const push = (name: string): void => {
      cost.set(name, NaN); // in progress
      frames.push({ name, i: 0, total: facts.get(name)!.size });
    };
    push(root);
    while (frames.length > 0) {
      const fr = frames[frames.length - 1]!;
      const calls = facts.get(fr.name)!.calls;
      if (fr.i < calls.length) {
        const c = calls[fr.i++]!;
        if (!facts.has(c)) continue; // an import: host work, counted as the call expression
        if (!cost.has(c)) {
          if (onCycle.has(c)) cost.set(c, Infinity);
          else {
            push(c);
            continue;
          }
        }
        const w = cost.get(c)!;
        if (Number.isFinite(w)) fr.total += w;
        continue;
      }
      frames.pop();
      const f = facts.get(fr.name)!;
      const keeps = !bounded.has(fr.name) && (f.unknown === true || fr.total > budget);
      cost.set(fr.name, keeps ? Infinity : fr.total);
      if (!keeps) free.add(fr.name);
      const parent = frames[frames.length - 1];
      if (parent && !keeps) parent.total += fr.total;
    }
  };
  for (const name of facts.keys()) {
    if (cost.has(name)) continue;
    if (onCycle.has(name)) {
      cost.set(name, Infinity);
      if (bounded.has(name)) free.add(name);
      continue;
    }
    decide(name);
  }
  return free;
}
