// A Guest: one WASI program running on its own worker thread over a shared memory that Ferry
// owns. The main thread controls it through the control block (pause, resume, stop) and gets
// its captured state when it pauses. A guest can start fresh from a module, or from a memory
// image and a captured state — in this process or in another one given the same bytes.
import { EventEmitter } from 'node:events';
import { Cmd, WorkerState, createControlMemory } from './control-block.js';
import { GuestThread } from './guest-thread.js';
import { ModuleCache, type CachedModule } from './module-cache.js';
import type { InstrumentedMeta } from './instrument.js';
import type { LaunchMessage, PausedCapture, WorkerInit, WorkerMessage } from './worker-protocol.js';
import type { Preopen, StdioBinding } from '../wasi/wasi.js';
import { GUEST_STATE_FORMAT, GUEST_STATE_VERSION, type GuestState } from '../state/guest-state.js';
import { DEFAULT_MAX_MEMORY, DEFAULT_UNWIND_BYTES, GuestError, type GuestExit, type GuestPrepareOptions, type GuestRestoreOptions, type GuestStartOptions, type GuestStatus } from './options.js';
import { checkImports, checkStateFits, freshMemory, stdioOf } from './module-checks.js';

export { DEFAULT_MAX_MEMORY, GuestError } from './options.js';
export type { GuestExit, GuestStatus, GuestStartOptions, GuestRestoreOptions, GuestPrepareOptions } from './options.js';
/** How long launch() blocks for the worker to start before falling back to its message. */
const LAUNCH_WAIT_MS = 2000;

export interface PreparedGuest {
  /** Hands the waiting worker a captured state; resolves once the guest runs (or waits paused). */
  launchRestore(state: GuestState, binding: { preopens?: Preopen[]; stdio?: Partial<StdioBinding>; startPaused?: boolean }): Promise<Guest>;
  /**
   * Hands the waiting worker a captured state now and lets it set up everything but guest memory
   * (descriptors, globals); the guest runs only at go(). A migration destination stages when the
   * state arrives and says go at the commit, so little is left for the downtime.
   */
  stageRestore(state: GuestState, binding: { preopens?: Preopen[]; stdio?: Partial<StdioBinding> }): StagedGuest;
  /** Ends the waiting worker (a migration that failed before its commit). */
  dispose(): Promise<void>;
}

