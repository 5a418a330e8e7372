// Loop-head-resumable functions: Asyncify taken out of big functions that call a lot.
//
// Asyncify lets a rewind re-enter a function at any of its call sites: every statement gets a
// guard, every call a state check, and every local is saved at one exit, so V8 keeps them all
// alive across the whole function (SQLite's interpreter loop: 8× the machine code, half the run
// time). A function chosen here (resume-selection.ts: big, many call sites that may unwind, every
// safepoint at a loop head whose path from the entry can be steered) is split in three:
//
//  - F$fast: the original body. At each loop head the safepoint becomes a suspend check: when a
//    pause is pending and no other resumable activation is on the stack, it stores the locals
//    live there (liveness.ts) in globals, records which loop head, and returns.
//  - F$resume: a copy whose paths from the entry to each loop head are guarded by the resume
//    point (a local, `rp`): statements before the one that holds the target are skipped, `if`s
//    are steered by rp instead of their condition, and the live locals are restored just before
//    the loop is entered. Only a resumed activation runs it, for the rest of that activation.
//  - F: a small wrapper, instrumented by Asyncify like any other function. It calls F$fast (or
//    F$resume when resuming), and when the callee suspended, copies the saved locals into its own
//    locals and calls the safepoint, which unwinds F and everything above it as usual.
//
// F$fast and F$resume are in Asyncify's removelist: they can never be unwound by Asyncify. So
// every call in them that may unwind is a resumable call site (call-hoist.ts moves such calls out
// of expressions, call-resume.ts wraps them): when the callee unwinds, the split function saves
// its locals and returns to F, which unwinds as above, and on resume F$resume re-enters that call
// with the rewind restarted. `ferry$pinned` counts running split activations (F raises it around
// its call) and `ferry$atcall` those waiting in a resumable call; the worker unwinds only while
// the two are equal, and a suspend check requires their difference to be 1 (its own activation).
// A function in which some call that may unwind cannot be made resumable is not split.
// On by default since instrumentation version 13; FERRY_LOOP_RESUME=0 turns it off (a module is
// cached per setting, and a migration's two ends and a snapshot's restorer must agree on it).
import { childVisitors, type BinaryenApi, type ChildVisitor } from './binaryen-api.js';
import { hoistUnwindingCalls } from './call-hoist.js';
import { liveAtLoopHeads, members } from './liveness.js';
import { ATCALL_EXPORT, G_ATCALL, G_UNWINDING, HOLD_FN, HOLD_IMPORT, REWIND_FN, REWIND_IMPORT, UNWINDING_EXPORT, wrapResumableCalls } from './call-resume.js';
import { chooseFunctions, hasEntrySafepoint, isPoint } from './resume-selection.js';
import { addWrapper, G_PINNED, G_RESUME, G_SUSPENDED, SAVES_PREFIX, saveSlot, suspendCheck, unwindCheck, zero, type SuspendExit } from './resume-frame.js';
import { SAFEPOINT_FLAG_ADDR } from './instrument-meta.js';
import { entryRestores, pointRanges, steer, type PathContext } from './resume-steering.js';
import { Kind, preOrder, readTree, type WNode } from './wasm-tree.js';


/** The exported global the worker reads: how many loop-head-resumable activations are running. */
export const PINNED_EXPORT = 'ferry_pinned';

/**
 * Splits the chosen functions (see the top of this file) and returns the names Asyncify must
 * leave alone. Runs after safepoints are placed (`call safepointFn` at entries and loop heads) and
 * before they are inlined.
 */
