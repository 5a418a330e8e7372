// Counted innermost loops whose trip count can be proved small: they need no safepoint (see
// docs/architecture.md, "Exempted counted loops").
import type { BinaryenApi, ChildVisitor } from './binaryen-api.js';
import type { LoopSite } from './tree-facts.js';

/**
 * The most iterations, and the most guest work (in expressions: iterations × the size of the
 * loop's body), of an innermost loop that runs without any safepoint (`boundedTripCount`): a few
 * tens of microseconds, which the enclosing code's safepoint (a loop head or a function entry)
 * adds to the time to the next safepoint.
 */
export const EXEMPT_MAX_ITERATIONS = 65536;
export const EXEMPT_BUDGET_EXPRESSIONS = 65536;

/**
 * An upper bound on the number of times the body of an innermost loop that calls nothing runs
 * per entry, or null when none can be proved. Only one shape is recognised, the one clang -O2
 * emits for counted loops (rotated, the test at the bottom):
 *
 *   loop $L { S1; …; Sn; br_if $L cond }
 *
 * where
 *  - `br_if $L` at the end is the only branch to $L (so the body runs once more than the number of
 *    times that branch is taken: any other way out of the body leaves the loop);
 *  - exactly one `local.set`/`local.tee` of a local i (i32 or i64) in the whole body, `i = i + C`
 *    or `i = i - C` (C a constant, non-zero modulo 2^bits), either one of S1…Sn itself or inside
 *    `cond` — so it runs exactly once on every path that reaches the branch;
 *  - `cond` is, under any number of `eqz`, the counter itself or a comparison of it with a
 *    constant, where "the counter" is that tee, or `local.get i` when the step is one of S1…Sn:
 *    the branch is taken while the counter's new value x lies in a set S that is an interval
 *    modulo 2^bits.
 * Then the values of x at successive branches are x0 + C, x0 + 2C, … (x0: i on entry). If
 * |S| + |C| ≤ 2^bits, a step from inside S either moves on within the same integer interval or
 * wraps out of it, so at most ceil(|S|/|C|) branches in a row are taken, whatever x0 is. If S is
 * everything but one value B (`i != B`), x0 must be known: a `local.set i (const)` earlier in the
 * same block with nothing between that can assign i (a loop is entered only by falling into it);
 * then the number of branches taken is the least k ≥ 1 with x0 + k·C = B modulo 2^bits, if any.
 */
