// Calls that may unwind, moved out of expressions into statements of their own, so that every one
// of them in a split function (loop-resume.ts) can become a resumable call site (call-resume.ts).
//
// A call nested in an expression (`sum += cb(x)`, `if (cb(x))`, `br_if (call …)`, a call in
// another call's operands) cannot be re-entered on resume: the split function can only restart
// whole statements. Left as it is, it would pin: a pause would wait for the callee to return, and a
// callee that never returns would make the guest unpausable. So each such call becomes
// `local.set $t (call …)` (or a plain `call` / `drop (call)` statement) placed before its statement,
// and the statement reads `$t`. Evaluation order is kept: everything the statement evaluates before
// the call is evaluated before it still, into fresh locals, unless it is a constant or a read of a
// local the statement does not write (a value the call cannot change). Operands of the call that
// have effects are moved into locals the same way, since a resumed statement evaluates its
// operands again. A block, loop or `if` nested in an expression whose body holds such a call is
// moved out whole (`local.set $t (block …)`), and its own statements are treated the same way.
//
// Where that is impossible (a value of a type no local can hold, an unreachable operand before the
// call, a tail call, an expression kind not known here) `hoistUnwindingCalls` says so, and the
// function is not split: it stays Asyncify's, which can unwind it anywhere.
import { childVisitors, type BinaryenApi, type ChildVisitor } from './binaryen-api.js';

/** A child slot of an expression: read it, replace it. */
interface Slot {
  get(): number;
  set(v: number): void;
}

class CannotHoist extends Error {}

// Effects an operand of a resumable call may have (see call-resume.ts's PURE_EFFECTS).
const PURE_EFFECTS = 4 /* ReadsLocal */ | 16 /* ReadsGlobal */ | 64 /* ReadsMemory */ | 1024 /* ImplicitTrap */ | 16384 /* TrapsNeverHappen */;

// Non-control expressions: their children in evaluation order, by the accessor names Binaryen.js
// gives them (getX / setX on the class of that name).
const FIELDS: [string, string[]][] = [
  ['Break', ['Value', 'Condition']],
  ['Switch', ['Value', 'Condition']],
  ['Select', ['IfTrue', 'IfFalse', 'Condition']],
  ['Store', ['Ptr', 'Value']],
  ['Load', ['Ptr']],
  ['LocalSet', ['Value']],
  ['GlobalSet', ['Value']],
  ['Drop', ['Value']],
  ['Return', ['Value']],
  ['Unary', ['Value']],
  ['Binary', ['Left', 'Right']],
  ['MemoryGrow', ['Delta']],
  ['AtomicRMW', ['Ptr', 'Value']],
  ['AtomicCmpxchg', ['Ptr', 'Expected', 'Replacement']],
  ['AtomicWait', ['Ptr', 'Expected', 'Timeout']],
  ['AtomicNotify', ['Ptr', 'NotifyCount']],
  ['SIMDExtract', ['Vec']],
  ['SIMDReplace', ['Vec', 'Value']],
  ['SIMDShuffle', ['Left', 'Right']],
  ['SIMDTernary', ['A', 'B', 'C']],
  ['SIMDShift', ['Vec', 'Shift']],
  ['SIMDLoad', ['Ptr']],
  ['SIMDLoadStoreLane', ['Ptr', 'Vec']],
  ['MemoryInit', ['Dest', 'Offset', 'Size']],
  ['MemoryCopy', ['Dest', 'Source', 'Size']],
  ['MemoryFill', ['Dest', 'Value', 'Size']],
];
const LEAVES = ['LocalGet', 'GlobalGet', 'Const', 'MemorySize', 'Nop', 'Unreachable', 'AtomicFence', 'DataDrop'];

class Hoister {
  private readonly fields = new Map<number, { cls: Record<string, (...a: number[]) => number>; names: string[] }>();
  private readonly leaves: Set<number>;
  /** For `has`, which only looks: every kind `slots` knows, visited without building slots. */
  private readonly visitors = new Map<number, ChildVisitor>();
  private readonly memo = new Map<number, boolean>();
  private readonly valueTypes: Set<number>;

  constructor(
    private readonly b: BinaryenApi,
    private readonly mod: BinaryenApi,
    private readonly fnRef: number,
    private readonly unwinding: (call: number) => boolean,
  ) {
    for (const [cls, names] of FIELDS) this.fields.set(b[`${cls}Id`] as number, { cls: b[cls], names });
    this.leaves = new Set(LEAVES.map((k) => b[`${k}Id`] as number));
    this.valueTypes = new Set([b.i32, b.i64, b.f32, b.f64, b.v128]);
    const all = childVisitors(b);
    for (const id of [...this.fields.keys(), ...this.leaves, b.BlockId, b.LoopId, b.IfId, b.CallId, b.CallIndirectId] as number[]) {
      const visit = all.get(id);
      if (visit) this.visitors.set(id, visit);
    }
  }