export interface StagedGuest {
  /** Lets the staged guest run (its memory is in place); resolves once it runs. */
  go(): Promise<Guest>;
}

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

  private readonly thread: GuestThread;
  private statusValue: GuestStatus = 'starting';
  private lastCapture: PausedCapture | null = null;
  private pauseWaiters: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private exitInfo: GuestExit | null = null;
  private priorUptimeMs = 0;
  private readonly finishExit: (e: GuestExit) => void;
  private ready!: Promise<void>;
  private runningSince = 0;
  private runMs = 0;

  private constructor(
    init: Omit<WorkerInit, 'launchPort' | 'capturePort'>,
    meta: InstrumentedMeta,
    moduleSource: Uint8Array,
    modulePath: string | null,
    maxMemoryBytes: number,
  ) {
    super();
    this.memory = init.memory;
    this.meta = meta;
    this.moduleHash = meta.sourceHash;
    this.modulePath = modulePath;
    this.moduleSource = moduleSource;
    this.maxMemoryBytes = maxMemoryBytes;
    this.thread = new GuestThread(init);
    const worker = this.thread.worker;
    this.ready = new Promise<void>((resolve, reject) => {
      worker.once('message', (m: WorkerMessage) => (m.type === 'ready' ? resolve() : reject(new GuestError('start-failed', m.type === 'error' ? m.message : 'guest worker did not start'))));
      this.once('exit', (e: GuestExit) => reject(new GuestError('start-failed', e.message ?? 'guest worker ended before it was ready')));
    });
    this.ready.catch(() => undefined);
    let resolveExit!: (e: GuestExit) => void;
    this.exited = new Promise((r) => (resolveExit = r));
    const finish = (e: GuestExit) => {
      if (this.exitInfo) return;
      this.accountRun();
      this.exitInfo = e;
      this.statusValue = e.reason === 'exit' || e.reason === 'trap' ? 'exited' : e.reason === 'stopped' ? 'stopped' : 'failed';
      for (const w of this.pauseWaiters.splice(0)) w.reject(new GuestError('guest-ended', `guest ended (${e.reason}) before it paused`));
      resolveExit(e);
      this.emit('exit', e);
    };
    worker.on('message', (m: WorkerMessage) => {
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
    worker.on('error', (err) => finish({ code: null, reason: 'error', message: err.message }));
    worker.on('exit', () => finish({ code: null, reason: 'stopped' }));
    this.finishExit = finish;
  }

  /** Instruments (or takes from the cache) and starts a module from its first instruction. */
  static async start(opts: GuestStartOptions): Promise<Guest> {
    const cache = opts.cache ?? new ModuleCache();
    const mod = await cache.load(opts.module);
    checkImports(mod.meta);
    const { memory, maxBytes } = freshMemory(mod.meta, opts.maxMemoryBytes ?? DEFAULT_MAX_MEMORY);
    const guest = Guest.spawn(mod, memory, opts.modulePath ?? null, maxBytes);
    await guest.launch({
      fresh: {
        wasi: {
          args: opts.args ?? [opts.modulePath ?? 'guest.wasm'],
          env: opts.env ?? {},
          preopens: opts.preopens ?? [],
          stdio: stdioOf(opts.stdio),
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
    const guest = Guest.spawn(mod, opts.memory, opts.modulePath ?? null, opts.maxMemoryBytes, true);
    await guest.ready;
    const handOver = (state: GuestState, binding: { preopens?: Preopen[]; stdio?: Partial<StdioBinding>; startPaused?: boolean }, waitForGo: boolean) => {
      checkStateFits(guest.meta, state, opts.memory);
      if (binding.startPaused) {
        guest.requestPause();
        guest.statusValue = 'pausing';
      }
      guest.priorUptimeMs = state.uptimeMs;
      guest.thread.launch({
        restore: { exec: state.exec, wasi: state.wasi, preopens: binding.preopens ?? [], stdio: stdioOf(binding.stdio) },
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
            guest.thread.command(Cmd.Go);
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
      memory: opts.memory,
      maxMemoryBytes: opts.state.memory.maxBytes,
      modulePath: opts.modulePath ?? null,
      ...(opts.cache ? { cache: opts.cache } : {}),
    });
    try {
      return await prepared.launchRestore(opts.state, { preopens: opts.preopens ?? [], stdio: opts.stdio ?? {}, startPaused: opts.startPaused ?? false });
    } catch (err) {
      // A refused state (wrong module, memory too small) must not leave the waiting worker behind:
      // it would keep the process alive forever.
      await prepared.dispose();
      throw err;
    }
  }

  private static spawn(mod: CachedModule, memory: WebAssembly.Memory, modulePath: string | null, maxMemoryBytes: number, rehearseRestore = false): Guest {
    const init = {
      module: new WebAssembly.Module(mod.binary as Uint8Array<ArrayBuffer>),
      meta: mod.meta,
      memory,
      control: createControlMemory(),
      unwindBytes: DEFAULT_UNWIND_BYTES,
      rehearseRestore,
    };
    return new Guest(init, mod.meta, mod.source, modulePath, maxMemoryBytes);
  }

  private async launch(msg: LaunchMessage): Promise<void> {
    await this.ready;
    this.thread.launch(msg);
    await this.whenRunning();
  }

  private async whenRunning(): Promise<void> {
    // Wait on the state word rather than for the 'started' message: the guest is running as soon
    // as the worker says so, whatever this thread's event loop is busy with (a switchover's
    // downtime ends here).
    if (this.thread.waitWhile(WorkerState.Starting, LAUNCH_WAIT_MS) === WorkerState.Running && this.statusValue === 'starting') {
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
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const s = this.thread.state;
      if (s === WorkerState.Paused) break;
      if (s === WorkerState.Done) throw new GuestError('guest-ended', 'the guest ended before it paused');
      const left = deadline - performance.now();
      if (left <= 0) throw new GuestError('pause-timeout', `the guest did not reach a safepoint within ${timeoutMs} ms`);
      // (Sleeping, not spinning, matters here: with a spin the staged guest's start took 2-5 ms instead of 0.3-0.5.)
      this.thread.waitWhile(s, left);
    }
    this.takeCapture();
  }

  private requestPause(): void {
    this.emit('pause-requested'); // GET /metrics times pauses from here to 'paused'
    this.thread.requestPause(this.memory);
  }

  // The worker posts its capture before it marks itself paused; take it (once) from the port.
  private takeCapture(): void {
    if (this.statusValue === 'paused') return;
    const capture = this.thread.takeCapture();
    if (!capture) return;
    this.accountRun();
    this.lastCapture = capture;
    this.statusValue = 'paused';
    for (const w of this.pauseWaiters.splice(0)) w.resolve();
    this.emit('paused');
  }

  /** Continues a paused guest. */
  resume(): void {
    if (this.statusValue !== 'paused') throw new GuestError('not-paused', `cannot resume a guest that is ${this.statusValue}`);
    this.lastCapture = null;
    this.thread.clearPause(this.memory);
    this.statusValue = 'running';
    this.runningSince = performance.now();
    this.thread.command(Cmd.Resume);
  }

  /** The state of the paused guest (memory excluded). */
  capture(): GuestState {
    if (this.statusValue !== 'paused' || !this.lastCapture) throw new GuestError('not-paused', `capture needs a paused guest (it is ${this.statusValue})`);
    const c = this.lastCapture;
    return {
      format: GUEST_STATE_FORMAT,
      version: GUEST_STATE_VERSION,
      module: { hash: this.meta.sourceHash, size: this.meta.sourceSize },
      memory: { bytes: c.memoryBytes, maxBytes: this.maxMemoryBytes },
      exec: c.exec,
      wasi: c.wasi,
      uptimeMs: this.uptimeMs,
    };
  }

  /** Reasons the paused guest cannot leave this host (sockets, pipes...), empty if it can. */
  movabilityProblems(): string[] {
    if (!this.lastCapture) throw new GuestError('not-paused', 'movability is known only for a paused guest');
    return this.lastCapture.movabilityProblems;
  }

  /**
   * Ends the guest without running any more guest code: no atexit handlers, no stdio flush.
   * A paused worker is told to stop; a running one is terminated where it stands (it may be
   * blocked on a memory hole, which only termination can end).
   */
  async stop(): Promise<GuestExit> {
    if (this.exitInfo) return this.exitInfo;
    if (this.thread.state === WorkerState.Paused) this.thread.command(Cmd.Stop);
    else {
      await this.thread.terminate();
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
