// A Guest: one WASI program running on its own worker thread over a shared memory that Ferry
// owns. The main thread controls it through the control block (pause, resume, stop) and gets
// its captured state when it pauses. A guest can start fresh from a module, or from a memory
// image and a captured state — in this process or in another one given the same bytes.
import { EventEmitter } from 'node:events';
import { receiveMessageOnPort, type MessagePort, type Worker } from 'node:worker_threads';
import { Cmd, WorkerState, createControlMemory } from './control-block.js';
import { ModuleCache, type CachedModule } from './module-cache.js';
import type { InstrumentedMeta } from './instrument-meta.js';
import type { LaunchMessage, PausedCapture, ResumeMessage, WorkerInit, WorkerMessage } from './worker-protocol.js';
import {
  checkImports, checkStateFits, DEFAULT_MAX_MEMORY, DEFAULT_UNWIND_BYTES, GuestError, maxPagesFor, stdioOf, WASM_PAGE_SIZE,
  type GuestExit, type GuestPrepareOptions, type GuestRestoreOptions, type GuestStartOptions, type GuestStatus, type PreparedGuestOf, type RestoreBinding, type StagedGuestOf,
} from './guest-types.js';
import { listenersOf, openListeners } from './listeners.js';
import { deferWarmUp, startWarmUp, type DeferredWarmUp } from './warm-up.js';
import { startWorker, WorkerControl } from './worker-control.js';
import { refillGuestThread } from './spare-worker.js';
import { compiledModule } from './compiled-modules.js';
import type { AdoptedSockets } from '../wasi/wasi.js';
import { close as closeFd, EFD_CLOEXEC, EFD_NONBLOCK, eventfd } from '../sys/fd.js';
import type { SockAddress } from '../sys/socket.js';
import { GUEST_STATE_FORMAT, GUEST_STATE_VERSION, type GuestState } from '../state/guest-state.js';

export * from './guest-types.js';
export type PreparedGuest = PreparedGuestOf<Guest>;
export type StagedGuest = StagedGuestOf<Guest>;
const STOP_WAIT_MS = 1000; // how long stop() waits for a running guest thread to end before giving up on it
const STOP_PAUSE_MS = 2000; // how long stop() lets a running guest that holds sockets pause (it then closes them)
const LAUNCH_WAIT_MS = 2000; // how long launch() blocks for the worker to start before falling back to its message

export class Guest extends EventEmitter {
  readonly memory: WebAssembly.Memory;
  readonly meta: InstrumentedMeta;
  readonly moduleHash: string;
  readonly modulePath: string | null;
  /** The original module bytes (what travels to a destination that lacks them). */
  readonly moduleSource: Uint8Array;
  readonly maxMemoryBytes: number;
  /** Resolves when the guest ends, however it ends. */
  readonly exited: Promise<GuestExit>;

  private readonly worker: Worker;
  private readonly control: WorkerControl;
  private statusValue: GuestStatus = 'starting';
  private lastCapture: PausedCapture | null = null;
  private pauseWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private exitInfo: GuestExit | null = null;
  private priorUptimeMs = 0;
  private readonly launchPort: MessagePort;
  private readonly capturePort: MessagePort;
  private readonly finishExit: (e: GuestExit) => void;
  private ready!: Promise<void>;
  private runningSince = 0;
  private runMs = 0;
  private listeningValue: SockAddress[] = [];
  private readonly warmUp: DeferredWarmUp;

