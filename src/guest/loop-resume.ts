// Loop-head-resumable functions: Asyncify taken out of big functions that call a lot.
//
// Asyncify lets a rewind re-enter a function at any of its call sites: every statement gets a
// guard, every call a state check, and every local is saved at one exit, so V8 keeps them all
// alive across the whole function (SQLite's interpreter loop: 8× the machine code, half the run
// time). A function chosen here (`chooseFunctions`: big, many call sites that may unwind, every
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
// F$fast and F$resume are in Asyncify's removelist: they can never be unwound, so while one is in
// the middle of a call nothing below it may unwind. The global `ferry$pinned` counts the active
// ones (F increments it around the call); the worker's safepoint and blocking WASI calls refuse to
// unwind while it is non-zero, and a suspend check requires it to be exactly 1 (its own). A pause
// then completes at the next loop head of the outermost such function. The cost of that rule: a
// callee that never returns (a spinning callback, endless recursion below F) makes the guest
// unpausable, which is why this is off by default (FERRY_LOOP_RESUME=1 turns it on).
import { childVisitors, SAFEPOINT_FLAG_ADDR, type BinaryenApi, type ChildVisitor } from './instrument.js';
import { hoistUnwindingCalls } from './call-hoist.js';
import { liveAtLoopHeads, members, type LocalSet } from './liveness.js';
import { ATCALL_EXPORT, G_ATCALL, G_UNWINDING, HOLD_FN, HOLD_IMPORT, REWIND_FN, REWIND_IMPORT, UNWINDING_EXPORT, wrapResumableCalls } from './call-resume.js';
import { Kind, preOrder, readTree, UnsupportedExpression, type WNode } from './wasm-tree.js';

/** The exported global the worker reads: how many loop-head-resumable activations are running. */
export const PINNED_EXPORT = 'ferry_pinned';
/** A function is worth it only with this much code (expressions) ... */
export const LOOP_RESUME_MIN_EXPRESSIONS = 2048;
/** ... and this many call sites that may unwind (each costs Asyncify a guard and a state check). */
export const LOOP_RESUME_MIN_CALL_SITES = 32;

export function loopResumeEnabled(): boolean {
  return process.env['FERRY_LOOP_RESUME'] === '1';
}

const G_RESUME = 'ferry$resume';
const G_SUSPENDED = 'ferry$suspended';
const G_PINNED = 'ferry$pinned';
const saveSlot = (type: string, j: number): string => `ferry$save_${type}_${j}`;

interface Chosen {
  name: string;
  tree: WNode;
  points: WNode[]; // loops whose head has a safepoint, pre-order: point k is points[k - 1]
  sites: number; // call sites that may unwind
}

function isPoint(n: WNode, safepointFn: string): boolean {
  const body = n.children[0];
  const head = body?.kind === Kind.Block ? body.children[0] : undefined;
  return n.kind === Kind.Loop && head?.kind === Kind.Call && head.callee === safepointFn;
}

/**
 * Functions worth splitting: at least LOOP_RESUME_MIN_EXPRESSIONS of code and
 * LOOP_RESUME_MIN_CALL_SITES call sites that may unwind (calls to what `mayUnwind` names, and
 * `call_indirect`), with at least one loop-head safepoint.
 */
