// What instrumentation produces and the module cache stores beside it (meta.json): the version
// and settings a cached entry must match, the module's memory, globals, imports and data
// segments; and the names and addresses the instrumented module and the worker agree on.
// Kept free of the instrumentation passes: the guest runtime (worker, module cache, warm-up) imports
// it on every start, and a cached module needs none of Binaryen's side.
import type { ValueType } from '../state/exec-state.js';
export type { ValueType };

export const INSTRUMENTATION_VERSION = 19; // 18: resume copies get a lighter optimisation (optimise.ts); 19: fast bodies too

/** The import namespace and names Ferry adds. */
export const FERRY_IMPORT_MODULE = 'ferry';
export const FERRY_MEMORY_IMPORT = 'memory';
export const GLOBAL_EXPORT_PREFIX = 'ferry_global_';
/** The import a safepoint calls when a pause or a rewind is pending (JavaScript, in the worker). */
export const YIELD_IMPORT = { module: FERRY_IMPORT_MODULE, name: 'yield' } as const;
/**
 * Byte address in linear memory of the safepoint flags: an i32 "pause requested" at 16 and an
 * i32 "rewinding" at 20, read together as one i64. They live in the guest's memory because Node
 * 20 has neither shared globals nor multi-memory, and a load inlined at each safepoint is what
 * makes safepoints cheap. wasm-ld keeps the first 1 KiB free (data starts at 1024; with
 * --stack-first the stack grows down towards 0 and reaches it only on overflow); modules whose
 * data lies there are refused.
 */
export const SAFEPOINT_FLAG_ADDR = 16;

/** The exports `ferry_warm_<k>` a warm-up thread calls to compile the big functions (warm-exports.ts). */
export const WARM_EXPORT_PREFIX = 'ferry_warm_';

/** Loop-head-resumable functions (loop-resume.ts): on unless FERRY_LOOP_RESUME=0. Recorded as meta.loopResume. */
export function loopResumeEnabled(): boolean {
  return process.env['FERRY_LOOP_RESUME'] !== '0';
}

/**
 * Escape (loop-resume.ts, finishEscapes; INSTRUMENTATION_VERSION 15): on with loop resume, which it
 * needs, unless FERRY_ESCAPE=0. Recorded as meta.escape and part of the cache check.
 */
export function escapeEnabled(): boolean {
  return loopResumeEnabled() && process.env['FERRY_ESCAPE'] !== '0';
}

/**
 * WASI calls that may block and therefore must be able to unwind (re-entered on resume): reads,
 * poll, and the socket calls; fd_write too, since a write to a socket blocks on a full send buffer.
 */
export const UNWINDABLE_WASI_CALLS = ['fd_read', 'fd_write', 'poll_oneoff', 'sock_accept', 'sock_recv', 'sock_send'] as const;


export interface DataSegment {
  offset: number; // byte offset in linear memory
  length: number; // bytes, stored consecutively in the data image
}

export interface InstrumentedMeta {
  instrumentationVersion: number;
  sourceHash: string; // sha256 hex of the original module bytes
  sourceSize: number;
  memory: {
    initialPages: number; // 64 KiB wasm pages
    declaredMaxPages: number | null;
  };
  globals: { exportName: string; type: ValueType }[];
  functionImports: { module: string; name: string }[];
  /** Where `log-execution` put the safepoint import. */
  safepointImport: { module: string; name: string };
  unwindImports: { module: string; name: string }[];
  dataSegments: DataSegment[];
  entry: '_start';
  /** Built with loop-head-resumable functions (loop-resume.ts; on unless FERRY_LOOP_RESUME=0). */
  loopResume: boolean;
  /** Functions split with an escape wrapper (loop-resume.ts, finishEscapes; on unless FERRY_ESCAPE=0; needs loopResume). */
  escape: boolean;
}

export interface InstrumentedModule {
  meta: InstrumentedMeta;
  binary: Uint8Array; // instrumented module
  dataImage: Uint8Array; // active data segments, concatenated
}

export class ModuleRejected extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModuleRejected';
  }
}

/** The steps of instrumentation, in order, as an optional progress callback hears them. */
export const INSTRUMENT_STAGES = ['validate', 'read', 'safepoints', 'asyncify', 'optimise', 'check'] as const;
export type InstrumentStage = (typeof INSTRUMENT_STAGES)[number];