  private constructor(init: Omit<WorkerInit, 'launchPort' | 'capturePort'>, meta: InstrumentedMeta, moduleSource: Uint8Array, modulePath: string | null, maxMemoryBytes: number) {
    super();
    this.memory = init.memory;
    this.meta = meta;
    this.moduleHash = meta.sourceHash;
    this.modulePath = modulePath;
    this.moduleSource = moduleSource;
    this.maxMemoryBytes = maxMemoryBytes;
    this.control = new WorkerControl(init.control, init.memory, init.wakeFd);
    ({ worker: this.worker, launchPort: this.launchPort, capturePort: this.capturePort } = startWorker(init));
    // On a thread of its own (the guest's start does not wait for it), so that a pause does not
    // wait for V8 to compile a big function or resume copy on the guest thread (warm-up.ts). A
    // restore's comes at once, since its pause is sure to come; a fresh start's at the first pause
    // request or once the guest has run a while, so a short program never pays for it.
    this.warmUp = init.restore ? { ...startWarmUp(init.module, meta.memory.initialPages), now: () => undefined } : deferWarmUp(init.module, meta.memory.initialPages);
    this.ready = new Promise<void>((resolve, reject) => {
      this.worker.once('message', (m: WorkerMessage) => (m.type === 'ready' ? resolve() : reject(new GuestError('start-failed', m.type === 'error' ? m.message : 'guest worker did not start'))));
      this.once('exit', (e: GuestExit) => reject(new GuestError('start-failed', e.message ?? 'guest worker ended before it was ready')));
    });
    this.ready.catch(() => undefined);
    this.once('started', refillGuestThread);
    let resolveExit!: (e: GuestExit) => void;
    this.exited = new Promise((r) => (resolveExit = r));
    const finish = (e: GuestExit) => {
      if (this.exitInfo) return;
      this.accountRun();
      this.warmUp.cancel();
      this.exitInfo = e;
      this.statusValue = e.reason === 'exit' || e.reason === 'trap' ? 'exited' : e.reason === 'stopped' ? 'stopped' : 'failed';
      for (const w of this.pauseWaiters.splice(0)) w.reject(new GuestError('guest-ended', `guest ended (${e.reason}) before it paused`));
      resolveExit(e);
      this.emit('exit', e);
    };
    this.worker.on('message', (m: WorkerMessage) => {
      switch (m.type) {
        case 'ready':
          break;
        case 'started':
          if (this.statusValue === 'starting') {
            this.statusValue = 'running';
            this.runningSince = performance.now();
          }
          this.emit('started');
          break;
        case 'paused':
          this.takeCapture();
          break;
        case 'pause-failed':
          for (const w of this.pauseWaiters.splice(0)) w.reject(new GuestError('pause-failed', m.message));
          break;
        case 'exit':
          finish({ code: m.code, reason: 'exit' });
          break;
        case 'trap':
          finish({ code: null, reason: 'trap', message: m.message, func: m.func });
          break;
        case 'error':
          finish({ code: null, reason: 'error', message: m.message });
          break;
      }
    });
    this.worker.on('error', (err) => finish({ code: null, reason: 'error', message: err.message }));
    this.worker.on('exit', () => {
      finish({ code: null, reason: 'stopped' });
      this.control.closeWake();
    });
    this.finishExit = finish;
  }

  /** Instruments (or takes from the cache) and starts a module from its first instruction. */
  static async start(opts: GuestStartOptions): Promise<Guest> {
    const cache = opts.cache ?? new ModuleCache();
    const mod = await cache.load(opts.module);
    checkImports(mod.meta);
    const maxPages = maxPagesFor(mod.meta, opts.maxMemoryBytes ?? DEFAULT_MAX_MEMORY);
    const memory = new WebAssembly.Memory({ initial: mod.meta.memory.initialPages, maximum: maxPages, shared: true });
    const listen = openListeners(opts.listen ?? []);
    let guest: Guest;
    try {
      guest = Guest.spawn(mod, memory, opts.modulePath ?? null, maxPages * WASM_PAGE_SIZE);
    } catch (err) {
      for (const l of listen) closeFd(l.hostFd);
      throw err;
    }
    guest.listeningValue = listen.map((l) => ({ family: l.family, address: l.address, port: l.port }));
    // From the launch on the guest's WASI owns the listening sockets (and closes them when it ends).
    await guest.launch({
      fresh: {
        wasi: {
          args: opts.args ?? [opts.modulePath ?? 'guest.wasm'],
          env: opts.env ?? {},
          preopens: opts.preopens ?? [],
          stdio: stdioOf(opts.stdio),
          listen,
        },
        dataImage: mod.dataImage,
      },
    });
    return guest;
  }

  /**
   * Spawns the worker for a guest that will be restored into `memory` and leaves it waiting, so
   * that the switchover of a migration only has to hand it the state (no thread start, no
   * compilation inside the downtime).
   */
  static async prepare(opts: GuestPrepareOptions): Promise<PreparedGuest> {
    const cache = opts.cache ?? new ModuleCache();
    const mod = await cache.load(opts.module);
    checkImports(mod.meta);
    const guest = Guest.spawn(mod, opts.memory, opts.modulePath ?? null, opts.maxMemoryBytes, { rehearse: opts.rehearse ?? true });
    await guest.ready;
    const handOver = (state: GuestState, binding: RestoreBinding & { startPaused?: boolean }, waitForGo: boolean) => {
      checkStateFits(guest.meta, state, opts.memory);
      if (binding.startPaused) {
        guest.requestPause();
        guest.statusValue = 'pausing';
      }
      guest.priorUptimeMs = state.uptimeMs;
      guest.listeningValue = listenersOf(state);
      guest.sendLaunch({
        restore: { exec: state.exec, wasi: state.wasi, preopens: binding.preopens ?? [], stdio: stdioOf(binding.stdio), sockets: binding.sockets ?? {} },
        waitForGo,
      });
    };
    return {
      launchRestore: async (state, binding) => {
        handOver(state, binding, false);
        await guest.whenRunning();
        return guest;
      },
      stageRestore: (state, binding) => {
        handOver(state, binding, true);
        return {
          go: async () => {
            guest.control.command(Cmd.Go);
            await guest.whenRunning();
            return guest;
          },
        };
      },
      dispose: () => guest.stop().then(() => undefined),
    };
  }

