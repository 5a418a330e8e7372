// Which locals are live at the head of each loop of a function: those whose current value some
// path from the head may still read. A loop-head-resumable function (loop-resume.ts) saves exactly
// these when it suspends there: saving every local would make each one live around the loop, the
// very cost of Asyncify it exists to avoid.
//
// Classic backward dataflow, on structured control flow: a block's label stands for what is live
// after the block, a loop's label for what is live at its head, which is found by iterating the
// loop's body until it stops growing (the least fixed point).
import { Kind, type WNode } from './wasm-tree.js';

export type LocalSet = Uint32Array<ArrayBuffer>; // bit i: local i

function union(a: LocalSet, b: LocalSet): LocalSet {
  const r = a.slice();
  for (let i = 0; i < r.length; i++) r[i]! |= b[i]!;
  return r;
}

function same(a: LocalSet, b: LocalSet): boolean {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function members(s: LocalSet): number[] {
  const out: number[] = [];
  for (let w = 0; w < s.length; w++) {
    for (let bit = 0; bit < 32; bit++) if (s[w]! & (1 << bit)) out.push(w * 32 + bit);
  }
  return out;
}

/**
 * The locals live at the head of each loop in `root`, a function body of `numLocals` locals, and
 * those live right after each node of `after` (block children).
 */
export function liveAtLoopHeads(root: WNode, numLocals: number, after: Set<WNode> = new Set()): Map<WNode, LocalSet> {
  const words = Math.ceil(numLocals / 32) || 1;
  const empty: LocalSet = new Uint32Array(words);
  const labels = new Map<string, LocalSet>();
  const heads = new Map<WNode, LocalSet>();

  const withLabel = <T>(name: string | null, live: LocalSet, f: () => T): T => {
    if (!name) return f();
    const outer = labels.get(name);
    labels.set(name, live);
    try {
      return f();
    } finally {
      if (outer) labels.set(name, outer);
      else labels.delete(name);
    }
  };
  const target = (name: string): LocalSet => labels.get(name) ?? empty;
  const sequence = (kids: WNode[], out: LocalSet): LocalSet => {
    let cur = out;
    for (let i = kids.length - 1; i >= 0; i--) {
      if (after.has(kids[i]!)) heads.set(kids[i]!, cur);
      cur = liveIn(kids[i]!, cur);
    }
    return cur;
  };

  /** What is live before `n` runs, given what is live after it. */
  const liveIn = (n: WNode, out: LocalSet): LocalSet => {
    switch (n.kind) {
      case Kind.Get: {
        const r = out.slice();
        r[n.local >>> 5]! |= 1 << (n.local & 31);
        return r;
      }
      case Kind.Set: {
        const r = out.slice();
        r[n.local >>> 5]! &= ~(1 << (n.local & 31));
        return liveIn(n.children[0]!, r);
      }
      case Kind.Block:
        return withLabel(n.name, out, () => sequence(n.children, out));
      case Kind.Loop: {
        let head: LocalSet = empty;
        for (;;) {
          const next = withLabel(n.name, head, () => liveIn(n.children[0]!, out));
          if (same(next, head)) break;
          head = union(head, next);
        }
        heads.set(n, head);
        return head;
      }
      case Kind.If: {
        const [cond, ifTrue, ifFalse] = n.children;
        const after = union(liveIn(ifTrue!, out), ifFalse ? liveIn(ifFalse, out) : out);
        return liveIn(cond!, after);
      }
      case Kind.Br:
        return sequence(n.children, n.conditional ? union(out, target(n.name!)) : target(n.name!));
      case Kind.Switch: {
        let taken: LocalSet = empty;
        for (const t of n.targets) taken = union(taken, target(t));
        return sequence(n.children, taken);
      }
      case Kind.Return:
      case Kind.Unreachable:
        return sequence(n.children, empty);
      default:
        return sequence(n.children, out);
    }
  };
  liveIn(root, empty);
  return heads;
}
