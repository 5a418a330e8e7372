// V8's Wasm tier-up budget, raised for the process before a guest's module is compiled.
//
// V8 runs a Wasm function first as Liftoff code and recompiles it with TurboFan once it is hot.
// Liftoff code counts towards that at every loop back-edge, charging the back-edge's distance in
// machine code (at most a quarter of the budget), and calls into the runtime each time the budget
// runs out. V8 has no on-stack replacement for Wasm: an activation that started in Liftoff code
// finishes in it, paying those runtime calls for as long as it runs. An interpreter's dispatch loop
// spans its whole function, so each turn of it charges tens of kilobytes: SQLite's
// `sqlite3VdbeExec`, whose one activation runs the whole of a 200 000-row INSERT, called the runtime
// every few opcodes. Its fast body (loop-resume.ts) is twice the original's size, and so twice as
// often: that INSERT took 0.70-0.92 s under `ferry run` against 0.35 s with `--liftoff-only`, and
// 0.38-0.54 s under node:wasi. With 20× V8's default budget it takes 0.48 s; a small hot function
// still tiers up after a few milliseconds of work.
//
// The flag is process-wide (V8 reads it when it compiles and instantiates a module), so it is set
// once, before the first guest module is compiled, and never over a budget the process was started
// with (`node --wasm-tiering-budget=N`). FERRY_WASM_TIERING_BUDGET sets another value; 0 leaves V8's.
//
// Bytecode flushing goes off at the same moment (--no-flush-bytecode). V8 drops the bytecode of a
// function that has not run through five of its full collections, and a migration's switchover
// runs code that has not run for seconds (a precopy stream collects every few hundred ms): the
// functions the bundles' code caches (bin/code-cache.cjs) compiled ahead would be compiled again,
// from source, inside the downtime. The price is the bytecode of the functions that never run
// staying in memory (a few MB). Both flags change V8's flag hash, which V8 checks against every
// code cache (Node's own for its built-ins too): one call, at a moment when the process has loaded
// its bundles, and the worker bundle has a second cache made under exactly these flags.
import { setFlagsFromString } from 'node:v8';

/** 20× V8 11's default (1 800 000). */
export const FERRY_TIERING_BUDGET = 36_000_000;

const FLAG = '--wasm-tiering-budget';

/** The budget this process's guests get, or null for V8's own (already set, or turned off). */
export function tieringBudget(env: NodeJS.ProcessEnv = process.env, execArgv: string[] = process.execArgv): number | null {
  if (execArgv.some((a) => a.startsWith(FLAG)) || (env['NODE_OPTIONS'] ?? '').includes(FLAG)) return null;
  const raw = env['FERRY_WASM_TIERING_BUDGET'];
  if (raw === undefined || raw === '') return FERRY_TIERING_BUDGET;
  const n = Number(raw);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`FERRY_WASM_TIERING_BUDGET must be a whole number of bytes, or 0 for V8's default (got '${raw}')`);
  return n === 0 ? null : n;
}

/** The V8 flags applyTieringBudget sets, for the budget `tieringBudget` gives. */
export function ferryV8Flags(env: NodeJS.ProcessEnv = process.env, execArgv: string[] = process.execArgv): string {
  const budget = tieringBudget(env, execArgv);
  return `${budget === null ? '' : `${FLAG}=${budget} `}--no-flush-bytecode`;
}

// Kept on globalThis, process-wide like the flags themselves: each bundle (scripts/bundle.mjs) has a
// copy of this module, and the flags must change once only (every change makes V8 refuse the code
// caches made before it).
const APPLIED = Symbol.for('ferry.v8-flags-applied');

/** Sets the budget and turns bytecode flushing off (once per process): call before compiling a guest's module. */
export function applyTieringBudget(): void {
  if (v8FlagsApplied()) return;
  const flags = ferryV8Flags();
  (globalThis as Record<symbol, unknown>)[APPLIED] = true;
  setFlagsFromString(flags);
}

/** Whether this process's flags are Ferry's now: a guest thread started after loads the worker bundle's second code cache. */
export function v8FlagsApplied(): boolean {
  return (globalThis as Record<symbol, unknown>)[APPLIED] === true;
}