export function boundedTripCount(b: BinaryenApi, fields: Map<number, ChildVisitor>, site: LoopSite): number | null {
  if (b.getExpressionId(site.rest) === b.BlockId && b.Block.getName(site.rest) === site.name) return null;
  const stmts: number[] = b.getExpressionId(site.rest) === b.BlockId
    ? Array.from({ length: b.Block.getNumChildren(site.rest) as number }, (_, i) => b.Block.getChildAt(site.rest, i) as number)
    : [site.rest];
  const last = stmts[stmts.length - 1];
  if (!last || b.getExpressionId(last) !== b.BreakId || b.Break.getName(last) !== site.name) return null;
  const cond: number = b.Break.getCondition(last);
  if (!cond || b.Break.getValue(last)) return null;

  // Every branch and every local.set in the body.
  let branchesToLoop = 0;
  const sets: number[] = [];
  const scan = (expr: number): void => {
    if (!expr) return;
    const id = b.getExpressionId(expr) as number;
    if (id === b.BreakId && b.Break.getName(expr) === site.name) branchesToLoop++;
    if (id === b.SwitchId) {
      const n: number = b.Switch.getNumNames(expr);
      for (let i = 0; i < n; i++) if (b.Switch.getNameAt(expr, i) === site.name) branchesToLoop++;
      if (b.Switch.getDefaultName(expr) === site.name) branchesToLoop++;
    }
    if (id === b.LocalSetId) sets.push(expr);
    fields.get(id)!(expr, scan);
  };
  scan(site.rest);
  if (branchesToLoop !== 1) return null;

  // The counter tested by cond, and whether the truthy (continue) set is complemented.
  let negate = false;
  let x: number = cond;
  let range: { start: bigint; size: bigint } | null = null; // continue iff (x - start) mod 2^bits < size
  let bits = 0;
  for (;;) {
    const id = b.getExpressionId(x) as number;
    if (id === b.UnaryId && (b.Unary.getOp(x) === b.EqZInt32 || b.Unary.getOp(x) === b.EqZInt64)) {
      negate = !negate;
      x = b.Unary.getValue(x);
      continue;
    }
    if (id === b.BinaryId) {
      const cmp = comparison(b, b.Binary.getOp(x));
      if (!cmp) return null;
      let left: number = b.Binary.getLeft(x);
      let right: number = b.Binary.getRight(x);
      let op = cmp.op;
      if (b.getExpressionId(left) === b.ConstId) {
        [left, right] = [right, left];
        op = FLIPPED[op];
      }
      if (b.getExpressionId(right) !== b.ConstId) return null;
      bits = cmp.bits;
      range = comparisonRange(op, cmp.signed, constValue(b, right, bits), bits);
      x = left;
    }
    break;
  }
  // x is now the counter: local.get i or the step's local.tee i.
  const xid = b.getExpressionId(x) as number;
  let local: number;
  if (xid === b.LocalGetId) local = b.LocalGet.getIndex(x);
  else if (xid === b.LocalSetId && b.LocalSet.isTee(x)) local = b.LocalSet.getIndex(x);
  else return null;
  const type = b.getExpressionType(x);
  const xbits = type === b.i32 ? 32 : type === b.i64 ? 64 : 0;
  if (!xbits || (bits && bits !== xbits)) return null;
  bits = xbits;
  const M = 1n << BigInt(bits);
  range ??= { start: 1n, size: M - 1n }; // the counter itself: continue while x != 0
  if (negate) range = { start: (range.start + range.size) % M, size: M - range.size };

  // The step: the only set of i in the body, i = i ± C, run once on every path to the branch.
  const mine = sets.filter((e) => b.LocalSet.getIndex(e) === local);
  if (mine.length !== 1) return null;
  const step = mine[0]!;
  if (xid === b.LocalSetId ? step !== x : !stmts.slice(0, -1).includes(step) || b.LocalSet.isTee(step)) return null;
  const value: number = b.LocalSet.getValue(step);
  if (b.getExpressionId(value) !== b.BinaryId) return null;
  const op = b.Binary.getOp(value);
  const add = op === (bits === 32 ? b.AddInt32 : b.AddInt64);
  const sub = op === (bits === 32 ? b.SubInt32 : b.SubInt64);
  if (!add && !sub) return null;
  let l: number = b.Binary.getLeft(value);
  let r: number = b.Binary.getRight(value);
  if (add && b.getExpressionId(l) === b.ConstId) [l, r] = [r, l];
  if (b.getExpressionId(l) !== b.LocalGetId || b.LocalGet.getIndex(l) !== local || b.getExpressionId(r) !== b.ConstId) return null;
  let c = constValue(b, r, bits);
  if (sub) c = (M - c) % M;
  if (c === 0n) return null;
  const magnitude = c <= M / 2n ? c : M - c; // |C| of the step's signed value

  let taken: bigint | null = null; // the most times the back branch can be taken in a row
  if (range.size + magnitude <= M) taken = (range.size + magnitude - 1n) / magnitude;
  if (range.size === M - 1n && (taken === null || taken >= BigInt(EXEMPT_MAX_ITERATIONS))) {
    const exit = (range.start + range.size) % M; // the one value that leaves the loop
    const x0 = entryConstant(b, fields, site, local, bits);
    const k = x0 === null ? null : stepsTo(x0, exit, c, bits);
    if (k !== null) taken = k - 1n;
  }
  if (taken === null) return null;
  return taken + 1n > BigInt(EXEMPT_MAX_ITERATIONS) ? Number.MAX_SAFE_INTEGER : Number(taken) + 1;
}

type CmpOp = 'eq' | 'ne' | 'lt' | 'gt' | 'le' | 'ge';
const FLIPPED: Record<CmpOp, CmpOp> = { eq: 'eq', ne: 'ne', lt: 'gt', gt: 'lt', le: 'ge', ge: 'le' };

type Comparison = { op: CmpOp; signed: boolean; bits: number };
/** Binaryen's comparison opcodes (they are Binaryen's constants: the table is built once). */
let comparisons: Map<number, Comparison> | null = null;

function comparison(b: BinaryenApi, op: number): Comparison | null {
  comparisons ??= comparisonTable(b);
  return comparisons.get(op) ?? null;
}

