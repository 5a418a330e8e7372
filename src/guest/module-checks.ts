// Checks before a guest starts: a module's imports must all be WASI preview1 functions Ferry
// provides and its initial memory must fit the cap; a captured state must be the module's and fit
// its memory.
import { ModuleRejected, type InstrumentedMeta } from './instrument.js';
import { WASM_PAGE_SIZE } from '../memory/guest-memory.js';
import type { StdioBinding } from '../wasi/wasi.js';
import { WASI_PREVIEW1_FUNCTIONS } from '../wasi/functions.js';
import type { GuestState } from '../state/guest-state.js';
import { GuestError } from './options.js';

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

/** The shared memory a fresh guest of `meta` starts with, its maximum capped at `maxMemoryBytes`. */
export function freshMemory(meta: InstrumentedMeta, maxMemoryBytes: number): { memory: WebAssembly.Memory; maxBytes: number } {
  const capPages = Math.floor(maxMemoryBytes / WASM_PAGE_SIZE);
  if (capPages < 1 || capPages > 65536) throw new GuestError('bad-max-memory', `max memory must be between 64 KiB and 4 GiB`);
  const maxPages = Math.min(meta.memory.declaredMaxPages ?? 65536, capPages);
  if (meta.memory.initialPages > maxPages) {
    throw new ModuleRejected(
      `module needs ${fmtBytes(meta.memory.initialPages * WASM_PAGE_SIZE)} of initial memory, more than the maximum of ${fmtBytes(maxPages * WASM_PAGE_SIZE)} (--max-memory)`,
    );
  }
  return { memory: new WebAssembly.Memory({ initial: meta.memory.initialPages, maximum: maxPages, shared: true }), maxBytes: maxPages * WASM_PAGE_SIZE };
}

/** Refuses a captured state that another module made, or that does not fit `memory`. */
export function checkStateFits(meta: InstrumentedMeta, state: GuestState, memory: WebAssembly.Memory): void {
  if (meta.sourceHash !== state.module.hash) {
    throw new GuestError('module-mismatch', `state belongs to module ${state.module.hash.slice(0, 12)}…, not ${meta.sourceHash.slice(0, 12)}…`);
  }
  if (memory.buffer.byteLength < state.memory.bytes) {
    throw new GuestError('memory-too-small', `memory holds ${memory.buffer.byteLength} bytes, state needs ${state.memory.bytes}`);
  }
}
