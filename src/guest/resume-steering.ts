// The paths of F$resume (loop-resume.ts) from its entry to each resume point: guarded by the
// resume point so that a resumed activation reaches the one it suspended at, restores its locals
// there and runs on, and an activation with no resume point runs the body as before.
import type { BinaryenApi } from './binaryen-api.js';
import { REWIND_FN } from './call-resume.js';
import { Kind, type WNode } from './wasm-tree.js';

export interface PathContext {
  b: BinaryenApi;
  mod: BinaryenApi;
  rp: number;
  ranges: Map<WNode, [number, number]>; // the resume points in each subtree: ids lo..hi
  localTypes: number[];
  slotMaps: Map<number, string>[];
  pointIds: Map<WNode, number>;
}

/** For every subtree holding resume points, the range of their ids (pre-order numbering). */
export function pointRanges(root: WNode, points: Set<WNode>): Map<WNode, [number, number]> {
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
export function steer(ctx: PathContext, n: WNode, replace: ((e: number) => void) | null): boolean {
  const { b, mod } = ctx;
  const rp = (): number => mod.local.get(ctx.rp, b.i32);
  const inRange = (r: [number, number]): number => mod.i32.lt_u(mod.i32.sub(rp(), mod.i32.const(r[0])), mod.i32.const(r[1] - r[0] + 1));
  const statement = n.kind !== Kind.Loop ? ctx.pointIds.get(n) : undefined;
  if (statement !== undefined) {
    // A resumable call: restore, restart the rewind, and run the statement (the callee rewinds).
    if (!replace) return false;
    const restore = mod.if(mod.i32.eq(rp(), mod.i32.const(statement)), mod.block(null, [mod.local.set(ctx.rp, mod.i32.const(0)), mod.call(REWIND_FN, [], b.none)]));
    replace(mod.block(null, [restore, n.expr], b.none));
    return true;
  }
  switch (n.kind) {
    case Kind.Block: {
      const kids = n.children;
      // Finalizing a named block walks all of it for branches to it, and steer finalizes every
      // block on the way to each point: quadratic in the nested blocks of a big switch (cmark: 1.9
      // of its ~18 s instrumenting). Only two changes here can change the block's type: a child
      // that was unreachable now wrapped in an `if` (then the block was unreachable), and a new
      // type of its final child (steered in place). Otherwise its type stands, unfinalized.
      const typeBefore = b.getExpressionType(n.expr);
      const finalType = (): number => b.getExpressionType(b.Block.getChildAt(n.expr, kids.length - 1));
      const finalTypeBefore = finalType();
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
      if (typeBefore === b.unreachable || finalType() !== finalTypeBefore) b._BinaryenExpressionFinalize(n.expr);
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
      const restore = mod.if(mod.i32.eq(rp(), mod.i32.const(id)), mod.local.set(ctx.rp, mod.i32.const(0)));
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
 * The saved locals of resume point rp, restored at F$resume's entry. Nothing on a steered path
 * writes a local before the point (statements before it are skipped, `if` conditions are not
 * evaluated, a point is only ever in the operand evaluated first), so this is the same as
 * restoring them at the point; in one place, TurboFan gives F$resume a far smaller frame (a
 * restore at each of a hundred points made it ~14 KB, which limited recursion through it).
 */
export function entryRestores(ctx: PathContext): number {
  const { b, mod } = ctx;
  const cases = ctx.slotMaps.map((slots, i) => {
    const restores = [...slots].map(([x, g]) => mod.local.set(x, mod.global.get(g, ctx.localTypes[x])));
    return mod.if(mod.i32.eq(mod.local.get(ctx.rp, b.i32), mod.i32.const(i + 1)), mod.block(null, restores, b.none));
  });
  return mod.block(null, cases, b.none);
}
