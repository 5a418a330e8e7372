// Which functions loop-resume.ts splits, by analysis only: big ones with many call sites that may
// unwind and a loop-head safepoint, leaving out any that drives a bigger candidate.
import { childVisitors, type BinaryenApi } from './binaryen-api.js';
import { Kind, preOrder, readTree, UnsupportedExpression, type WNode } from './wasm-tree.js';

/** A function is worth it only with this much code (expressions) ... */
export const LOOP_RESUME_MIN_EXPRESSIONS = 2048;
/** ... and this many call sites that may unwind (each costs Asyncify a guard and a state check). */
export const LOOP_RESUME_MIN_CALL_SITES = 32;
/**
 * A function escapes only up to this size: the split keeps its body twice (F and F$resume), and
 * past this much code its calls are too few for what escaping saves per call to matter.
 */
export const ESCAPE_MAX_EXPRESSIONS = 16384;

/**
 * What the split needs of a chosen function. Not its tree: every candidate's tree held until the
 * last function was split kept the whole module's trees alive, and V8's collector marked them
 * again and again (the generated 20 MiB module: 19 s of garbage collection in this stage).
 */
export interface Chosen {
  name: string;
  sites: number; // call sites that may unwind
  /** Its body starts with a safepoint (hasEntrySafepoint). */
  entrySafepoint: boolean;
  /**
   * Escape (every safepoint at a loop head or the entry; not big enough to be chosen): F
   * itself becomes the fast body, with no wrapper frame on its calls, and escapes into an
   * Asyncify'd wrapper only when it suspends, a callee unwinds, or it is rewound (loop-resume.ts,
   * finishEscapes).
   */
  escape: boolean;
}

/** A loop whose body starts with a safepoint call: a place a split function can suspend. */
export function isPoint(n: WNode, safepointFn: string): boolean {
  const body = n.children[0];
  const head = body?.kind === Kind.Block ? body.children[0] : undefined;
  return n.kind === Kind.Loop && head?.kind === Kind.Call && head.callee === safepointFn;
}

/** Whether the body starts with a safepoint (a function on a cycle of the call graph keeps one there). */
export function hasEntrySafepoint(tree: WNode, safepointFn: string): boolean {
  const first = tree.kind === Kind.Block ? tree.children[0] : undefined;
  return first?.kind === Kind.Call && first.callee === safepointFn;
}

/**
 * Functions worth splitting (with `escape`, also those that escape: see Chosen): at least LOOP_RESUME_MIN_EXPRESSIONS of code and
 * LOOP_RESUME_MIN_CALL_SITES call sites that may unwind (calls to what `mayUnwind` names, and
 * `call_indirect`), with at least one loop-head safepoint.
 */
export function chooseFunctions(b: BinaryenApi, mod: BinaryenApi, safepointFn: string, mayUnwind: (callee: string) => boolean, escape: boolean): Chosen[] {
  const fields = childVisitors(b);
  const candidates = new Map<string, Chosen>();
  const escapes = new Map<string, Chosen>(); // functions that may escape, if not chosen
  const callees = new Map<string, Set<string>>(); // direct calls to defined functions that may unwind
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module || !f.body) continue;
    let tree: WNode;
    try {
      tree = readTree(b, fields, f.body);
    } catch (err) {
      if (err instanceof UnsupportedExpression) continue;
      throw err;
    }
    let size = 0;
    let sites = 0;
    let safepoints = 0;
    let points = 0;
    const calls = new Set<string>();
    preOrder(tree, (n) => {
      size++;
      if (n.kind === Kind.CallIndirect) sites++;
      if (n.kind === Kind.Call && n.callee === safepointFn) safepoints++;
      if (n.kind === Kind.Call && n.callee !== safepointFn && mayUnwind(n.callee!)) {
        sites++;
        calls.add(n.callee!);
      }
      if (isPoint(n, safepointFn)) points++;
    });
    callees.set(f.name, calls);
    if (process.env['FERRY_LOOP_RESUME_DEBUG'] && sites >= 8) process.stderr.write(`loop-resume: ${f.name} size ${size} sites ${sites} loop heads ${points}\n`);
    const entrySafepoint = hasEntrySafepoint(tree, safepointFn);
    if (points > 0 && size >= LOOP_RESUME_MIN_EXPRESSIONS && sites >= LOOP_RESUME_MIN_CALL_SITES) {
      candidates.set(f.name, { name: f.name, sites, entrySafepoint, escape: false });
    }
    const onlyHeadsAndEntry = safepoints === points + (entrySafepoint ? 1 : 0);
    if (escape && (points > 0 || sites > 0) && onlyHeadsAndEntry && size <= ESCAPE_MAX_EXPRESSIONS) {
      escapes.set(f.name, { name: f.name, sites, entrySafepoint, escape: true });
    }
  }
  // While a chosen function is in a call, nothing below it can pause: one that calls down (by
  // direct calls) into a candidate with more call sites than its own (the engine it drives: a
  // shell above its interpreter loop) would hold a pause for all of that engine's run. Recursion
  // is allowed (SQLite's interpreter re-enters itself for nested statements): an inner activation
  // cannot suspend while the outer one is in its call, so the pause waits for the outer loop head.
  const reachesCandidate = (from: string): boolean => {
    const seen = new Set<string>();
    const todo = [...(callees.get(from) ?? [])];
    const own = candidates.get(from)!.sites;
    while (todo.length > 0) {
      const g = todo.pop()!;
      const c = candidates.get(g);
      if (c && c.sites > own) return true;
      if (seen.has(g)) continue;
      seen.add(g);
      for (const h of callees.get(g) ?? []) todo.push(h);
    }
    return false;
  };
  const chosen = [...candidates.values()].filter((c) => !reachesCandidate(c.name));
  if (process.env['FERRY_LOOP_RESUME_DEBUG']) {
    process.stderr.write(`loop-resume: candidates ${[...candidates.keys()].join(' ')}; chosen ${chosen.map((c) => c.name).join(' ')}\n`);
  }
  // A candidate left out here may still escape: an escaping fast body counts no activation of its
  // own in ferry$pinned, so it holds no pause below it.
  for (const c of chosen) escapes.delete(c.name);
  return [...chosen, ...escapes.values()];
}