function comparisonTable(b: BinaryenApi): Map<number, Comparison> {
  const table: [number, CmpOp, boolean, number][] = [
    [b.EqInt32, 'eq', false, 32], [b.NeInt32, 'ne', false, 32],
    [b.LtSInt32, 'lt', true, 32], [b.LtUInt32, 'lt', false, 32], [b.GtSInt32, 'gt', true, 32], [b.GtUInt32, 'gt', false, 32],
    [b.LeSInt32, 'le', true, 32], [b.LeUInt32, 'le', false, 32], [b.GeSInt32, 'ge', true, 32], [b.GeUInt32, 'ge', false, 32],
    [b.EqInt64, 'eq', false, 64], [b.NeInt64, 'ne', false, 64],
    [b.LtSInt64, 'lt', true, 64], [b.LtUInt64, 'lt', false, 64], [b.GtSInt64, 'gt', true, 64], [b.GtUInt64, 'gt', false, 64],
    [b.LeSInt64, 'le', true, 64], [b.LeUInt64, 'le', false, 64], [b.GeSInt64, 'ge', true, 64], [b.GeUInt64, 'ge', false, 64],
  ];
  return new Map(table.map(([code, op, signed, bits]) => [code, { op, signed, bits }]));
}

/** A constant as an unsigned value modulo 2^bits. */
function constValue(b: BinaryenApi, expr: number, bits: number): bigint {
  const M = 1n << BigInt(bits);
  const v = bits === 32 ? BigInt(b.Const.getValueI32(expr) as number) : (b.Const.getValueI64(expr) as bigint);
  return ((v % M) + M) % M;
}

/** The values x with `x op k` true, as an interval modulo 2^bits (start, size). */
function comparisonRange(op: CmpOp, signed: boolean, k: bigint, bits: number): { start: bigint; size: bigint } {
  const M = 1n << BigInt(bits);
  // Work in the order the comparison uses: unsigned 0..M-1, or signed, shifted by M/2.
  const bias = signed ? M / 2n : 0n;
  const kk = (k + bias) % M; // k's rank in that order
  let lo: bigint, hi: bigint; // ranks, inclusive; hi < lo means empty
  switch (op) {
    case 'eq': lo = kk; hi = kk; break;
    case 'ne': return { start: (k + 1n) % M, size: M - 1n };
    case 'lt': lo = 0n; hi = kk - 1n; break;
    case 'le': lo = 0n; hi = kk; break;
    case 'gt': lo = kk + 1n; hi = M - 1n; break;
    case 'ge': lo = kk; hi = M - 1n; break;
  }
  if (hi < lo) return { start: 0n, size: 0n };
  return { start: (lo - bias + M) % M, size: hi - lo + 1n };
}

/**
 * The value of local `local` when the loop is entered, if a `local.set local (const)` precedes the
 * loop in the block that holds it and no expression between them contains a set of that local.
 */
function entryConstant(b: BinaryenApi, fields: Map<number, ChildVisitor>, site: LoopSite, local: number, bits: number): bigint | null {
  if (!site.parent) return null;
  const setsLocal = (root: number): boolean => {
    let found = false;
    const scan = (expr: number): void => {
      if (!expr || found) return;
      const id = b.getExpressionId(expr) as number;
      if (id === b.LocalSetId && b.LocalSet.getIndex(expr) === local) {
        found = true;
        return;
      }
      const children = fields.get(id);
      if (!children) {
        found = true; // unknown expression: assume the worst
        return;
      }
      children(expr, scan);
    };
    scan(root);
    return found;
  };
  for (let i = site.index - 1; i >= 0; i--) {
    const e: number = b.Block.getChildAt(site.parent, i);
    if (b.getExpressionId(e) === b.LocalSetId && b.LocalSet.getIndex(e) === local) {
      const v: number = b.LocalSet.getValue(e);
      if (b.getExpressionId(v) !== b.ConstId || b.getExpressionType(v) !== (bits === 32 ? b.i32 : b.i64)) return null;
      return constValue(b, v, bits);
    }
    if (setsLocal(e)) return null;
  }
  return null;
}

/** The least k ≥ 1 with x0 + k·c = target modulo 2^bits, or null if there is none. */
function stepsTo(x0: bigint, target: bigint, c: bigint, bits: number): bigint | null {
  const M = 1n << BigInt(bits);
  const diff = (((target - x0) % M) + M) % M;
  let t = 0n; // trailing zero bits of c
  while (((c >> t) & 1n) === 0n) t++;
  if (diff % (1n << t) !== 0n) return null;
  const m = M >> t; // solve (c / 2^t)·k = diff / 2^t modulo 2^(bits - t), c / 2^t odd
  const odd = (c >> t) % m;
  let inv = 1n; // Newton iteration for the inverse of an odd number modulo a power of two
  for (let i = 0; i < 7; i++) inv = (inv * (2n - odd * inv)) % m;
  inv = ((inv % m) + m) % m;
  const k = ((diff >> t) * inv) % m;
  return k === 0n ? m : k;
}
