// What a split function (loop-resume.ts) leaves behind when it suspends, and who keeps it: the
// suspend check at a loop head, the unwind check after a resumable call — both save the live
// locals in globals and return — and the Asyncify'd wrapper F, which holds them in its own locals
// (Asyncify saves those with its frame) while the stack is unwound, and hands them back on resume.
import type { BinaryenApi } from './binaryen-api.js';
import { SAFEPOINT_FLAG_ADDR } from './instrument-meta.js';
import { G_ATCALL, G_UNWINDING, HOLD_FN } from './call-resume.js';

export const G_RESUME = 'ferry$resume';
export const G_SUSPENDED = 'ferry$suspended';
export const G_PINNED = 'ferry$pinned';
export const saveSlot = (type: string, j: number): string => `ferry$save_${type}_${j}`;

export function zero(b: BinaryenApi, mod: BinaryenApi, t: number): number {
  if (t === b.i32) return mod.i32.const(0);
  if (t === b.i64) return mod.i64.const(0n);
  if (t === b.f32) return mod.f32.const(0);
  if (t === b.f64) return mod.f64.const(0);
  return mod.v128.const(new Array<number>(16).fill(0));
}

/** `if (pause pending && ferry$pinned == 1) { save the live locals; record point k; return }`. */
export function suspendCheck(b: BinaryenApi, mod: BinaryenApi, k: number, slots: Map<number, string>, localTypes: number[], results: number): number {
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
export function unwindCheck(b: BinaryenApi, mod: BinaryenApi, k: number, slots: Map<number, string>, localTypes: number[], results: number): number {
  const saves = [...slots].map(([x, g]) => mod.global.set(g, mod.local.get(x, localTypes[x])));
  const ret = results === b.none ? mod.return() : mod.return(zero(b, mod, results));
  return mod.if(mod.global.get(G_UNWINDING, b.i32), mod.block(null, [mod.call(HOLD_FN, [], b.none), ...saves, mod.global.set(G_SUSPENDED, mod.i32.const(k)), ret]));
}

/**
 * F: calls F$fast (or F$resume with the saved locals when resuming) with ferry$pinned raised;
 * when the callee suspended, keeps its saved locals in F's own locals (Asyncify saves those) and
 * calls the safepoint, which unwinds; after a rewind the safepoint returns and F loops to resume.
 */
export function addWrapper(
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