function chooseFunctions(b: BinaryenApi, mod: BinaryenApi, safepointFn: string, mayUnwind: (callee: string) => boolean): Chosen[] {
  const fields = childVisitors(b);
  const candidates = new Map<string, Chosen>();
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
    const points: WNode[] = [];
    const calls = new Set<string>();
    preOrder(tree, (n) => {
      size++;
      if (n.kind === Kind.CallIndirect) sites++;
      if (n.kind === Kind.Call && n.callee !== safepointFn && mayUnwind(n.callee!)) {
        sites++;
        calls.add(n.callee!);
      }
      if (isPoint(n, safepointFn)) points.push(n);
    });
    callees.set(f.name, calls);
    if (process.env['FERRY_LOOP_RESUME_DEBUG'] && sites >= 8) process.stderr.write(`loop-resume: ${f.name} size ${size} sites ${sites} loop heads ${points.length}\n`);
    if (points.length > 0 && size >= LOOP_RESUME_MIN_EXPRESSIONS && sites >= LOOP_RESUME_MIN_CALL_SITES) {
      candidates.set(f.name, { name: f.name, tree, points, sites });
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
  return chosen;
}

/**
 * Splits the chosen functions (see the top of this file) and returns the names Asyncify must
 * leave alone. Runs after safepoints are placed (`call safepointFn` at entries and loop heads) and
 * before they are inlined.
 */
export function resumeAtLoopHeads(b: BinaryenApi, mod: BinaryenApi, safepointFn: string, mayUnwind: (callee: string) => boolean): string[] {
  const fields = childVisitors(b);
  const typeName = new Map<number, string>([[b.i32, 'i32'], [b.i64, 'i64'], [b.f32, 'f32'], [b.f64, 'f64'], [b.v128, 'v128']]);
  const slots = new Map<string, number>(); // type → save globals needed
  const removelist: string[] = [];
  let anyCalls = false;
  let k = 0;
  for (const c of chooseFunctions(b, mod, safepointFn, mayUnwind)) {
    const fnRef = mod.getFunction(c.name);
    const before = b.getFunctionInfo(fnRef);
    if ([...b.expandType(before.params), ...(before.vars as number[])].some((t: number) => !typeName.has(t))) continue;
    // Every call that may unwind becomes a statement of its own (call-hoist.ts) and then a
    // resumable call site (call-resume.ts), or the function is not split: a call the split
    // function could not be resumed in would hold a pause for as long as the callee runs.
    const original: number = before.body;
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
    const placeChecks = (root: WNode, pts: WNode[]): void => {
      pts.forEach((p, i) => {
        if (p.kind === Kind.Block) {
          b.Block.setChildAt(p.expr, 3, unwindCheck(b, mod, i + 1, slotMaps[i]!, localTypes, results));
          return;
        }
        const head = p.children[0]!;
        const check = suspendCheck(b, mod, i + 1, slotMaps[i]!, localTypes, results);
        b.Block.setChildAt(head.expr, 0, check);
        head.children[0] = { ...head.children[0]!, expr: check, kind: Kind.Other, children: [], callee: null };
      });
      const first = root.kind === Kind.Block ? root.children[0] : undefined;
      if (first?.kind === Kind.Call && first.callee === safepointFn) {
        const nop = mod.nop();
        b.Block.setChildAt(root.expr, 0, nop);
        root.children[0] = { ...first, expr: nop, kind: Kind.Other, children: [], callee: null };
      }
    };
    placeChecks(copyTree, copyPoints);
    const ctx: PathContext = { b, mod, rp, ranges, localTypes, slotMaps, pointIds: new Map(copyPoints.map((p, i) => [p, i + 1])) };
    let bodyCopy = copy;
    if (!steer(ctx, copyTree, (e) => { bodyCopy = e; })) {
      debug(`${c.name}: a resume point no path can be steered to; not split`);
      b.Function.setBody(fnRef, original); // leave F to Asyncify, as it was
      continue;
    }
    placeChecks(tree, points);
    anyCalls ||= calls.size > 0;
    for (const m of slotMaps) {
      const perType = new Map<string, number>();
      for (const s of m.values()) {
        const t = s.split('_')[1]!;
        perType.set(t, (perType.get(t) ?? 0) + 1);
      }
      for (const [t, n] of perType) slots.set(t, Math.max(slots.get(t) ?? 0, n));
    }

    const plain = /^[A-Za-z0-9_.$]+$/.test(c.name);
    const fast = plain ? `${c.name}$ferry_fast` : `ferry$fast${k}`;
    const resume = plain ? `${c.name}$ferry_resume` : `ferry$resume${k}`;
    k++;
    const vars = [...(info.vars as number[]), b.i32];
    const body = info.body as number;
    mod.removeFunction(c.name);
    mod.addFunction(fast, info.params, results, vars, body);
    mod.addFunction(resume, info.params, results, vars, mod.block(null, [mod.local.set(rp, mod.global.get(G_RESUME, b.i32)), bodyCopy], results));
    addWrapper(b, mod, c.name, fast, resume, params, results, slotMaps, localTypes, typeName, safepointFn);
    removelist.push(fast, resume);
  }
  if (removelist.length === 0) return removelist;
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
  return removelist;
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

function zero(b: BinaryenApi, mod: BinaryenApi, t: number): number {
  if (t === b.i32) return mod.i32.const(0);
  if (t === b.i64) return mod.i64.const(0n);
  if (t === b.f32) return mod.f32.const(0);
  if (t === b.f64) return mod.f64.const(0);
  return mod.v128.const(new Array<number>(16).fill(0));
}

/** `if (pause pending && ferry$pinned == 1) { save the live locals; record point k; return }`. */
function suspendCheck(b: BinaryenApi, mod: BinaryenApi, k: number, slots: Map<number, string>, localTypes: number[], results: number): number {
  const saves = [...slots].map(([x, g]) => mod.global.set(g, mod.local.get(x, localTypes[x])));
  const ret = results === b.none ? mod.return() : mod.return(zero(b, mod, results));
  return mod.if(
    mod.i64.ne(mod.i64.atomic.load(0, mod.i32.const(SAFEPOINT_FLAG_ADDR)), mod.i64.const(0n)),
    mod.if(
      mod.i32.and(
        mod.i32.ne(mod.i32.atomic.load(0, mod.i32.const(SAFEPOINT_FLAG_ADDR)), mod.i32.const(0)),
        mod.i32.eq(mod.i32.sub(mod.global.get(G_PINNED, b.i32), mod.global.get(G_ATCALL, b.i32)), mod.i32.const(1)),
      ),
      mod.block(null, [...saves, mod.global.set(G_SUSPENDED, mod.i32.const(k)), ret]),
    ),
  );
}

/** After a resumable call: `if (an unwind runs) { save the locals; record call k; return }`. */
function unwindCheck(b: BinaryenApi, mod: BinaryenApi, k: number, slots: Map<number, string>, localTypes: number[], results: number): number {
  const saves = [...slots].map(([x, g]) => mod.global.set(g, mod.local.get(x, localTypes[x])));
  const ret = results === b.none ? mod.return() : mod.return(zero(b, mod, results));
  return mod.if(mod.global.get(G_UNWINDING, b.i32), mod.block(null, [mod.call(HOLD_FN, [], b.none), ...saves, mod.global.set(G_SUSPENDED, mod.i32.const(k)), ret]));
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

interface PathContext {
  b: BinaryenApi;
  mod: BinaryenApi;
  rp: number;
  ranges: Map<WNode, [number, number]>; // the resume points in each subtree: ids lo..hi
  localTypes: number[];
  slotMaps: Map<number, string>[];
  pointIds: Map<WNode, number>;
}

/** For every subtree holding resume points, the range of their ids (pre-order numbering). */
function pointRanges(root: WNode, points: Set<WNode>): Map<WNode, [number, number]> {
  const ranges = new Map<WNode, [number, number]>();
  let next = 1;
  const go = (n: WNode): void => {
    const lo = next;
    if (points.has(n)) next++;
    for (const ch of n.children) go(ch);
    if (next > lo) ranges.set(n, [lo, next - 1]);
  };
  go(root);
  return ranges;
}

/**
 * Guards the paths from `n`'s entry to the resume points inside it, so that entering `n` with
 * rp = one of them reaches that loop head, restores its locals and clears rp, and entering it with
 * rp = 0 runs it as before. `replace` puts another expression in `n`'s place. False when a
 * point sits where no path can be steered (after a sibling operand that must run first).
 */
function steer(ctx: PathContext, n: WNode, replace: ((e: number) => void) | null): boolean {
  const { b, mod } = ctx;
  const rp = (): number => mod.local.get(ctx.rp, b.i32);
  const inRange = (r: [number, number]): number => mod.i32.lt_u(mod.i32.sub(rp(), mod.i32.const(r[0])), mod.i32.const(r[1] - r[0] + 1));
  const statement = n.kind !== Kind.Loop ? ctx.pointIds.get(n) : undefined;
  if (statement !== undefined) {
    // A resumable call: restore, restart the rewind, and run the statement (the callee rewinds).
    if (!replace) return false;
    const slots = ctx.slotMaps[statement - 1]!;
    const restores = [...slots].map(([x, g]) => mod.local.set(x, mod.global.get(g, ctx.localTypes[x])));
    const restore = mod.if(mod.i32.eq(rp(), mod.i32.const(statement)), mod.block(null, [...restores, mod.local.set(ctx.rp, mod.i32.const(0)), mod.call(REWIND_FN, [], b.none)]));
    replace(mod.block(null, [restore, n.expr], b.none));
    return true;
  }
  switch (n.kind) {
    case Kind.Block: {
      const kids = n.children;
      let last = -1;
      kids.forEach((ch, j) => { if (ctx.ranges.has(ch)) last = j; });
      let group = -1; // first of a run of children without points, to be skipped on resume
      const flush = (end: number): void => {
        if (group < 0) return;
        const run = kids.slice(group, end).map((ch) => ch.expr);
        b.Block.setChildAt(n.expr, group, mod.if(mod.i32.eqz(rp()), mod.block(null, run)));
        for (let j = group + 1; j < end; j++) b.Block.setChildAt(n.expr, j, mod.nop());
        group = -1;
      };
      for (let j = 0; j < last; j++) {
        const r = ctx.ranges.get(kids[j]!);
        if (!r) {
          if (group < 0) group = j;
          continue;
        }
        flush(j);
        if (!steer(ctx, kids[j]!, (e) => b.Block.setChildAt(n.expr, j, e))) return false;
        const cur = b.Block.getChildAt(n.expr, j);
        b.Block.setChildAt(n.expr, j, mod.if(mod.i32.or(mod.i32.eqz(rp()), inRange(r)), cur));
      }
      flush(last);
      if (!steer(ctx, kids[last]!, (e) => b.Block.setChildAt(n.expr, last, e))) return false;
      b._BinaryenExpressionFinalize(n.expr);
      return true;
    }
    case Kind.Loop: {
      const id = ctx.pointIds.get(n);
      const body = n.children[0]!;
      const r = ctx.ranges.get(body);
      if (r && !steer(ctx, body, (e) => b.Loop.setBody(n.expr, e))) return false;
      b._BinaryenExpressionFinalize(n.expr);
      if (id === undefined) return true;
      if (!replace) return false;
      const slots = ctx.slotMaps[id - 1]!;
      const restores = [...slots].map(([x, g]) => mod.local.set(x, mod.global.get(g, ctx.localTypes[x])));
      const restore = mod.if(mod.i32.eq(rp(), mod.i32.const(id)), mod.block(null, [...restores, mod.local.set(ctx.rp, mod.i32.const(0))]));
      replace(mod.block(null, [restore, n.expr], b.getExpressionType(n.expr)));
      return true;
    }
    case Kind.If: {
      const [cond, ifTrue, ifFalse] = n.children;
      if (ctx.ranges.has(cond!)) {
        if (ctx.ranges.has(ifTrue!) || (ifFalse && ctx.ranges.has(ifFalse))) return false;
        if (!steer(ctx, cond!, (e) => b.If.setCondition(n.expr, e))) return false;
        b._BinaryenExpressionFinalize(n.expr);
        return true;
      }
      const rt = ctx.ranges.get(ifTrue!);
      b.If.setCondition(n.expr, mod.if(rp(), rt ? inRange(rt) : mod.i32.const(0), cond!.expr));
      if (rt && !steer(ctx, ifTrue!, (e) => b.If.setIfTrue(n.expr, e))) return false;
      if (ifFalse && ctx.ranges.has(ifFalse) && !steer(ctx, ifFalse, (e) => b.If.setIfFalse(n.expr, e))) return false;
      b._BinaryenExpressionFinalize(n.expr);
      return true;
    }
    default: {
      // Any other expression: the points must all be in the operand evaluated first.
      if (n.children.slice(1).some((ch) => ctx.ranges.has(ch))) return false;
      const id = b.getExpressionId(n.expr) as number;
      const first = n.children[0]!;
      let set: ((e: number) => void) | null = null;
      if (id === b.LocalSetId) set = (e) => b.LocalSet.setValue(n.expr, e);
      else if (id === b.DropId) set = (e) => b.Drop.setValue(n.expr, e);
      else if (id === b.ReturnId) set = (e) => b.Return.setValue(n.expr, e);
      else if (id === b.GlobalSetId) set = (e) => b.GlobalSet.setValue(n.expr, e);
      if (!steer(ctx, first, set)) return false;
      b._BinaryenExpressionFinalize(n.expr);
      return true;
    }
  }
}

/**
 * F: calls F$fast (or F$resume with the saved locals when resuming) with ferry$pinned raised;
 * when the callee suspended, keeps its saved locals in F's own locals (Asyncify saves those) and
 * calls the safepoint, which unwinds; after a rewind the safepoint returns and F loops to resume.
 */
function addWrapper(
  b: BinaryenApi, mod: BinaryenApi, name: string, fast: string, resume: string, params: number[], results: number,
  slotMaps: Map<number, string>[], localTypes: number[], typeName: Map<number, string>, safepointFn: string,
): void {
  const counts = new Map<string, { type: number; n: number }>();
  for (const m of slotMaps) {
    const per = new Map<number, number>();
    for (const x of m.keys()) per.set(localTypes[x]!, (per.get(localTypes[x]!) ?? 0) + 1);
    for (const [t, n] of per) {
      const key = typeName.get(t)!;
      counts.set(key, { type: t, n: Math.max(counts.get(key)?.n ?? 0, n) });
    }
  }
  const vars: number[] = [b.i32];
  const rp = params.length;
  let r = -1;
  if (results !== b.none) {
    r = params.length + vars.length;
    vars.push(results);
  }
  const held: { local: number; global: string; type: number }[] = [];
  for (const [t, { type, n }] of counts) {
    for (let j = 0; j < n; j++) {
      held.push({ local: params.length + vars.length, global: saveSlot(t, j), type });
      vars.push(type);
    }
  }
  const args = (): number[] => params.map((t, i) => mod.local.get(i, t));
  const pinned = (delta: number): number => mod.global.set(G_PINNED, mod.i32.add(mod.global.get(G_PINNED, b.i32), mod.i32.const(delta)));
  const callFast = mod.call(fast, args(), results);
  const callResume = mod.block(null, [
    mod.global.set(G_RESUME, mod.local.get(rp, b.i32)),
    ...held.map((h) => mod.global.set(h.global, mod.local.get(h.local, h.type))),
    mod.call(resume, args(), results),
  ], results);
  const call = mod.if(mod.i32.eqz(mod.local.get(rp, b.i32)), callFast, callResume);
  const again = 'ferry$again';
  const loop = mod.loop(again, mod.block(null, [
    pinned(1),
    results === b.none ? call : mod.local.set(r, call),
    pinned(-1),
    mod.local.set(rp, mod.global.get(G_SUSPENDED, b.i32)),
    mod.if(mod.local.get(rp, b.i32), mod.block(null, [
      mod.global.set(G_SUSPENDED, mod.i32.const(0)),
      ...held.map((h) => mod.local.set(h.local, mod.global.get(h.global, h.type))),
      mod.call(safepointFn, [mod.i32.const(0)], b.none),
      mod.br(again),
    ])),
  ]));
  const tail = results === b.none ? [] : [mod.local.get(r, results)];
  mod.addFunction(name, b.createType(params), results, vars, mod.block(null, [mod.call(safepointFn, [mod.i32.const(0)], b.none), loop, ...tail], results));
}
