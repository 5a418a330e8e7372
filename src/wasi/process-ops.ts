// The WASI functions about the process rather than descriptors: arguments, environment, clocks,
// randomness, exit, yield.
import { createRequire } from 'node:module';
import { ERRNO } from './errno.js';
import { encodeUtf8 } from './memory-views.js';
import { WasiExit } from './options.js';
import type { HostFunction, WasiContext } from './context.js';

// node:crypto is loaded at the first random_get, not with the guest's thread: loading it takes 3-5
// ms of that thread's start here, on the way to every guest's first instruction, and many guests
// (C programs without a seeded hash) never ask for randomness.
const requireBuiltin = createRequire(import.meta.url);
let fill: ((into: Uint8Array) => void) | null = null;
function randomFill(): (into: Uint8Array) => void {
  fill ??= (requireBuiltin('node:crypto') as typeof import('node:crypto')).randomFillSync;
  return fill;
}

/** args_*, environ_*, clock_*, proc_*, random_get and sched_yield over `ctx`. */
export function processFunctions(ctx: WasiContext): Record<string, HostFunction> {
  return {
    args_get: (argv: number, buf: number) => putStrings(ctx, ctx.args, argv, buf),
    args_sizes_get: (countPtr: number, sizePtr: number) => putSizes(ctx, ctx.args, countPtr, sizePtr),
    environ_get: (environ: number, buf: number) => putStrings(ctx, envStrings(ctx), environ, buf),
    environ_sizes_get: (countPtr: number, sizePtr: number) => putSizes(ctx, envStrings(ctx), countPtr, sizePtr),

    clock_res_get: (id: number, out: number) => { ctx.m().setU64(out, ctx.clocks.resolution(id)); return 0; },
    clock_time_get: (id: number, _precision: bigint, out: number) => { ctx.m().setU64(out, ctx.clocks.now(id)); return 0; },
    proc_exit: (code: number): void => {
      ctx.exitCode = code >>> 0;
      throw new WasiExit(code >>> 0);
    },
    proc_raise: () => ERRNO.NOSYS,
    random_get: (ptr: number, len: number) => { randomFill()(ctx.m().bytes(ptr, len)); return 0; },
    sched_yield: () => 0,
  };
}

function envStrings(ctx: WasiContext): string[] {
  return Object.entries(ctx.env).map(([k, v]) => `${k}=${v}`);
}

function putSizes(ctx: WasiContext, strings: string[], countPtr: number, sizePtr: number): number {
  const m = ctx.m();
  m.setU32(countPtr, strings.length);
  m.setU32(sizePtr, strings.reduce((n, s) => n + encodeUtf8(s).length + 1, 0));
  return 0;
}

function putStrings(ctx: WasiContext, strings: string[], ptrs: number, buf: number): number {
  const m = ctx.m();
  let at = buf;
  strings.forEach((s, i) => {
    const bytes = encodeUtf8(s);
    m.setU32(ptrs + i * 4, at);
    m.write(at, bytes);
    m.setU8(at + bytes.length, 0);
    at += bytes.length + 1;
  });
  return 0;
}