export function resumeAtLoopHeads(b: BinaryenApi, mod: BinaryenApi, safepointFn: string, mayUnwind: (callee: string) => boolean, escape: boolean): LoopResumeResult {
  const fields = childVisitors(b);
  const typeName = new Map<number, string>([[b.i32, 'i32'], [b.i64, 'i64'], [b.f32, 'f32'], [b.f64, 'f64'], [b.v128, 'v128']]);
  const slots = new Map<string, number>(); // type → save globals needed
  const removelist: string[] = [];
  const escapes: Escape[] = [];
  let anyCalls = false;
  let k = 0;
  for (const c of chooseFunctions(b, mod, safepointFn, mayUnwind, escape)) {
    const fnRef = mod.getFunction(c.name);
    const before = b.getFunctionInfo(fnRef);
    if ([...b.expandType(before.params), ...(before.vars as number[])].some((t: number) => !typeName.has(t))) continue;
    // Every call that may unwind becomes a statement of its own (call-hoist.ts) and then a
    // resumable call site (call-resume.ts), or the function is not split: a call the split
    // function could not be resumed in would hold a pause for as long as the callee runs.
    let original: number = before.body;
    if (c.escape && c.entrySafepoint) {
      // The entry safepoint of an escaping function (it is on a cycle: recursion) becomes a loop
      // head nothing branches to, so that it is a resume point like the others: its live locals
      // are the parameters (and locals read before any write, which the restore zeroes again).
      original = mod.loop(null, original);
      b.Function.setBody(fnRef, original);
    }
    const unwinding = (call: number): boolean =>
      b.getExpressionId(call) === b.CallIndirectId || (b.Call.getTarget(call) !== safepointFn && mayUnwind(b.Call.getTarget(call)));
    const hoisted = hoistUnwindingCalls(b, mod, fnRef, original, unwinding);
    if (hoisted === null) {
      debug(`${c.name}: a call that may unwind cannot be moved into a statement; not split`);
      continue;
    }
    b.Function.setBody(fnRef, hoisted);
    const calls = wrapResumableCalls(b, mod, fnRef, hoisted, mayUnwind, safepointFn, (e, f) => fields.get(b.getExpressionId(e))!(e, f));
    const unresumable = countUnwindingCalls(b, fields, hoisted, unwinding) - calls.size;
    if (unresumable !== 0) {
      debug(`${c.name}: ${unresumable} calls that may unwind are not resumable; not split`);
      b.Function.setBody(fnRef, original);
      continue;
    }
    const info = b.getFunctionInfo(fnRef);
    const params: number[] = b.expandType(info.params);
    const localTypes: number[] = [...params, ...(info.vars as number[])];
    const rp = localTypes.length; // the resume point, a local of F$resume
    const tree = readTree(b, fields, info.body);
    const nodes: WNode[] = [];
    preOrder(tree, (n) => nodes.push(n));
    const pointAt: number[] = []; // pre-order index of each point (the copy has the same shape)
    nodes.forEach((n, i) => {
      if (isPoint(n, safepointFn) || calls.has(n.expr)) pointAt.push(i);
    });
    const points = pointAt.map((i) => nodes[i]!);
    const live = liveAtLoopHeads(tree, localTypes.length, new Set(points.filter((p) => p.kind === Kind.Block)));
    const liveAt = points.map((p) => {
      const at = members(live.get(p)!);
      if (p.kind === Kind.Block) for (const x of operandReads(p)) if (!at.includes(x)) at.push(x);
      return at;
    });
    const slotOf = (at: number[]): Map<number, string> => {
      const next = new Map<string, number>();
      const out = new Map<number, string>();
      for (const x of at) {
        const t = typeName.get(localTypes[x]!)!;
        const j = next.get(t) ?? 0;
        next.set(t, j + 1);
        out.set(x, saveSlot(t, j));
      }
      return out;
    };
    const slotMaps = liveAt.map(slotOf);

    const copy: number = mod.copyExpression(info.body);
    const copyTree = readTree(b, fields, copy);
    const copyNodes: WNode[] = [];
    preOrder(copyTree, (n) => copyNodes.push(n));
    if (copyNodes.length !== nodes.length) throw new Error('internal: a copied function differs from its original');
    const copyPoints = pointAt.map((i) => copyNodes[i]!);
    const ranges = pointRanges(copyTree, new Set(copyPoints));
    const results: number = info.results;
    // The safepoints become suspend checks, resumable calls get their unwind checks (in the copy
    // before its paths are guarded, which moves statements into guards; in the original only once
    // the copy is known to be steerable).
    const placeChecks = (root: WNode, pts: WNode[], exit: SuspendExit): void => {
      pts.forEach((p, i) => {
        if (p.kind === Kind.Block) {
          b.Block.setChildAt(p.expr, 3, unwindCheck(b, mod, i + 1, slotMaps[i]!, localTypes, results, exit));
          // An escaping fast body runs with no activation of its own counted in ferry$pinned, so
          // its calls are not counted in ferry$atcall either (only its resume copy's are).
          if (exit.kind === 'escape') for (const at of [0, 2]) b.Block.setChildAt(p.expr, at, mod.nop());
          return;
        }
        const head = p.children[0]!;
        const check = suspendCheck(b, mod, i + 1, slotMaps[i]!, localTypes, results, exit);
        b.Block.setChildAt(head.expr, 0, check);
        head.children[0] = { ...head.children[0]!, expr: check, kind: Kind.Other, children: [], callee: null };
      });
      if (hasEntrySafepoint(root, safepointFn)) {
        const nop = mod.nop();
        b.Block.setChildAt(root.expr, 0, nop);
        root.children[0] = { ...root.children[0]!, expr: nop, kind: Kind.Other, children: [], callee: null };
      }
    };
    placeChecks(copyTree, copyPoints, { kind: 'return' });
    const ctx: PathContext = { b, mod, rp, ranges, localTypes, slotMaps, pointIds: new Map(copyPoints.map((p, i) => [p, i + 1])) };
    let bodyCopy = copy;
    if (!steer(ctx, copyTree, (e) => { bodyCopy = e; })) {
      debug(`${c.name}: a resume point no path can be steered to; not split`);
      b.Function.setBody(fnRef, original); // leave F to Asyncify, as it was
      continue;
    }
    // An escaping fast body becomes F itself after Asyncify (finishEscapes). It leaves through
    // its escape wrapper, which until then carries F's name (so that Asyncify instruments F's
    // callers as calling something that may unwind); its exits call a stub under the name the
    // wrapper moves to, which only forwards to F until then.
    const plain = /^[A-Za-z0-9_.$]+$/.test(c.name);
    const escape = plain ? `${c.name}${ESCAPE_SUFFIX}` : `ferry$${k}${ESCAPE_SUFFIX}`;
    placeChecks(tree, points, c.escape ? { kind: 'escape', wrapper: escape, params } : { kind: 'return' });
    anyCalls ||= calls.size > 0;
    for (const m of slotMaps) {
      const perType = new Map<string, number>();
      for (const s of m.values()) {
        const t = s.split('_')[1]!;
        perType.set(t, (perType.get(t) ?? 0) + 1);
      }
      for (const [t, n] of perType) slots.set(t, Math.max(slots.get(t) ?? 0, n));
    }

    const fast = plain ? `${c.name}$ferry_fast` : `ferry$fast${k}`;
    const resume = plain ? `${c.name}$ferry_resume` : `ferry$resume${k}`;
    k++;
    const vars = [...(info.vars as number[]), b.i32];
    const body = info.body as number;
    mod.removeFunction(c.name);
    mod.addFunction(fast, info.params, results, vars, body);
    mod.addFunction(resume, info.params, results, vars, mod.block(null, [mod.local.set(rp, mod.global.get(G_RESUME, b.i32)), entryRestores(ctx), bodyCopy], results));
    addWrapper(b, mod, c.name, c.escape ? null : fast, resume, params, results, slotMaps, localTypes, typeName, safepointFn);
    removelist.push(fast, resume);
    if (c.escape) {
      mod.addFunction(escape, info.params, results, [], mod.call(c.name, params.map((t, i) => mod.local.get(i, t)), results));
      removelist.push(escape);
      escapes.push({ name: c.name, fast, escape });
    }
  }
  if (removelist.length === 0) return { removelist, escapes };
  // The stubs must survive until finishEscapes: the safepoint check's inlining would otherwise
  // inline them (they are tiny), leaving the exits calling F, the fast body-to-be. The shared save
  // helpers exist to keep their stores out of the checks (resume-frame.ts, saveLocals).
  for (const pattern of [...(escapes.length > 0 ? [`*${ESCAPE_SUFFIX}`] : []), `${SAVES_PREFIX}*`]) {
    b.setPassArgument('no-inline', pattern);
    try {
      mod.runPasses(['no-inline']);
    } finally {
      b.clearPassArguments();
    }
  }
  for (const g of [G_RESUME, G_SUSPENDED, G_PINNED, G_ATCALL, G_UNWINDING]) mod.addGlobal(g, b.i32, true, mod.i32.const(0));
  mod.addGlobalExport(G_PINNED, PINNED_EXPORT);
  mod.addGlobalExport(G_ATCALL, ATCALL_EXPORT);
  mod.addGlobalExport(G_UNWINDING, UNWINDING_EXPORT);
  if (anyCalls) {
    mod.addFunctionImport(REWIND_FN, REWIND_IMPORT.module, REWIND_IMPORT.name, b.none, b.none);
    mod.addFunctionImport(HOLD_FN, HOLD_IMPORT.module, HOLD_IMPORT.name, b.none, b.none);
  }
  const typeOf = new Map([...typeName].map(([t, n]) => [n, t]));
  for (const [t, n] of slots) {
    for (let j = 0; j < n; j++) mod.addGlobal(saveSlot(t, j), typeOf.get(t), true, zero(b, mod, typeOf.get(t)!));
  }
  return { removelist, escapes };
}

