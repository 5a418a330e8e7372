// The control block: one shared 64 KiB page, owned by Ferry and never part of guest memory, that
// the main thread and the guest's worker use to talk while guest code runs. Because it is not
// guest memory it is never a userfaultfd hole: neither thread can block on it.
import { SAFEPOINT_FLAG_ADDR } from './instrument-meta.js';

/** Word indexes (Int32) in the control block. */
export const enum Ctl {
  /** Set by the main thread: the guest must unwind at its next safepoint or blocking call. */
  PauseRequested = 0,
  /** Command to a waiting worker (see Cmd); the worker waits on this word. */
  Command = 1,
  /** The worker's state (see WorkerState); the owner may wait on this word. */
  State = 2,
  /**
   * Set by the worker while the guest holds live sockets: a running guest must then be paused and
   * stopped (which closes them) rather than terminated (which would leave them open in this process).
   */
  HoldsSockets = 3,
}

export const enum Cmd {
  None = 0,
  Resume = 1,
  Stop = 2,
  /** A LaunchMessage waits on the launch port. */
  Launch = 3,
  /** A staged restore may run: its pages are in place (the migration committed). */
  Go = 4,
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
 * The safepoint flags inside guest memory (see SAFEPOINT_FLAG_ADDR): [0] pause requested,
 * [1] rewinding. Every safepoint loads both as one i64; a non-zero value makes it call the
 * worker's `ferry.yield`. The control block stays the authority (WASI host calls read it); these
 * words only make the guest look. Take a new view each time: the buffer object changes on growth.
 */
export function safepointFlags(memory: WebAssembly.Memory): Int32Array {
  return new Int32Array(memory.buffer, SAFEPOINT_FLAG_ADDR, 2);
}
