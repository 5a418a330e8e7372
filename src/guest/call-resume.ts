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
import type { BinaryenApi } from './binaryen-api.js';

export const G_ATCALL = 'ferry$atcall';
export const G_UNWINDING = 'ferry$unwinding';
/** Exported for the worker: split activations in a resumable call; set while an unwind runs. */
export const ATCALL_EXPORT = 'ferry_atcall';
export const UNWINDING_EXPORT = 'ferry_unwinding';
/** The import a resumed split function calls to restart Asyncify's rewind before re-entering the call. */
export const REWIND_IMPORT = { module: 'ferry', name: 'rewind' } as const;
export const REWIND_FN = 'ferry$rewind';
/**
 * The import a split function calls when its callee returned because it unwound: the worker stops
 * the unwind for a moment (Asyncify's guards would skip the wrapper's code while unwinding), and
 * the wrapper's safepoint continues it on the same buffer.
 */
export const HOLD_IMPORT = { module: 'ferry', name: 'hold' } as const;
export const HOLD_FN = 'ferry$hold';

// Effects an operand may have: reads of locals, globals and memory, a possible trap.
const PURE_EFFECTS = 4 /* ReadsLocal */ | 16 /* ReadsGlobal */ | 64 /* ReadsMemory */ | 1024 /* ImplicitTrap */ | 16384 /* TrapsNeverHappen */;

/**
 * The call of a qualifying statement, or 0; `viaTemp` when the statement is `local.set $x (call)`
 * with operands reading $x (it must then set a fresh local, copied into $x afterwards).
 */
function statementCall(b: BinaryenApi, mod: BinaryenApi, s: number, mayUnwind: (callee: string) => boolean, safepointFn: string, visit: Visit): { call: number; viaTemp: boolean } | null {
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
    if (target === safepointFn || !mayUnwind(target) || b.Call.isReturn(call)) return null;
    for (let i = 0; i < (b.Call.getNumOperands(call) as number); i++) operands.push(b.Call.getOperandAt(call, i));
  } else if (cid === b.CallIndirectId) {
    if (b.CallIndirect.isReturn(call)) return null;
    for (let i = 0; i < (b.CallIndirect.getNumOperands(call) as number); i++) operands.push(b.CallIndirect.getOperandAt(call, i));
    // The table index picks the function that rewinds, so it must come out the same on resume:
    // one that reads memory or globals is hoisted into a local first (wrapResumableCalls).
    operands.push(b.CallIndirect.getTarget(call));
  } else {
    return null;
  }
  let viaTemp = false;
  for (const op of operands) {
    if (((b.getSideEffects(op, mod) as number) & ~PURE_EFFECTS) !== 0) return null;
    if (setLocal >= 0 && readsLocal(b, op, setLocal, visit)) viaTemp = true;
  }
  return { call, viaTemp };
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
export function wrapResumableCalls(b: BinaryenApi, mod: BinaryenApi, fnRef: number, body: number, mayUnwind: (callee: string) => boolean, safepointFn: string, visitChildren: Visit): Set<number> {
  const wrapped = new Set<number>();
  const counter = (delta: number): number => mod.global.set(G_ATCALL, mod.i32.add(mod.global.get(G_ATCALL, b.i32), mod.i32.const(delta)));
  const go = (e: number): void => {
    if (!e) return;
    if (b.getExpressionId(e) === b.BlockId) {
      const n: number = b.Block.getNumChildren(e);
      for (let i = 0; i < n; i++) {
        const s: number = b.Block.getChildAt(e, i);
        const t = b.getExpressionType(s);
        const found = t === b.none ? statementCall(b, mod, s, mayUnwind, safepointFn, visitChildren) : null;
        if (found) {
          const { call } = found;
          let inner = s;
          let after = 0;
          if (found.viaTemp) {
            // local.set $x (call … $x …) → local.set $t (call …); local.set $x $t
            const x: number = b.LocalSet.getIndex(s);
            const type = b.getExpressionType(call);
            const tmp: number = b._BinaryenFunctionAddVar(fnRef, type);
            inner = mod.local.set(tmp, call);
            after = mod.local.set(x, mod.local.get(tmp, type));
          }
          const w: number = mod.block(null, [counter(1), inner, counter(-1), mod.nop()], b.none);
          let stmt = after ? mod.block(null, [w, after], b.none) : w;
          if (b.getExpressionId(call) === b.CallIndirectId) {
            const target: number = b.CallIndirect.getTarget(call);
            if (((b.getSideEffects(target, mod) as number) & ~4 /* ReadsLocal */) !== 0) {
              // Reordering it before the operands is safe: they only read.
              const tmp: number = b._BinaryenFunctionAddVar(fnRef, b.i32);
              b.CallIndirect.setTarget(call, mod.local.get(tmp, b.i32));
              stmt = mod.block(null, [mod.local.set(tmp, target), stmt], b.none);
            }
          }
          b.Block.setChildAt(e, i, stmt);
          wrapped.add(w);
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
