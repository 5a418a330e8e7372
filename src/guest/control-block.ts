// The control block: one shared 64 KiB page, owned by Ferry and never part of guest memory, that
// the main thread and the guest's worker use to talk while guest code runs. The safepoint helper
// module imports it as its memory, so a safepoint costs one atomic 64-bit load of words 0–1.
// Because it is not guest memory it is never a userfaultfd hole: neither thread can block on it.

/** Word indexes (Int32) in the control block. */
export const enum Ctl {
  /** Set by the main thread: the guest must unwind at its next safepoint or blocking call. */
  PauseRequested = 0,
  /** Set by the worker while a rewind is in progress, so the safepoint helper calls back. */
  Rewinding = 1,
  /** Command to a paused worker (see Cmd); the worker waits on this word. */
  Command = 2,
  /** The worker's state (see WorkerState). */
  State = 3,
  /** Incremented at every completed pause. */
  Pauses = 4,
}

export const enum Cmd {
  None = 0,
  Resume = 1,
  Stop = 2,
  /** A LaunchMessage waits on the launch port. */
  Launch = 3,
}

export const enum WorkerState {
  Starting = 0,
  Running = 1,
  Paused = 2,
  Done = 3,
}

export function createControlMemory(): WebAssembly.Memory {
  return new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
}

export function controlWords(mem: WebAssembly.Memory): Int32Array {
  return new Int32Array(mem.buffer, 0, 16);
}

/**
 * The safepoint helper, a 91-byte module:
 *   (module
 *     (import "ferry" "control" (memory 1 1 shared))
 *     (import "ferry" "yield" (func $yield (param i32)))
 *     (func (export "safepoint") (param i32)
 *       (if (i64.ne (i64.atomic.load (i32.const 0)) (i64.const 0))
 *         (then (call $yield (local.get 0))))))
 * The guest calls `safepoint` at every function entry and loop head: a Wasm-to-Wasm call and one
 * load. Only when a pause or a rewind is pending does it call into JavaScript.
 */
export const SAFEPOINT_HELPER_WASM = Buffer.from(
  'AGFzbQEAAAABBQFgAX8AAiECBWZlcnJ5B2NvbnRyb2wCAwEBBWZlcnJ5BXlpZWxkAAADAgEABw0BCXNhZmVwb2ludAABChQBEgBBAP4RAwBCAFIEQCAAEAALCw==',
  'base64',
);
