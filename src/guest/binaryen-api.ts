// Binaryen as the instrumentation passes use it: loading it, the Wasm features Ferry emits, and a
// uniform way to reach the children of any expression kind those features allow.
import type { ValueType } from './instrument-meta.js';

// The feature set V8 in Node 20 accepts. With Binaryen's `Features.All` it emits encodings that
// V8 11.3 refuses, so this list is deliberate.
export function featureMask(b: BinaryenApi): number {
  const F = b.Features;
  return F.MVP | F.MutableGlobals | F.SignExt | F.BulkMemory | F.NontrappingFPToInt | F.Atomics | F.SIMD128;
}

// binaryen ships as an ES module with top-level await: it can only be import()ed.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type BinaryenApi = any;
let binaryenPromise: Promise<BinaryenApi> | null = null;
export function loadBinaryen(): Promise<BinaryenApi> {
  binaryenPromise ??= import('binaryen').then((m) => (m as { default: BinaryenApi }).default);
  return binaryenPromise;
}

/** An expression kind the walks of this module do not know: the function is left as it was. */
export class Unsupported extends Error {}

export type ChildVisitor = (expr: number, visit: (child: number) => void) => void;

/**
 * How to reach the children of each expression kind Ferry's feature set can contain: direct
 * accessors for the common kinds (getExpressionInfo allocates an object per node, which shows on
 * 20 MiB modules), getExpressionInfo fields for the rare ones.
 */
export function childVisitors(b: BinaryenApi): Map<number, ChildVisitor> {
  const none: ChildVisitor = () => {};
  const byInfo = (names: string[]): ChildVisitor => (expr, visit) => {
    const info = b.getExpressionInfo(expr) as Record<string, unknown>;
    for (const n of names) {
      const v = info[n];
      if (Array.isArray(v)) for (const c of v) visit(c as number);
      else visit(v as number);
    }
  };
  return new Map<number, ChildVisitor>([
    [b.BlockId, (e, v) => {
      const n: number = b.Block.getNumChildren(e);
      for (let i = 0; i < n; i++) v(b.Block.getChildAt(e, i));
    }],
    [b.IfId, (e, v) => { v(b.If.getCondition(e)); v(b.If.getIfTrue(e)); v(b.If.getIfFalse(e)); }],
    [b.LoopId, (e, v) => v(b.Loop.getBody(e))],
    [b.BreakId, (e, v) => { v(b.Break.getCondition(e)); v(b.Break.getValue(e)); }],
    [b.SwitchId, byInfo(['condition', 'value'])],
    [b.CallId, (e, v) => {
      const n: number = b.Call.getNumOperands(e);
      for (let i = 0; i < n; i++) v(b.Call.getOperandAt(e, i));
    }],
    [b.CallIndirectId, byInfo(['target', 'operands'])],
    [b.LocalGetId, none],
    [b.LocalSetId, (e, v) => v(b.LocalSet.getValue(e))],
    [b.GlobalGetId, none],
    [b.GlobalSetId, (e, v) => v(b.GlobalSet.getValue(e))],
    [b.LoadId, (e, v) => v(b.Load.getPtr(e))],
    [b.StoreId, (e, v) => { v(b.Store.getPtr(e)); v(b.Store.getValue(e)); }],
    [b.ConstId, none],
    [b.UnaryId, (e, v) => v(b.Unary.getValue(e))],
    [b.BinaryId, (e, v) => { v(b.Binary.getLeft(e)); v(b.Binary.getRight(e)); }],
    [b.SelectId, (e, v) => { v(b.Select.getIfTrue(e)); v(b.Select.getIfFalse(e)); v(b.Select.getCondition(e)); }],
    [b.DropId, (e, v) => v(b.Drop.getValue(e))],
    [b.ReturnId, (e, v) => v(b.Return.getValue(e))],
    [b.MemorySizeId, none],
    [b.MemoryGrowId, byInfo(['delta'])],
    [b.NopId, none],
    [b.UnreachableId, none],
    [b.AtomicRMWId, byInfo(['ptr', 'value'])],
    [b.AtomicCmpxchgId, byInfo(['ptr', 'expected', 'replacement'])],
    [b.AtomicWaitId, byInfo(['ptr', 'expected', 'timeout'])],
    [b.AtomicNotifyId, byInfo(['ptr', 'notifyCount'])],
    [b.AtomicFenceId, none],
    [b.SIMDExtractId, byInfo(['vec'])],
    [b.SIMDReplaceId, byInfo(['vec', 'value'])],
    [b.SIMDShuffleId, byInfo(['left', 'right'])],
    [b.SIMDTernaryId, byInfo(['a', 'b', 'c'])],
    [b.SIMDShiftId, byInfo(['vec', 'shift'])],
    [b.SIMDLoadId, byInfo(['ptr'])],
    [b.SIMDLoadStoreLaneId, byInfo(['ptr', 'vec'])],
    [b.MemoryInitId, byInfo(['dest', 'offset', 'size'])],
    [b.DataDropId, none],
    [b.MemoryCopyId, byInfo(['dest', 'source', 'size'])],
    [b.MemoryFillId, byInfo(['dest', 'value', 'size'])],
  ]);
}

export function valueType(b: BinaryenApi, t: number): ValueType | null {
  if (t === b.i32) return 'i32';
  if (t === b.i64) return 'i64';
  if (t === b.f32) return 'f32';
  if (t === b.f64) return 'f64';
  return null;
}
