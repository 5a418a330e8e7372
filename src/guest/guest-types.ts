// What callers of Guest pass and get back: start, restore and prepare options, the exit record, the
// status, the error type, and the checks and helpers that need no running guest (imports a module
// may have, stdio defaults, byte formatting).
import { ModuleRejected, type InstrumentedMeta } from './instrument-meta.js';
import type { AdoptedSockets, Preopen, StdioBinding } from '../wasi/wasi.js';
import type { GuestState } from '../state/guest-state.js';
import type { ModuleCache } from './module-cache.js';
import { WASI_PREVIEW1_FUNCTIONS } from '../wasi/functions.js';
import { WASM_PAGE_SIZE } from '../memory/guest-memory.js';

export { WASM_PAGE_SIZE };
export const DEFAULT_MAX_MEMORY = 4 * 1024 * 1024 * 1024;
/** Bytes of linear memory reserved for the unwound stack at the first pause. */
export const DEFAULT_UNWIND_BYTES = 256 * 1024;

export type GuestStatus = 'starting' | 'running' | 'pausing' | 'paused' | 'stopped' | 'exited' | 'failed';

export interface GuestExit {
  /** The guest's exit code, or null when it was stopped or failed. */
  code: number | null;
  reason: 'exit' | 'trap' | 'stopped' | 'error';
  message?: string;
  /** For a trap: the guest function it happened in, when the module names it. */
  func?: string | null;
}

export interface GuestCommonOptions {
  preopens?: Preopen[];
  stdio?: Partial<StdioBinding>;
  cache?: ModuleCache;
}

export interface GuestStartOptions extends GuestCommonOptions {
  module: Uint8Array;
  args?: string[];
  env?: Record<string, string>;
  /** Cap on the guest's maximum memory in bytes (default 4 GiB). */
  maxMemoryBytes?: number;
  modulePath?: string | null;
  /**
   * TCP addresses to listen on for the guest (`ferry run --listen`): each becomes a listening socket
   * at the next guest fds after the preopened directories. Numeric addresses; port 0 picks a free port.
   */
  listen?: { host: string; port: number }[];
}

export interface GuestRestoreOptions extends GuestCommonOptions {
  /** Sockets a live migration re-created here, by guest fd (see RestoreBinding). */
  sockets?: AdoptedSockets;
  module: Uint8Array;
  state: GuestState;
  /** The guest's memory, already holding (or about to hold, for lazy restore) its pages. */
  memory: WebAssembly.Memory;
  modulePath?: string | null;
  /** Start the worker but keep the guest paused until resume(). */
  startPaused?: boolean;
}

export interface GuestPrepareOptions {
  module: Uint8Array;
  memory: WebAssembly.Memory;
  maxMemoryBytes: number;
  modulePath?: string | null;
  cache?: ModuleCache;
  /**
   * Run the WASI restore path once on a throwaway state while the worker waits (default true),
   * so that the launch runs it warm: worth it when the launch comes after the worker is ready (a
   * switchover's downtime, a restore kept prepared). A restore launched as soon as it is ready
   * would only wait for it (3-7 ms on the way to `ferry restore`'s first line).
   */
  rehearse?: boolean;
}

/** What a restored guest is bound to on this host. */
export interface RestoreBinding {
  preopens?: Preopen[];
  stdio?: Partial<StdioBinding>;
  /** Sockets a live migration re-created here, by guest fd (the guest owns them from the launch on). */
  sockets?: AdoptedSockets;
}

/** A guest worker waiting for a captured state; `G` is Guest (guest.ts names it PreparedGuest). */
export interface PreparedGuestOf<G> {
  /** Hands the waiting worker a captured state; resolves once the guest runs (or waits paused). */
  launchRestore(state: GuestState, binding: RestoreBinding & { startPaused?: boolean }): Promise<G>;
  /**
   * Hands the waiting worker a captured state now and lets it set up everything but guest memory
   * (descriptors, globals); the guest runs only at go(). A migration destination stages when the
   * state arrives and says go at the commit, so little is left for the downtime.
   */
  stageRestore(state: GuestState, binding: RestoreBinding): StagedGuestOf<G>;
  /** Ends the waiting worker (a migration that failed before its commit). */
  dispose(): Promise<void>;
}

export interface StagedGuestOf<G> {
  /** Lets the staged guest run (its memory is in place); resolves once it runs. */
  go(): Promise<G>;
}

export class GuestError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'GuestError';
  }
}

export function stdioOf(s: Partial<StdioBinding> | undefined): StdioBinding {
  return { stdin: s?.stdin ?? 0, stdout: s?.stdout ?? 1, stderr: s?.stderr ?? 2 };
}

export function checkImports(meta: InstrumentedMeta): void {
  const missing = meta.functionImports.filter((i) => !i.module.startsWith('wasi_snapshot_preview1') || !WASI_PREVIEW1_FUNCTIONS.has(i.name));
  if (missing.length > 0) {
    throw new ModuleRejected(
      `module imports ${missing.map((i) => `${i.module}.${i.name}`).join(', ')}, which Ferry does not provide (Ferry provides WASI preview1, "wasi_snapshot_preview1")`,
    );
  }
}

export function fmtBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(n % (1 << 30) ? 1 : 0)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(n % (1 << 20) ? 1 : 0)} MiB`;
  if (n >= 1 << 10) return `${(n / (1 << 10)).toFixed(0)} KiB`;
  return `${n} B`;
}

/** The maximum memory in Wasm pages of a module started with a cap of `maxMemoryBytes` (`--max-memory`). */
export function maxPagesFor(meta: InstrumentedMeta, maxMemoryBytes: number): number {
  const capPages = Math.floor(maxMemoryBytes / WASM_PAGE_SIZE);
  if (capPages < 1 || capPages > 65536) throw new GuestError('bad-max-memory', `max memory must be between 64 KiB and 4 GiB`);
  const maxPages = Math.min(meta.memory.declaredMaxPages ?? 65536, capPages);
  if (meta.memory.initialPages > maxPages) {
    throw new ModuleRejected(
      `module needs ${fmtBytes(meta.memory.initialPages * WASM_PAGE_SIZE)} of initial memory, more than the maximum of ${fmtBytes(maxPages * WASM_PAGE_SIZE)} (--max-memory)`,
    );
  }
  return maxPages;
}

/** Refuses a captured state that belongs to another module or needs more memory than `memory` holds. */
export function checkStateFits(meta: InstrumentedMeta, state: GuestState, memory: WebAssembly.Memory): void {
  if (meta.sourceHash !== state.module.hash) {
    throw new GuestError('module-mismatch', `state belongs to module ${state.module.hash.slice(0, 12)}…, not ${meta.sourceHash.slice(0, 12)}…`);
  }
  if (memory.buffer.byteLength < state.memory.bytes) {
    throw new GuestError('memory-too-small', `memory holds ${memory.buffer.byteLength} bytes, state needs ${state.memory.bytes}`);
  }
}
