// Resumable call sites of a loop-head-resumable function (loop-resume.ts). A call that may run
// long must not hold a pause: while the split function waits in such a call, the callee may
// unwind, and the split function then saves its own state and returns, to be resumed at that call.
//
// Only calls that are whole statements qualify (`call`, `drop (call)`, `local.set $x (call)`),
// with operands that have no effects (reads and possible traps only) and, for `local.set`, do not
// read $x: on resume the statement runs again, its operands are evaluated again — their values do
// not matter, Asyncify restores the callee's parameters, but they must not trap, so the locals they
// read are saved too — and the callee, rewinding, continues where it was. Each such statement S
// becomes
//
//   block $W { ferry$atcall += 1; S; ferry$atcall -= 1; <unwind check, placed later> }
//
// `ferry$atcall` counts split activations waiting in a resumable call; the worker may unwind only
// while every running split activation (`ferry$pinned`) is one of them.
import type { BinaryenApi } from './instrument.js';

export const G_ATCALL = 'ferry$atcall';
export const G_UNWINDING = 'ferry$unwinding';
/** Exported for the worker: split activations in a resumable call; set while an unwind runs. */
export const ATCALL_EXPORT = 'ferry_atcall';
export const UNWINDING_EXPORT = 'ferry_unwinding';
/** The import a resumed split function calls to restart Asyncify's rewind before re-entering the call. */
export const REWIND_IMPORT = { module: 'ferry', name: 'rewind' } as const;
export const REWIND_FN = 'ferry$rewind';

// Effects an operand may have: reads of locals, globals and memory, a possible trap.
const PURE_EFFECTS = 4 /* ReadsLocal */ | 16 /* ReadsGlobal */ | 64 /* ReadsMemory */ | 1024 /* ImplicitTrap */ | 16384 /* TrapsNeverHappen */;

/** The call of a qualifying statement, or 0. */
function statementCall(b: BinaryenApi, mod: BinaryenApi, s: number, mayUnwind: (callee: string) => boolean, safepointFn: string, visit: Visit): number {
  const id = b.getExpressionId(s) as number;
  let call = s;
  let setLocal = -1;
  if (id === b.DropId) call = b.Drop.getValue(s);
  else if (id === b.LocalSetId) {
    call = b.LocalSet.getValue(s);
    setLocal = b.LocalSet.getIndex(s);
  }
  const cid = b.getExpressionId(call) as number;
  const operands: number[] = [];
  if (cid === b.CallId) {
    const target: string = b.Call.getTarget(call);
    if (target === safepointFn || !mayUnwind(target) || b.Call.isReturn(call)) return 0;
    for (let i = 0; i < (b.Call.getNumOperands(call) as number); i++) operands.push(b.Call.getOperandAt(call, i));
  } else if (cid === b.CallIndirectId) {
    if (b.CallIndirect.isReturn(call)) return 0;
    for (let i = 0; i < (b.CallIndirect.getNumOperands(call) as number); i++) operands.push(b.CallIndirect.getOperandAt(call, i));
    operands.push(b.CallIndirect.getTarget(call));
  } else {
    return 0;
  }
  for (const op of operands) {
    if (((b.getSideEffects(op, mod) as number) & ~PURE_EFFECTS) !== 0) return 0;
    if (setLocal >= 0 && readsLocal(b, op, setLocal, visit)) return 0;
  }
  return call;
}

type Visit = (e: number, f: (c: number) => void) => void;

function readsLocal(b: BinaryenApi, expr: number, local: number, visit: Visit): boolean {
  let found = false;
  const go = (e: number): void => {
    if (!e || found) return;
    if (b.getExpressionId(e) === b.LocalGetId && b.LocalGet.getIndex(e) === local) found = true;
    else visit(e, go);
  };
  go(expr);
  return found;
}

/**
 * Wraps every qualifying statement of `body` (see the top of this file) and returns the wrapping
 * blocks: their last child is a nop, for the unwind check loop-resume.ts places once it knows the
 * statement's number and the locals to save.
 */
export function wrapResumableCalls(b: BinaryenApi, mod: BinaryenApi, body: number, mayUnwind: (callee: string) => boolean, safepointFn: string, visitChildren: Visit, undo: (() => void)[]): Set<number> {
  const wrapped = new Set<number>();
  const counter = (delta: number): number => mod.global.set(G_ATCALL, mod.i32.add(mod.global.get(G_ATCALL, b.i32), mod.i32.const(delta)));
  const go = (e: number): void => {
    if (!e) return;
    if (b.getExpressionId(e) === b.BlockId) {
      const n: number = b.Block.getNumChildren(e);
      for (let i = 0; i < n; i++) {
        const s: number = b.Block.getChildAt(e, i);
        const t = b.getExpressionType(s);
        if (t === b.none && statementCall(b, mod, s, mayUnwind, safepointFn, visitChildren)) {
          const w: number = mod.block(null, [counter(1), s, counter(-1), mod.nop()], b.none);
          b.Block.setChildAt(e, i, w);
          wrapped.add(w);
          undo.push(() => b.Block.setChildAt(e, i, s));
        } else {
          go(s);
        }
      }
      return;
    }
    visitChildren(e, go);
  };
  go(body);
  return wrapped;
}