  private id(e: number): number {
    return this.b.getExpressionId(e) as number;
  }

  /** Children in evaluation order, for any kind this module knows (throws CannotHoist otherwise). */
  private slots(e: number): Slot[] {
    const b = this.b;
    const id = this.id(e);
    const at = (getN: () => number, getAt: (i: number) => number, setAt: (i: number, v: number) => void): Slot[] =>
      Array.from({ length: getN() }, (_, i) => ({ get: () => getAt(i), set: (v: number) => setAt(i, v) }));
    if (id === b.BlockId) return at(() => b.Block.getNumChildren(e), (i) => b.Block.getChildAt(e, i), (i, v) => b.Block.setChildAt(e, i, v));
    if (id === b.LoopId) return [{ get: () => b.Loop.getBody(e), set: (v) => b.Loop.setBody(e, v) }];
    if (id === b.IfId) {
      const s: Slot[] = [
        { get: () => b.If.getCondition(e), set: (v) => b.If.setCondition(e, v) },
        { get: () => b.If.getIfTrue(e), set: (v) => b.If.setIfTrue(e, v) },
      ];
      if (b.If.getIfFalse(e)) s.push({ get: () => b.If.getIfFalse(e), set: (v) => b.If.setIfFalse(e, v) });
      return s;
    }
    if (id === b.CallId) return at(() => b.Call.getNumOperands(e), (i) => b.Call.getOperandAt(e, i), (i, v) => b.Call.setOperandAt(e, i, v));
    if (id === b.CallIndirectId) {
      const ops = at(() => b.CallIndirect.getNumOperands(e), (i) => b.CallIndirect.getOperandAt(e, i), (i, v) => b.CallIndirect.setOperandAt(e, i, v));
      return [...ops, { get: () => b.CallIndirect.getTarget(e), set: (v) => b.CallIndirect.setTarget(e, v) }];
    }
    if (this.leaves.has(id)) return [];
    const f = this.fields.get(id);
    if (!f) throw new CannotHoist();
    return f.names
      .filter((n) => f.cls[`get${n}`]!(e) !== 0) // optional children (a br's value, a return's)
      .map((n) => ({ get: () => f.cls[`get${n}`]!(e), set: (v: number) => void f.cls[`set${n}`]!(e, v) }));
  }

  /**
   * Whether `e` holds a call that may unwind. Throws CannotHoist on a kind `slots` does not know,
   * as `slots` would. (The first look at every node of a split function: it allocates nothing per
   * node, which on the generated 20 MiB module took this check from 2.6 to 1.0 s.)
   */
  has(e: number): boolean {
    let r = this.memo.get(e);
    if (r === undefined) {
      let found = this.isUnwindingCall(e);
      if (!found) {
        const visit = this.visitors.get(this.id(e));
        if (!visit) throw new CannotHoist();
        visit(e, (c) => {
          if (!found && c !== 0 && this.has(c)) found = true;
        });
      }
      r = found;
      this.memo.set(e, r);
    }
    return r;
  }

  private isUnwindingCall(e: number): boolean {
    const id = this.id(e);
    return (id === this.b.CallId || id === this.b.CallIndirectId) && this.unwinding(e);
  }

  private temp(type: number): number {
    if (!this.valueTypes.has(type)) throw new CannotHoist();
    return this.b._BinaryenFunctionAddVar(this.fnRef, type) as number;
  }

  /** Moves `value` into a fresh local (a statement appended to `pre`); returns its read. */
  private spill(value: number, pre: number[]): number {
    const type = this.b.getExpressionType(value) as number;
    const t = this.temp(type);
    pre.push(this.mod.local.set(t, value));
    return this.mod.local.get(t, type);
  }

  /** A statement context: each child gets its calls hoisted into statements just before it. */
  block(blk: number): void {
    const b = this.b;
    const n: number = b.Block.getNumChildren(blk);
    for (let i = 0; i < n; i++) {
      const s: number = b.Block.getChildAt(blk, i);
      if (!this.has(s)) continue;
      const pre: number[] = [];
      const rest = this.statement(s, pre);
      if (pre.length > 0) b.Block.setChildAt(blk, i, this.mod.block(null, [...pre, rest], b.auto));
    }
  }

  /** `e` as a block to hold statements (an `if` arm or a loop body that is a single expression). */
  private asBlock(e: number, set: (v: number) => void): number {
    if (this.id(e) === this.b.BlockId) return e;
    const blk: number = this.mod.block(null, [e], this.b.auto);
    set(blk);
    return blk;
  }

