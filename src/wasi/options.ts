// What an embedder hands a Wasi: the program's arguments, environment, preopened directories and
// listening sockets, the host fds bound to its stdio, and the hooks through which blocking calls
// learn of a pause. Checked once, at construction.

export interface Preopen { guestPath: string; hostPath: string }
/** Host fds the guest's stdin/stdout/stderr are bound to (default 0, 1, 2). */
export interface StdioBinding { stdin: number; stdout: number; stderr: number }
/** A listening TCP socket the embedder opened for the guest (`ferry run --listen`); the Wasi owns it from then on. */
export interface ListenSocket { hostFd: number; family: 4 | 6; address: string; port: number }
export interface WasiOptions {
  args: string[];
  env: Record<string, string>;
  preopens: Preopen[];
  stdio: StdioBinding;
  /** Listening sockets, preopened after the directories (guest fds in this order), like `wasmtime --tcplisten`. */
  listen?: ListenSocket[];
}
/**
 * A socket a live migration re-created on this host for a guest fd (TCP_REPAIR): a connection, or a
 * listener with the connections that waited in its accept queue on the source. The Wasi owns the
 * host fds from Wasi.restore on, whether it succeeds or not. The same shape lists a paused guest's
 * sockets on the source (Wasi.hostSockets).
 */
export interface AdoptedSocket { hostFd: number; accepted: number[] }
export type AdoptedSockets = Record<number, AdoptedSocket>;

export interface WasiHooks {
  /** Polled between wait slices by calls that may block; true = the guest must pause now. */
  pauseRequested(): boolean;
  /** Called before such a call returns early for a pause; the runtime re-enters it with the same arguments. */
  unwind(): void;
  /** Waits until `fd` is readable or `timeoutMs` passes; true if readable. Absent: everything is readable. */
  waitReadable?(fd: number, timeoutMs: number): boolean;
  /** Sleeps up to `ms`, returning at once when a pause is requested. Absent: a plain sleep. */
  sleep?(ms: number): void;
  /**
   * An eventfd the owner signals when it requests a pause. Calls that wait on sockets poll it beside
   * their fds, so a pause interrupts them at once. Absent: they wait in slices of WAIT_SLICE_MS.
   */
  wakeFd?: number;
}

/** Thrown by proc_exit; carries the guest's exit status. */
export class WasiExit extends Error {
  constructor(readonly code: number) {
    super(`guest exited with code ${code}`);
    this.name = 'WasiExit';
  }
}

export const DEFAULT_STDIO: StdioBinding = { stdin: 0, stdout: 1, stderr: 2 };

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
  for (const l of options.listen ?? []) {
    if (!Number.isInteger(l?.hostFd) || l.hostFd < 0 || (l.family !== 4 && l.family !== 6) || typeof l.address !== 'string' || !Number.isInteger(l.port)) {
      throw new Error('WASI options.listen entries need a host fd, a family (4 or 6), an address and a port');
    }
  }
  const stdio = options.stdio ?? DEFAULT_STDIO;
  for (const k of ['stdin', 'stdout', 'stderr'] as const) {
    if (!Number.isInteger(stdio[k]) || stdio[k] < 0) throw new Error(`WASI options.stdio.${k} must be a host fd (a non-negative integer)`);
  }
}

