// A function body read once out of Binaryen into plain JavaScript objects, children in the order
// Wasm evaluates them. The analyses of loop-resume.ts walk a big function many times (liveness
// iterates every loop to a fixed point); Binaryen's accessors cost a call into its Wasm each, so
// they are paid once here.
import type { BinaryenApi, ChildVisitor } from './binaryen-api.js';

export const enum Kind {
  Get,
  Set,
  Block,
  Loop,
  If,
  Br,
  Switch,
  Return,
  Unreachable,
  Call,
  CallIndirect,
  Other,
}

export interface WNode {
  expr: number;
  kind: Kind;
  /** Evaluation order. If: [condition, ifTrue, ifFalse?]; Br/Switch: [value?, condition?]. */
  children: WNode[];
  /** Get/Set: the local. */
  local: number;
  /** Block/Loop: its label; Br: the target. */
  name: string | null;
  /** Switch: every target, default included. */
  targets: string[];
  /** Br: a br_if. */
  conditional: boolean;
  /** Call: the callee. */
  callee: string | null;
}

export class UnsupportedExpression extends Error {}

/** The tree of `expr`; throws UnsupportedExpression on a kind `fields` does not know. */
export function readTree(b: BinaryenApi, fields: Map<number, ChildVisitor>, expr: number): WNode {
  const node = (e: number, kind: Kind, children: WNode[]): WNode => ({
    expr: e, kind, children, local: -1, name: null, targets: [], conditional: false, callee: null,
  });
  const read = (e: number): WNode => {
    const id = b.getExpressionId(e) as number;
    if (id === b.LocalGetId) {
      const n = node(e, Kind.Get, []);
      n.local = b.LocalGet.getIndex(e);
      return n;
    }
    if (id === b.LocalSetId) {
      const n = node(e, Kind.Set, [read(b.LocalSet.getValue(e))]);
      n.local = b.LocalSet.getIndex(e);
      return n;
    }
    if (id === b.BlockId) {
      const k: number = b.Block.getNumChildren(e);
      const kids: WNode[] = [];
      for (let i = 0; i < k; i++) kids.push(read(b.Block.getChildAt(e, i)));
      const n = node(e, Kind.Block, kids);
      n.name = b.Block.getName(e) || null;
      return n;
    }
    if (id === b.LoopId) {
      const n = node(e, Kind.Loop, [read(b.Loop.getBody(e))]);
      n.name = b.Loop.getName(e) || null;
      return n;
    }
    if (id === b.IfId) {
      const f: number = b.If.getIfFalse(e);
      const kids = [read(b.If.getCondition(e)), read(b.If.getIfTrue(e))];
      if (f) kids.push(read(f));
      return node(e, Kind.If, kids);
    }
    if (id === b.BreakId) {
      const v: number = b.Break.getValue(e);
      const c: number = b.Break.getCondition(e);
      const kids: WNode[] = [];
      if (v) kids.push(read(v));
      if (c) kids.push(read(c));
      const n = node(e, Kind.Br, kids);
      n.name = b.Break.getName(e);
      n.conditional = c !== 0;
      return n;
    }
    if (id === b.SwitchId) {
      const v: number = b.Switch.getValue(e);
      const kids: WNode[] = [];
      if (v) kids.push(read(v));
      kids.push(read(b.Switch.getCondition(e)));
      const n = node(e, Kind.Switch, kids);
      const k: number = b.Switch.getNumNames(e);
      for (let i = 0; i < k; i++) n.targets.push(b.Switch.getNameAt(e, i));
      n.targets.push(b.Switch.getDefaultName(e));
      return n;
    }
    if (id === b.CallIndirectId) {
      const k: number = b.CallIndirect.getNumOperands(e);
      const kids: WNode[] = [];
      for (let i = 0; i < k; i++) kids.push(read(b.CallIndirect.getOperandAt(e, i)));
      kids.push(read(b.CallIndirect.getTarget(e))); // the table index is evaluated last
      return node(e, Kind.CallIndirect, kids);
    }
    const visitor = fields.get(id);
    if (!visitor) throw new UnsupportedExpression();
    const kids: WNode[] = [];
    visitor(e, (c) => {
      if (c) kids.push(read(c));
    });
    if (id === b.CallId) {
      const n = node(e, Kind.Call, kids);
      n.callee = b.Call.getTarget(e);
      return n;
    }
    if (id === b.ReturnId) return node(e, Kind.Return, kids);
    if (id === b.UnreachableId) return node(e, Kind.Unreachable, kids);
    return node(e, Kind.Other, kids);
  };
  return read(expr);
}

/** Every node of the tree, parents before children (pre-order). */
export function preOrder(root: WNode, visit: (n: WNode, parent: WNode | null, slot: number) => void): void {
  const go = (n: WNode, parent: WNode | null, slot: number): void => {
    visit(n, parent, slot);
    n.children.forEach((c, i) => go(c, n, i));
  };
  go(root, null, 0);
}
