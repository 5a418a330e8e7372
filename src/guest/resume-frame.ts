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
/** The shared save helpers (saveLocals): `ferry$saves_i32x18_i64x2` sets slots i32 0-17 and i64 0-1. */
export const SAVES_PREFIX = 'ferry$saves_';
/**
 * A check saving at least this many locals calls a shared helper instead of setting each slot in
 * line. An interpreter's fast body has hundreds of checks of ~25 saves each (SQLite's
 * sqlite3VdbeExec: 557 checks, 15 000 global.set, half its code), cold code that TurboFan still
 * compiles: a call passing the locals is about half the bytes and far fewer nodes than the
 * stores. Fewer saves stay in line: there a call's own cost is about that of the stores it
 * replaces. The helpers are never inlined back (loop-resume.ts marks them no-inline).
 */
const SAVE_CALL_MIN = 5;

/** The saves of one check: each live local into its slot, in line or through a shared helper. */
function saveLocals(b: BinaryenApi, mod: BinaryenApi, slots: Map<number, string>, localTypes: number[]): number[] {
  if (slots.size < SAVE_CALL_MIN) return [...slots].map(([x, g]) => mod.global.set(g, mod.local.get(x, localTypes[x])));
  // A check's slots are numbered from 0 per type (loop-resume.ts, slotOf), so the helper is
  // named by how many of each type it sets; its parameters come by type, then slot number.
  const saves = [...slots].map(([x, g]) => {
    const [, type, j] = g.split('_');
    return { x, type: type!, j: Number(j) };
  });
  saves.sort((p, q) => (p.type === q.type ? p.j - q.j : p.type < q.type ? -1 : 1));
  const counts = new Map<string, number>();
  for (const v of saves) counts.set(v.type, (counts.get(v.type) ?? 0) + 1);
  const name = SAVES_PREFIX + [...counts].map(([t, n]) => `${t}x${n}`).join('_');
  if (!mod.getFunction(name)) {
    const types = saves.map((v) => localTypes[v.x]!);
    mod.addFunction(name, b.createType(types), b.none, [], mod.block(null, saves.map((v, i) => mod.global.set(saveSlot(v.type, v.j), mod.local.get(i, types[i])))));
  }
  return [mod.call(name, saves.map((v) => mod.local.get(v.x, localTypes[v.x])), b.none)];
}

export function zero(b: BinaryenApi, mod: BinaryenApi, t: number): number {
  if (t === b.i32) return mod.i32.const(0);
  if (t === b.i64) return mod.i64.const(0n);
  if (t === b.f32) return mod.f32.const(0);
  if (t === b.f64) return mod.f64.const(0);
  return mod.v128.const(new Array<number>(16).fill(0));
}

/**
 * How a suspend or unwind check leaves: a split function's copies `return` to their wrapper,
 * which raised ferry$pinned around the call (so a suspend check wants pinned − atcall = 1); an
 * escaping fast body (F itself, called with no wrapper) calls its escape wrapper and returns what
 * it returns (pinned − atcall = 0: no activation of its own is counted).
 */
export type SuspendExit = { kind: 'return' } | { kind: 'escape'; wrapper: string; params: number[] };

/** `if (pause pending && ferry$pinned − ferry$atcall == own) { save the live locals; record point k; leave }`. */
export function suspendCheck(b: BinaryenApi, mod: BinaryenApi, k: number, slots: Map<number, string>, localTypes: number[], results: number, exit: SuspendExit = { kind: 'return' }): number {
  const saves = saveLocals(b, mod, slots, localTypes);
  const ret = leave(b, mod, results, exit);
  const own = exit.kind === 'escape' ? 0 : 1;
  return mod.if(
    mod.i64.ne(mod.i64.atomic.load(0, mod.i32.const(SAFEPOINT_FLAG_ADDR)), mod.i64.const(0n)),
    mod.if(
      mod.i32.and(
        mod.i32.ne(mod.i32.atomic.load(0, mod.i32.const(SAFEPOINT_FLAG_ADDR)), mod.i32.const(0)),
        mod.i32.eq(mod.i32.sub(mod.global.get(G_PINNED, b.i32), mod.global.get(G_ATCALL, b.i32)), mod.i32.const(own)),
      ),
      mod.block(null, [...saves, mod.global.set(G_SUSPENDED, mod.i32.const(k)), ret]),
    ),
  );
}

