// What a Guest is started, restored or prepared from, how it ends, and its errors: the Guest's
// public vocabulary, apart from the class that runs it (guest.ts).
import type { ModuleCache } from './module-cache.js';
import type { Preopen, StdioBinding } from '../wasi/wasi.js';
import type { GuestState } from '../state/guest-state.js';

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
}

export interface GuestRestoreOptions extends GuestCommonOptions {
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
}

export class GuestError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'GuestError';
  }
}
