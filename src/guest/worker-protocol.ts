// Messages between a Guest (main thread) and its worker. Commands to a *running* guest go
// through the control block (the worker is busy in guest code and reads no messages then).
import type { InstrumentedMeta } from './instrument-meta.js';
import type { MessagePort } from 'node:worker_threads';
import type { ExecState } from '../state/exec-state.js';
import type { AdoptedSockets, Preopen, StdioBinding, WasiOptions, WasiState } from '../wasi/wasi.js';

/**
 * What a worker gets when it is spawned. It then waits — already started, module compiled — for a
 * LaunchMessage, so that a destination can have the worker ready before the migration commits.
 */
export interface WorkerInit {
  module: WebAssembly.Module;
  meta: InstrumentedMeta;
  memory: WebAssembly.Memory;
  control: WebAssembly.Memory;
  /** Carries the LaunchMessage; the worker reads it synchronously when told to launch. */
  launchPort: MessagePort;
  /** Carries each PausedCapture, posted before the state word says Paused. */
  capturePort: MessagePort;
  /** Size of the Asyncify unwind buffer (bytes) to reserve at the first pause. */
  unwindBytes: number;
  /**
   * Set for a worker prepared for a restore (null: a fresh start). It waits for its launch ahead of
   * normal threads (the launch is inside a switchover's downtime); with `rehearse` it runs the
   * WASI restore path once while waiting, so the launch's runs warm (see worker.ts).
   */
  restore: { rehearse: boolean } | null;
  /** An eventfd the owner signals with every pause request: blocking socket and pipe waits poll it. */
  wakeFd: number;
}

export interface LaunchMessage {
  /** Fresh start: the WASI options and the data segments to write. */
  fresh?: { wasi: WasiOptions; dataImage: Uint8Array };
  /** Restore: state captured elsewhere, with this host's bindings. */
  restore?: { exec: ExecState; wasi: WasiState; preopens: Preopen[]; stdio: StdioBinding; sockets?: AdoptedSockets };
  /**
   * Staged restore: set everything up (descriptors, globals), then wait for Cmd.Go before touching
   * guest memory or running guest code. A migration destination stages as soon as the state
   * arrives, while the last pages are still being placed, and says Go at the commit.
   */
  waitForGo?: boolean;
}

/**
 * Posted on the launch port before a resume that must hand the guest connections: those a failed
 * live migration took from its listeners' accept queues (by listener guest fd), which the guest
 * accepts next.
 */
export interface ResumeMessage { accepted: Record<number, number[]> }

export interface PausedCapture {
  exec: ExecState;
  wasi: WasiState;
  movabilityProblems: string[];
  /** The same when the migration moves sockets (the destination has Feature.SOCKETS). */
  problemsIfSocketsMove: string[];
  /** Host fds of the guest's live sockets (this process's; what a live migration moves). */
  hostSockets: AdoptedSockets;
  memoryBytes: number;
}

export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'started' }
  | { type: 'paused' }
  | { type: 'pause-failed'; message: string }
  | { type: 'exit'; code: number }
  | { type: 'trap'; message: string; func: string | null }
  | { type: 'error'; message: string };