  /** A statement: returns what remains in its place once `pre` has run. */
  private statement(s: number, pre: number[]): number {
    const b = this.b;
    const id = this.id(s);
    if (id === b.BlockId) {
      this.block(s);
      return s;
    }
    if (id === b.LoopId) {
      this.block(this.asBlock(b.Loop.getBody(s), (v) => b.Loop.setBody(s, v)));
      return s;
    }
    if (id === b.IfId) {
      b.If.setCondition(s, this.expr(b.If.getCondition(s), pre));
      const t: number = b.If.getIfTrue(s);
      if (this.has(t)) this.block(this.asBlock(t, (v) => b.If.setIfTrue(s, v)));
      const f: number = b.If.getIfFalse(s);
      if (f && this.has(f)) this.block(this.asBlock(f, (v) => b.If.setIfFalse(s, v)));
      return s;
    }
    // The statement forms call-resume.ts resumes: `call` (no result), `drop (call)`, `local.set (call)`.
    let call = s;
    if (id === b.DropId) call = b.Drop.getValue(s);
    else if (id === b.LocalSetId && !b.LocalSet.isTee(s)) call = b.LocalSet.getValue(s);
    const whole = this.isUnwindingCall(call) && (call !== s || b.getExpressionType(s) === b.none) && !this.isTailCall(call);
    if (whole) {
      this.children(call, pre, true);
      return s;
    }
    this.children(s, pre, false);
    return s;
  }

  private isTailCall(call: number): boolean {
    const b = this.b;
    return this.id(call) === b.CallId ? b.Call.isReturn(call) : b.CallIndirect.isReturn(call);
  }

  /** An expression: returns what replaces it once `pre` has run. */
  private expr(e: number, pre: number[]): number {
    if (!this.has(e)) return e;
    const b = this.b;
    const id = this.id(e);
    if (id === b.BlockId || id === b.LoopId || id === b.IfId) {
      const armsHold = id !== b.IfId || this.has(b.If.getIfTrue(e)) || (b.If.getIfFalse(e) !== 0 && this.has(b.If.getIfFalse(e)));
      const rest = this.statement(e, pre);
      // A construct whose body holds a resumable call runs as a statement of its own.
      return armsHold ? this.spill(rest, pre) : rest;
    }
    if (this.isUnwindingCall(e)) {
      if (this.isTailCall(e)) throw new CannotHoist();
      this.children(e, pre, true);
      return this.spill(e, pre);
    }
    this.children(e, pre, false);
    return e;
  }

  /**
   * Hoists the calls in `e`'s children; the children evaluated before the last one that needed
   * hoisting (or, for a resumable call's operands, `pure`, before the last one with effects)
   * move into locals too, in order, unless their value cannot change.
   */
  private children(e: number, pre: number[], pure: boolean): void {
    const slots = this.slots(e);
    // Before the children lose their calls (and the local writes in those calls' operands).
    const written = slots.length > 1 ? this.writtenLocals(e) : new Set<number>();
    const pres = slots.map(() => [] as number[]);
    const rest = slots.map((s, j) => this.expr(s.get(), pres[j]!));
    const impure = (x: number): boolean => pure && ((this.b.getSideEffects(x, this.mod) as number) & ~PURE_EFFECTS) !== 0;
    let last = -1;
    rest.forEach((x, j) => {
      if (pres[j]!.length > 0 || impure(x)) last = j;
    });
    rest.forEach((x, j) => {
      pre.push(...pres[j]!);
      let v = x;
      if ((j < last && !this.stable(x, written)) || (j === last && impure(x))) {
        if ((this.b.getExpressionType(x) as number) === this.b.unreachable) throw new CannotHoist();
        v = this.spill(x, pre);
      }
      if (v !== slots[j]!.get()) slots[j]!.set(v);
    });
  }

  /** A value no call can change: a constant, or a local the statement does not write. */
  private stable(x: number, written: Set<number>): boolean {
    const b = this.b;
    const id = this.id(x);
    return id === b.ConstId || (id === b.LocalGetId && !written.has(b.LocalGet.getIndex(x)));
  }

  private writtenLocals(e: number): Set<number> {
    const out = new Set<number>();
    const go = (x: number): void => {
      if (this.id(x) === this.b.LocalSetId) out.add(this.b.LocalSet.getIndex(x));
      for (const s of this.slots(x)) go(s.get());
    };
    go(e);
    return out;
  }
}

/**
 * Returns a copy of `body` in which every call that `unwinding` names is a statement of its own
 * with operands free of effects (see the top of this file), or null when some cannot be.
 * Adds the locals it needs to `fnRef`.
 */
export function hoistUnwindingCalls(b: BinaryenApi, mod: BinaryenApi, fnRef: number, body: number, unwinding: (call: number) => boolean): number | null {
  const copy: number = mod.copyExpression(body);
  const root: number = b.getExpressionId(copy) === b.BlockId ? copy : mod.block(null, [copy], b.auto);
  const h = new Hoister(b, mod, fnRef, unwinding);
  try {
    if (h.has(root)) h.block(root);
  } catch (err) {
    if (err instanceof CannotHoist) return null;
    throw err;
  }
  return root;
}
