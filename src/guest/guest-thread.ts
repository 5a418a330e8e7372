// A guest's worker thread as the main thread sees it: its start, the ports a launch and a capture
// travel on, and the control block's words — commands to the worker, the state it publishes, the
// pause request — with the waits on them. Guest (guest.ts) keeps the guest's lifecycle on top.
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { Cmd, Ctl, WorkerState, controlWords, safepointFlags } from './control-block.js';
import type { LaunchMessage, PausedCapture, WorkerInit } from './worker-protocol.js';

/** How long terminate() waits for a running guest thread to end before giving up on it. */
const STOP_WAIT_MS = 1000;

export class GuestThread {
  readonly worker: Worker;
  private readonly ctl: Int32Array;
  private readonly launchPort: MessagePort;
  private readonly capturePort: MessagePort;

  constructor(init: Omit<WorkerInit, 'launchPort' | 'capturePort'>) {
    this.ctl = controlWords(init.control);
    const channel = new MessageChannel();
    const captures = new MessageChannel();
    this.launchPort = channel.port1;
    this.capturePort = captures.port1;
    this.worker = new Worker(new URL('./worker.js', import.meta.url), {
      workerData: { ...init, launchPort: channel.port2, capturePort: captures.port2 },
      transferList: [channel.port2, captures.port2],
    });
  }

  /** The state the worker published last. */
  get state(): WorkerState {
    return Atomics.load(this.ctl, Ctl.State);
  }

  /** Hands a waiting worker what to run. The worker must be ready (it waits on its command word). */
  launch(msg: LaunchMessage): void {
    this.launchPort.postMessage(msg);
    this.command(Cmd.Launch);
  }

  command(cmd: Cmd): void {
    Atomics.store(this.ctl, Ctl.Command, cmd);
    Atomics.notify(this.ctl, Ctl.Command);
  }

  /**
   * Blocks this thread while the worker's state is `from`, for `timeoutMs` at most, and returns the
   * state then. It sleeps on the word rather than spinning: through a switchover this thread runs
   * real-time, and a real-time thread spinning on one of two cores can keep the guest's thread
   * (normal priority) from the safepoint it waits for.
   */
  waitWhile(from: WorkerState, timeoutMs: number): WorkerState {
    const deadline = performance.now() + timeoutMs;
    for (let s = this.state; s === from; s = this.state) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      Atomics.wait(this.ctl, Ctl.State, s, left);
    }
    return this.state;
  }

  // The guest sees the request at its next safepoint (the flag in its memory); WASI calls that
  // block see it in the control block. (The flag page is never a hole: it is placed first.)
  requestPause(memory: WebAssembly.Memory): void {
    Atomics.store(this.ctl, Ctl.PauseRequested, 1);
    Atomics.notify(this.ctl, Ctl.PauseRequested); // wakes a guest sleeping in poll_oneoff
    Atomics.store(safepointFlags(memory), 0, 1);
  }

  clearPause(memory: WebAssembly.Memory): void {
    Atomics.store(this.ctl, Ctl.PauseRequested, 0);
    Atomics.store(safepointFlags(memory), 0, 0);
  }

  /** The capture the worker posts before it marks itself paused, if it has come. */
  takeCapture(): PausedCapture | null {
    const m = receiveMessageOnPort(this.capturePort);
    return m ? (m.message as PausedCapture) : null;
  }

  /**
   * Ends the thread where it stands. A thread blocked in the kernel on a userfaultfd hole cannot
   * be interrupted: this does not wait for it forever (the kernel ends it with the process).
   */
  async terminate(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([this.worker.terminate(), new Promise((r) => (timer = setTimeout(r, STOP_WAIT_MS)))]);
    clearTimeout(timer);
  }
}