/** After a resumable call: `if (an unwind runs) { save the locals; record call k; leave }`. */
export function unwindCheck(b: BinaryenApi, mod: BinaryenApi, k: number, slots: Map<number, string>, localTypes: number[], results: number, exit: SuspendExit = { kind: 'return' }): number {
  const saves = saveLocals(b, mod, slots, localTypes);
  return mod.if(mod.global.get(G_UNWINDING, b.i32), mod.block(null, [mod.call(HOLD_FN, [], b.none), ...saves, mod.global.set(G_SUSPENDED, mod.i32.const(k)), leave(b, mod, results, exit)]));
}

/** The way out of a suspend or unwind check: a return, or the escape wrapper's call. */
function leave(b: BinaryenApi, mod: BinaryenApi, results: number, exit: SuspendExit): number {
  if (exit.kind === 'escape') {
    const call = mod.call(exit.wrapper, exit.params.map((t, i) => mod.local.get(i, t)), results);
    return results === b.none ? mod.block(null, [call, mod.return()]) : mod.return(call);
  }
  return results === b.none ? mod.return() : mod.return(zero(b, mod, results));
}

/**
 * F: calls F$fast (or F$resume with the saved locals when resuming) with ferry$pinned raised;
 * when the callee suspended, keeps its saved locals in F's own locals (Asyncify saves those) and
 * calls the safepoint, which unwinds; after a rewind the safepoint returns and F loops to resume.
 * With `fast` null it is an escape wrapper (loop-resume.ts, finishEscapes): F's fast body
 * suspended, or saw its callee unwind, before calling it.
 */
export function addWrapper(
  b: BinaryenApi, mod: BinaryenApi, name: string, fast: string | null, resume: string, params: number[], results: number,
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
  const callResume = mod.block(null, [
    mod.global.set(G_RESUME, mod.local.get(rp, b.i32)),
    ...held.map((h) => mod.global.set(h.global, mod.local.get(h.local, h.type))),
    mod.call(resume, args(), results),
  ], results);
  const again = 'ferry$again';
  const tail = results === b.none ? [] : [mod.local.get(r, results)];
  const keep = (e: number): number => (results === b.none ? e : mod.local.set(r, e));
  const suspended = (): number => mod.block(null, [
    mod.global.set(G_SUSPENDED, mod.i32.const(0)),
    ...held.map((h) => mod.local.set(h.local, mod.global.get(h.global, h.type))),
    mod.call(safepointFn, [mod.i32.const(0)], b.none),
  ]);
  if (fast === null) {
    // Escape wrapper: entered from F's fast body with ferry$suspended set, or by a rewind
    // (Asyncify resumes it at its safepoint); either way it runs the resume copy next.
    const loop = mod.loop(again, mod.block(null, [
      mod.local.set(rp, mod.global.get(G_SUSPENDED, b.i32)),
      mod.if(mod.local.get(rp, b.i32), mod.block(null, [suspended(), pinned(1), keep(callResume), pinned(-1), mod.br(again)])),
    ]));
    mod.addFunction(name, b.createType(params), results, vars, mod.block(null, [loop, ...tail], results));
    return;
  }
  const call = mod.if(mod.i32.eqz(mod.local.get(rp, b.i32)), mod.call(fast, args(), results), callResume);
  const loop = mod.loop(again, mod.block(null, [
    pinned(1),
    keep(call),
    pinned(-1),
    mod.local.set(rp, mod.global.get(G_SUSPENDED, b.i32)),
    mod.if(mod.local.get(rp, b.i32), mod.block(null, [suspended(), mod.br(again)])),
  ]));
  mod.addFunction(name, b.createType(params), results, vars, mod.block(null, [mod.call(safepointFn, [mod.i32.const(0)], b.none), loop, ...tail], results));
}
