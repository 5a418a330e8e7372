// What a Wasi is made from (its options, and the runtime's hooks for pausable waits), the exit
// exception, and the checks on the options.
export interface Preopen { guestPath: string; hostPath: string }
/** Host fds the guest's stdin/stdout/stderr are bound to (default 0, 1, 2). */
export interface StdioBinding { stdin: number; stdout: number; stderr: number }
export interface WasiOptions { args: string[]; env: Record<string, string>; preopens: Preopen[]; stdio: StdioBinding }
export interface WasiHooks {
  /** Polled between wait slices by calls that may block; true = the guest must pause now. */
  pauseRequested(): boolean;
  /** Called before such a call returns early for a pause; the runtime re-enters it with the same arguments. */
  unwind(): void;
  /** Waits until `fd` is readable or `timeoutMs` passes; true if readable. Absent: everything is readable. */
  waitReadable?(fd: number, timeoutMs: number): boolean;
  /** Sleeps up to `ms`, returning at once when a pause is requested. Absent: a plain sleep. */
  sleep?(ms: number): void;
}

/** Thrown by proc_exit; carries the guest's exit status. */
export class WasiExit extends Error {
  constructor(readonly code: number) {
    super(`guest exited with code ${code}`);
    this.name = 'WasiExit';
  }
}

/** Longest single wait inside a blocking call before we look at pauseRequested() again. */
export const WAIT_SLICE_MS = 10;
export const DEFAULT_STDIO: StdioBinding = { stdin: 0, stdout: 1, stderr: 2 };

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type HostFunction = (...args: any[]) => number | bigint | void;

export function validateOptions(options: WasiOptions): void {
  if (typeof options !== 'object' || options === null) throw new Error('WASI options must be an object');
  if (!Array.isArray(options.args) || options.args.some((a) => typeof a !== 'string')) throw new Error('WASI options.args must be an array of strings');
  if (typeof options.env !== 'object' || options.env === null) throw new Error('WASI options.env must be an object of strings');
  for (const [k, v] of Object.entries(options.env)) {
    if (typeof v !== 'string') throw new Error(`WASI options.env.${k} must be a string`);
    if (k.includes('=') || k.includes('\0') || v.includes('\0')) throw new Error(`WASI options.env.${k}: names may not contain '=' or NUL, values not NUL`);
  }
  if (!Array.isArray(options.preopens)) throw new Error('WASI options.preopens must be an array');
  const seen = new Set<string>();
  for (const p of options.preopens) {
    if (typeof p?.guestPath !== 'string' || seen.has(p.guestPath)) throw new Error(`WASI preopen guestPath ${JSON.stringify(p?.guestPath)} is missing or repeated`);
    seen.add(p.guestPath);
  }
  const stdio = options.stdio ?? DEFAULT_STDIO;
  for (const k of ['stdin', 'stdout', 'stderr'] as const) {
    if (!Number.isInteger(stdio[k]) || stdio[k] < 0) throw new Error(`WASI options.stdio.${k} must be a host fd (a non-negative integer)`);
  }
}