/** What resumeAtLoopHeads leaves for the Asyncify step and after it. */
export interface LoopResumeResult {
  /** Functions Asyncify must leave alone. */
  removelist: string[];
  /** Functions whose fast body takes F's place once Asyncify has run (finishEscapes). */
  escapes: Escape[];
}

export interface Escape {
  /** F: until finishEscapes, its escape wrapper (Asyncify'd); then the fast body. */
  name: string;
  /** The fast body's function, folded into F and removed. */
  fast: string;
  /** The name the escape wrapper moves to. */
  escape: string;
}

/**
 * Escape, after Asyncify. Every function whose safepoints are all at loop heads (or its entry)
 * and whose calls that may unwind can all be made resumable is split — not only the big ones
 * chosen for a wrapper. With a wrapper, a small function would pay a second frame and the
 * wrapper's Asyncify code on every call (malloc: most of what the split saves). So here F's own
 * body becomes the fast body, with one load in front: while a rewind runs (the worker's
 * rewinding flag, bytes 20..23) F hands its call to the escape wrapper, which Asyncify rewinds
 * into its safepoint and which then runs F$resume. A suspend check in the fast body (or an unwind
 * check after a callee unwound) saves the live locals and calls the escape wrapper, which
 * unwinds (or continues the held unwind); F then returns whatever it returned, and its callers,
 * instrumented as calling something that may unwind (Asyncify saw the wrapper under F's name),
 * unwind in turn. F's own frame holds nothing by then: all of its state is in the saved locals.
 * The fast body counts no activation of its own in ferry$pinned, nor its calls in ferry$atcall
 * (only F$resume, called by the wrapper, does), so its checks want pinned − atcall = 0.
 */