  /** Continues a captured guest over `memory`, which holds (or will hold) its pages. */
  static async restore(opts: GuestRestoreOptions): Promise<Guest> {
    const prepared = await Guest.prepare({
      module: opts.module,
      // Launched the moment it is ready: a rehearsal (30 runs, 15-21 ms in a thread here) would
      // only be waited for, as restoreSnapshot's start-at-once knows too.
      rehearse: false,
      memory: opts.memory,
      maxMemoryBytes: opts.state.memory.maxBytes,
      modulePath: opts.modulePath ?? null,
      ...(opts.cache ? { cache: opts.cache } : {}),
    });
    try {
      return await prepared.launchRestore(opts.state, { preopens: opts.preopens ?? [], stdio: opts.stdio ?? {}, startPaused: opts.startPaused ?? false, sockets: opts.sockets ?? {} });
    } catch (err) {
      // A refused state (wrong module, memory too small) must not leave the waiting worker behind:
      // it would keep the process alive forever.
      await prepared.dispose();
      throw err;
    }
  }

  /** `restore`: the worker is prepared for a restore (null: a fresh start). */
  private static spawn(mod: CachedModule, memory: WebAssembly.Memory, modulePath: string | null, maxMemoryBytes: number, restore: { rehearse: boolean } | null = null): Guest {
    const init: Omit<WorkerInit, 'launchPort' | 'capturePort'> = {
      module: compiledModule(mod),
      meta: mod.meta,
      memory,
      control: createControlMemory(),
      unwindBytes: DEFAULT_UNWIND_BYTES,
      restore,
      wakeFd: eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC),
    };
    return new Guest(init, mod.meta, mod.source, modulePath, maxMemoryBytes);
  }

  private async launch(msg: LaunchMessage): Promise<void> {
    await this.ready;
    this.sendLaunch(msg);
    await this.whenRunning();
  }

  /** The worker must be ready (it waits for the launch on its control word). */
  private sendLaunch(msg: LaunchMessage): void {
    this.launchPort.postMessage(msg);
    this.control.command(Cmd.Launch);
  }

  private async whenRunning(): Promise<void> {
    // Wait on the state word rather than for the 'started' message: the guest is running as soon
    // as the worker says so, whatever this thread's event loop is busy with (a switchover's
    // downtime ends here).
    if (this.control.waitWhileStarting(LAUNCH_WAIT_MS) === WorkerState.Running && this.statusValue === 'starting') {
      this.statusValue = 'running';
      this.runningSince = performance.now();
      return;
    }
    await this.whenStarted();
  }

  get status(): GuestStatus {
    return this.statusValue;
  }

  get exitResult(): GuestExit | null {
    return this.exitInfo;
  }

  /** The TCP addresses the guest listens on (`listen`, or those a restored state re-created), in guest fd order. */
  get listening(): SockAddress[] {
    return this.listeningValue.map((a) => ({ ...a }));
  }

  /** Milliseconds the guest has run, over all its hosts. */
  get uptimeMs(): number {
    const now = this.statusValue === 'running' ? performance.now() - this.runningSince : 0;
    return Math.round(this.priorUptimeMs + this.runMs + now);
  }

  /** Returns once the guest sits at a safepoint with its stack unwound. */
  pause(): Promise<void> {
    if (this.statusValue === 'paused') return Promise.resolve();
    // A Promise-returning method reports failure by rejecting, never by throwing synchronously.
    try {
      this.assertLive('pause');
    } catch (err) {
      return Promise.reject(err);
    }
    const p = new Promise<void>((resolve, reject) => this.pauseWaiters.push({ resolve, reject }));
    this.statusValue = 'pausing';
    this.requestPause();
    return p;
  }

  /**
   * Pauses and blocks this thread (up to timeoutMs) until the guest sits at a safepoint: the
   * switchover of a migration uses it, so that its downtime does not include a turn of a busy
   * event loop. Throws if the guest does not pause in time or ends.
   */
  pauseNow(timeoutMs = 5000): void {
    if (this.statusValue === 'paused') return;
    this.assertLive('pause');
    this.statusValue = 'pausing';
    this.requestPause();
    this.control.waitPaused(timeoutMs);
    this.takeCapture();
  }

  private requestPause(): void {
    this.emit('pause-requested'); // GET /metrics times pauses from here to 'paused'
    this.control.requestPause();
    this.warmUp.now();
  }

  // The worker posts its capture before it marks itself paused; take it (once) from the port.
  private takeCapture(): void {
    if (this.statusValue === 'paused') return;
    const m = receiveMessageOnPort(this.capturePort);
    if (!m) return;
    this.accountRun();
    this.lastCapture = m.message as PausedCapture;
    this.statusValue = 'paused';
    for (const w of this.pauseWaiters.splice(0)) w.resolve();
    this.emit('paused');
  }

  /** Continues a paused guest; `accepted`: connections its listeners (by guest fd) hand out next. */
  resume(accepted?: Record<number, number[]>): void {
    if (this.statusValue !== 'paused') throw new GuestError('not-paused', `cannot resume a guest that is ${this.statusValue}`);
    if (accepted !== undefined) this.launchPort.postMessage({ accepted } satisfies ResumeMessage);
    this.lastCapture = null;
    this.control.clearPauseRequest();
    this.statusValue = 'running';
    this.runningSince = performance.now();
    this.control.command(Cmd.Resume);
  }

  /** The state of the paused guest (memory excluded). */
  capture(): GuestState {
    if (this.statusValue !== 'paused' || !this.lastCapture) throw new GuestError('not-paused', `capture needs a paused guest (it is ${this.statusValue})`);
    const { memoryBytes: bytes, exec, wasi } = this.lastCapture;
    const module = { hash: this.meta.sourceHash, size: this.meta.sourceSize };
    return { format: GUEST_STATE_FORMAT, version: GUEST_STATE_VERSION, module, memory: { bytes, maxBytes: this.maxMemoryBytes }, exec, wasi, uptimeMs: this.uptimeMs };
  }

  /** Host fds of the paused guest's live sockets by guest fd (what a live migration moves). */
  hostSockets(): AdoptedSockets {
    return this.pausedCapture('the sockets').hostSockets;
  }

  /** Reasons the paused guest cannot leave this host (sockets unless `socketsMove`, pipes...), empty if it can. */
  movabilityProblems(opts: { socketsMove?: boolean } = {}): string[] {
    const c = this.pausedCapture('movability');
    return opts.socketsMove === true ? c.problemsIfSocketsMove : c.movabilityProblems;
  }

  private pausedCapture(what: string): PausedCapture {
    if (!this.lastCapture) throw new GuestError('not-paused', `${what} is known only for a paused guest`);
    return this.lastCapture;
  }

  /**
   * Ends the guest without running any more guest code: no atexit handlers, no stdio flush.
   * A paused worker is told to stop; a running one is terminated where it stands (it may be
   * blocked on a memory hole, which only termination can end).
   */
  async stop(): Promise<GuestExit> {
    if (this.exitInfo) return this.exitInfo;
    if (this.control.state === WorkerState.Running && this.control.holdsSockets) {
      // Terminating the thread would leave its sockets open in this process (listening, and
      // connections whose peers would wait forever): a guest blocked on a socket pauses at once,
      // and a paused guest's stop closes them.
      await Promise.race([this.pause().catch(() => undefined), new Promise((r) => setTimeout(r, STOP_PAUSE_MS).unref())]);
      if (this.exitInfo) return this.exitInfo;
    }
    if (this.control.state === WorkerState.Paused) {
      this.control.command(Cmd.Stop);
    } else {
      // A thread blocked in the kernel on a userfaultfd hole cannot be interrupted: do not wait
      // for it forever (the process exits around it; the kernel ends it with the process).
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([this.worker.terminate(), new Promise((r) => (timer = setTimeout(r, STOP_WAIT_MS)))]);
      clearTimeout(timer);
      if (!this.exitInfo) this.finishExit({ code: null, reason: 'stopped' });
    }
    return this.exited;
  }

  private whenStarted(): Promise<void> {
    return new Promise((resolve, reject) => {
      if (this.statusValue !== 'starting' && this.statusValue !== 'pausing') return resolve();
      const onStart = () => {
        this.off('exit', onExit);
        resolve();
      };
      const onExit = (e: GuestExit) => {
        this.off('started', onStart);
        if (e.reason === 'error') reject(new GuestError('start-failed', e.message ?? 'guest failed to start'));
        else resolve();
      };
      this.once('started', onStart);
      this.once('exit', onExit);
    });
  }

  private assertLive(op: string): void {
    if (this.exitInfo) throw new GuestError('guest-ended', `cannot ${op}: the guest has ${this.statusValue}`);
  }

  private accountRun(): void {
    if (this.statusValue === 'running' && this.runningSince > 0) this.runMs += performance.now() - this.runningSince;
    this.runningSince = 0;
  }
}
