// The main thread's side of the control block of one guest worker: commands, the worker's state,
// pause requests (the control word, the safepoint flag in guest memory, and the wake eventfd that
// interrupts a guest blocked on a socket or a pipe).
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import { Cmd, Ctl, WorkerState, controlWords, safepointFlags } from './control-block.js';
import { GUEST_STACK_MB, guestThreadHints, guestWorkerScript, takeSpareWorker } from './spare-worker.js';
import type { WorkerInit } from './worker-protocol.js';
import { GuestError } from './guest-types.js';
import { close as closeFd, eventfdDrain, eventfdSignal } from '../sys/fd.js';

export class WorkerControl {
  private readonly ctl: Int32Array;

  constructor(control: WebAssembly.Memory, private readonly memory: WebAssembly.Memory, private readonly wakeFd: number) {
    this.ctl = controlWords(control);
  }

  get state(): WorkerState {
    return Atomics.load(this.ctl, Ctl.State);
  }

  /** Whether the worker says its guest holds live sockets. */
  get holdsSockets(): boolean {
    return Atomics.load(this.ctl, Ctl.HoldsSockets) !== 0;
  }

  /** Hands a waiting worker a command. */
  command(cmd: Cmd): void {
    Atomics.store(this.ctl, Ctl.Command, cmd);
    Atomics.notify(this.ctl, Ctl.Command);
  }

  /** Blocks up to `timeoutMs` while the worker is starting; returns the state it is in then. */
  waitWhileStarting(timeoutMs: number): WorkerState {
    const deadline = performance.now() + timeoutMs;
    for (let s = this.state; s === WorkerState.Starting; s = this.state) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      Atomics.wait(this.ctl, Ctl.State, s, left);
    }
    return this.state;
  }

  /** Blocks up to `timeoutMs` until the worker is paused; throws if it ends first or the time passes. */
  waitPaused(timeoutMs: number): void {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const s = this.state;
      if (s === WorkerState.Paused) return;
      if (s === WorkerState.Done) throw new GuestError('guest-ended', 'the guest ended before it paused');
      const left = deadline - performance.now();
      if (left <= 0) throw new GuestError('pause-timeout', `the guest did not reach a safepoint within ${timeoutMs} ms`);
      // Sleeps on the word, not spins: through a switchover this thread runs real-time, and a
      // real-time thread spinning on one of two cores can keep the guest's thread (normal
      // priority) from the safepoint it waits for (tried: the staged guest's start then took
      // 2-5 ms instead of 0.3-0.5).
      Atomics.wait(this.ctl, Ctl.State, s, left);
    }
  }

  // The guest sees the request at its next safepoint (the flag in its memory); WASI calls that
  // block see it in the control block. (The flag page is never a hole: it is placed first.)
  requestPause(): void {
    Atomics.store(this.ctl, Ctl.PauseRequested, 1);
    Atomics.notify(this.ctl, Ctl.PauseRequested); // wakes a guest sleeping in poll_oneoff
    Atomics.store(safepointFlags(this.memory), 0, 1);
    this.signalWake(); // and one blocked on a socket or a pipe (after the flag: it looks at the flag when woken)
  }

  /** Withdraws a pause request (before a resume). */
  clearPauseRequest(): void {
    this.drainWake();
    Atomics.store(this.ctl, Ctl.PauseRequested, 0);
    Atomics.store(safepointFlags(this.memory), 0, 0);
  }

  /** Closes the wake eventfd once the worker has ended. */
  closeWake(): void {
    try {
      closeFd(this.wakeFd);
    } catch {
      // closed already
    }
  }

  private signalWake(): void {
    try {
      eventfdSignal(this.wakeFd);
    } catch {
      // the worker has ended and the fd is closed: nobody to wake
    }
  }

  private drainWake(): void {
    try {
      eventfdDrain(this.wakeFd);
    } catch {
      // closed: nothing to drain
    }
  }
}

/**
 * Starts the worker of a guest (a spare one booted in advance when there is one) with its launch
 * and capture channels; the ports returned are the main thread's ends.
 */
export function startWorker(init: Omit<WorkerInit, 'launchPort' | 'capturePort'>): { worker: Worker; launchPort: MessagePort; capturePort: MessagePort } {
  const channel = new MessageChannel();
  const captures = new MessageChannel();
  const workerInit: WorkerInit = { ...init, launchPort: channel.port2, capturePort: captures.port2 } as WorkerInit;
  const spare = takeSpareWorker();
  let worker: Worker;
  if (spare) {
    spare.postMessage(workerInit, [channel.port2, captures.port2]);
    worker = spare;
  } else {
    worker = new Worker(guestWorkerScript(), { workerData: { ...workerInit, ...guestThreadHints() }, transferList: [channel.port2, captures.port2], resourceLimits: { stackSizeMb: GUEST_STACK_MB } });
  }
  return { worker, launchPort: channel.port1, capturePort: captures.port1 };
}