export function finishEscapes(b: BinaryenApi, mod: BinaryenApi, escapes: Escape[]): void {
  for (const e of escapes) {
    const wrapper = b.getFunctionInfo(mod.getFunction(e.name));
    const fast = b.getFunctionInfo(mod.getFunction(e.fast));
    mod.removeFunction(e.name);
    mod.removeFunction(e.escape); // the stub: the fast body's exits now reach the wrapper itself
    mod.addFunction(e.escape, wrapper.params, wrapper.results, wrapper.vars, wrapper.body);
    const params: number[] = b.expandType(fast.params);
    const handOver = mod.call(e.escape, params.map((t, i) => mod.local.get(i, t)), fast.results);
    const rewinding = mod.i32.load(SAFEPOINT_FLAG_ADDR + 4, 4, mod.i32.const(0));
    const prologue = mod.if(rewinding, fast.results === b.none ? mod.block(null, [handOver, mod.return()]) : mod.return(handOver));
    mod.removeFunction(e.fast);
    mod.addFunction(e.name, fast.params, fast.results, fast.vars, mod.block(null, [prologue, fast.body], fast.results));
  }
}

/** The end of an escape wrapper's name (see finishEscapes). */
const ESCAPE_SUFFIX = '$ferry_escape';

/** Whether `name` is an escape wrapper this module made (Asyncify'd; runs only to suspend, unwind or rewind its function). */
export function isEscapeWrapper(name: string): boolean {
  return name.endsWith(ESCAPE_SUFFIX);
}

/** Whether `name` is the fast body of a split function with a wrapper (an escaping one's takes the function's own name). */
export function isFastBody(name: string): boolean {
  return name.endsWith('$ferry_fast') || /^ferry\$fast\d+$/.test(name);
}

/** Whether `name` is a resume copy this module made (warm-exports.ts has them compiled early). */
export function isResumeCopy(name: string): boolean {
  return name.endsWith('$ferry_resume') || /^ferry\$resume\d+$/.test(name);
}

function debug(message: string): void {
  if (process.env['FERRY_LOOP_RESUME_DEBUG']) process.stderr.write(`loop-resume: ${message}\n`);
}

/** Calls in `body` that `unwinding` names. */
function countUnwindingCalls(b: BinaryenApi, fields: Map<number, ChildVisitor>, body: number, unwinding: (call: number) => boolean): number {
  let n = 0;
  const go = (e: number): void => {
    if (!e) return;
    const id = b.getExpressionId(e) as number;
    if ((id === b.CallId || id === b.CallIndirectId) && unwinding(e)) n++;
    fields.get(id)!(e, go);
  };
  go(body);
  return n;
}

/** Locals read by the operands of a wrapped call statement (block [atcall+1, S, atcall-1, check]). */
function operandReads(w: WNode): number[] {
  const s = w.children[1]!;
  const call = s.kind === Kind.Call || s.kind === Kind.CallIndirect ? s : s.children[0]!;
  const out = new Set<number>();
  const go = (n: WNode): void => {
    if (n.kind === Kind.Get) out.add(n.local);
    n.children.forEach(go);
  };
  call.children.forEach(go);
  return [...out];
}
