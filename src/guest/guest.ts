// A Guest: one WASI program running on its own worker thread over a shared memory that Ferry
// owns. The main thread controls it through the control block (pause, resume, stop) and gets
// its captured state when it pauses. A guest can start fresh from a module, or from a memory
// image and a captured state — in this process or in another one given the same bytes.
import { EventEmitter } from 'node:events';
import { MessageChannel, Worker, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { Cmd, Ctl, WorkerState, controlWords, createControlMemory, safepointFlags } from './control-block.js';
import { ModuleCache, type CachedModule } from './module-cache.js';
import { takeSpareWorker } from './spare-worker.js';
import { ModuleRejected, type InstrumentedMeta } from './instrument.js';
import type { LaunchMessage, PausedCapture, WorkerInit, WorkerMessage } from './worker-protocol.js';
import type { ListenSocket, Preopen, StdioBinding } from '../wasi/wasi.js';
import { close as closeFd, EFD_CLOEXEC, EFD_NONBLOCK, eventfd, eventfdDrain, eventfdSignal } from '../sys/fd.js';
import { sockAddress, tcpListen, type SockAddress } from '../sys/socket.js';
import { isIP } from 'node:net';
import { GUEST_STATE_FORMAT, GUEST_STATE_VERSION, type GuestState } from '../state/guest-state.js';
import { WASI_PREVIEW1_FUNCTIONS } from '../wasi/functions.js';

import { WASM_PAGE_SIZE } from '../memory/guest-memory.js';
export { WASM_PAGE_SIZE };
export const DEFAULT_MAX_MEMORY = 4 * 1024 * 1024 * 1024;
/** Bytes of linear memory reserved for the unwound stack at the first pause. */
export const DEFAULT_UNWIND_BYTES = 256 * 1024;
/** How long stop() waits for a running guest thread to end before giving up on it. */
const STOP_WAIT_MS = 1000;
/** How long stop() lets a running guest that holds sockets reach a pause (it then closes them). */
const STOP_PAUSE_MS = 2000;
/** How long launch() blocks for the worker to start before falling back to its message. */
const LAUNCH_WAIT_MS = 2000;

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
  /**
   * TCP addresses to listen on for the guest (`ferry run --listen`): each becomes a listening socket
   * at the next guest fds after the preopened directories. Numeric addresses; port 0 picks a free port.
   */
  listen?: { host: string; port: number }[];
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

export class GuestError extends Error {
  constructor(readonly code: string, message: string) {
    super(message);
    this.name = 'GuestError';
  }
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

  private readonly worker: Worker;
  private readonly ctl: Int32Array;
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
  private readonly wakeFd: number;
  private listeningValue: SockAddress[] = [];

  private constructor(
    init: WorkerInit,
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
    this.ctl = controlWords(init.control);
    this.wakeFd = init.wakeFd;
    const channel = new MessageChannel();
    const captures = new MessageChannel();
    this.launchPort = channel.port1;
    this.capturePort = captures.port1;
    const workerInit: WorkerInit = { ...init, launchPort: channel.port2, capturePort: captures.port2 };
    const spare = takeSpareWorker();
    if (spare) {
      spare.postMessage(workerInit, [channel.port2, captures.port2]);
      this.worker = spare;
    } else {
      this.worker = new Worker(new URL('./worker.js', import.meta.url), { workerData: workerInit, transferList: [channel.port2, captures.port2] });
    }
    this.ready = new Promise<void>((resolve, reject) => {
      this.worker.once('message', (m: WorkerMessage) => (m.type === 'ready' ? resolve() : reject(new GuestError('start-failed', m.type === 'error' ? m.message : 'guest worker did not start'))));
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
      try {
        closeFd(this.wakeFd);
      } catch {
        // closed already
      }
    });
    this.finishExit = finish;
  }

  /** Instruments (or takes from the cache) and starts a module from its first instruction. */
  static async start(opts: GuestStartOptions): Promise<Guest> {
    const cache = opts.cache ?? new ModuleCache();
    const mod = await cache.load(opts.module);
    checkImports(mod.meta);
    const maxMemoryBytes = opts.maxMemoryBytes ?? DEFAULT_MAX_MEMORY;
    const capPages = Math.floor(maxMemoryBytes / WASM_PAGE_SIZE);
    if (capPages < 1 || capPages > 65536) throw new GuestError('bad-max-memory', `max memory must be between 64 KiB and 4 GiB`);
    const maxPages = Math.min(mod.meta.memory.declaredMaxPages ?? 65536, capPages);
    if (mod.meta.memory.initialPages > maxPages) {
      throw new ModuleRejected(
        `module needs ${fmtBytes(mod.meta.memory.initialPages * WASM_PAGE_SIZE)} of initial memory, more than the maximum of ${fmtBytes(maxPages * WASM_PAGE_SIZE)} (--max-memory)`,
      );
    }
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
    const guest = Guest.spawn(mod, opts.memory, opts.modulePath ?? null, opts.maxMemoryBytes, true);
    await guest.ready;
    const handOver = (state: GuestState, binding: { preopens?: Preopen[]; stdio?: Partial<StdioBinding>; startPaused?: boolean }, waitForGo: boolean) => {
      guest.checkState(state, opts.memory);
      if (binding.startPaused) {
        guest.requestPause();
        guest.statusValue = 'pausing';
      }
      guest.priorUptimeMs = state.uptimeMs;
      guest.listeningValue = listenersOf(state);
      guest.sendLaunch({
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
            Atomics.store(guest.ctl, Ctl.Command, Cmd.Go);
            Atomics.notify(guest.ctl, Ctl.Command);
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
    const init: Omit<WorkerInit, 'launchPort' | 'capturePort'> = {
      module: new WebAssembly.Module(mod.binary as Uint8Array<ArrayBuffer>),
      meta: mod.meta,
      memory,
      control: createControlMemory(),
      unwindBytes: DEFAULT_UNWIND_BYTES,
      rehearseRestore,
      wakeFd: eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC),
    };
    return new Guest(init as WorkerInit, mod.meta, mod.source, modulePath, maxMemoryBytes);
  }

  private async launch(msg: LaunchMessage): Promise<void> {
    await this.ready;
    this.sendLaunch(msg);
    await this.whenRunning();
  }

  /** The worker must be ready (it waits for the launch on its control word). */
  private sendLaunch(msg: LaunchMessage): void {
    this.launchPort.postMessage(msg);
    Atomics.store(this.ctl, Ctl.Command, Cmd.Launch);
    Atomics.notify(this.ctl, Ctl.Command);
  }

  private async whenRunning(): Promise<void> {
    // Wait on the state word rather than for the 'started' message: the guest is running as soon
    // as the worker says so, whatever this thread's event loop is busy with (a switchover's
    // downtime ends here).
    const deadline = performance.now() + LAUNCH_WAIT_MS;
    for (let s = Atomics.load(this.ctl, Ctl.State); s === WorkerState.Starting; s = Atomics.load(this.ctl, Ctl.State)) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      Atomics.wait(this.ctl, Ctl.State, s, left);
    }
    if (Atomics.load(this.ctl, Ctl.State) === WorkerState.Running && this.statusValue === 'starting') {
      this.statusValue = 'running';
      this.runningSince = performance.now();
      return;
    }
    await this.whenStarted();
  }

  private checkState(state: GuestState, memory: WebAssembly.Memory): void {
    if (this.meta.sourceHash !== state.module.hash) {
      throw new GuestError('module-mismatch', `state belongs to module ${state.module.hash.slice(0, 12)}…, not ${this.meta.sourceHash.slice(0, 12)}…`);
    }
    if (memory.buffer.byteLength < state.memory.bytes) {
      throw new GuestError('memory-too-small', `memory holds ${memory.buffer.byteLength} bytes, state needs ${state.memory.bytes}`);
    }
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
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const s = Atomics.load(this.ctl, Ctl.State);
      if (s === WorkerState.Paused) break;
      if (s === WorkerState.Done) throw new GuestError('guest-ended', 'the guest ended before it paused');
      const left = deadline - performance.now();
      if (left <= 0) throw new GuestError('pause-timeout', `the guest did not reach a safepoint within ${timeoutMs} ms`);
      // Sleeps on the word, not spins: through a switchover this thread runs real-time, and a
      // real-time thread spinning on one of two cores can keep the guest's thread (normal
      // priority) from the safepoint it waits for (tried: the staged guest's start then took
      // 2-5 ms instead of 0.3-0.5).
      Atomics.wait(this.ctl, Ctl.State, s, left);
    }
    this.takeCapture();
  }

  // The guest sees the request at its next safepoint (the flag in its memory); WASI calls that
  // block see it in the control block. (The flag page is never a hole: it is placed first.)
  private requestPause(): void {
    this.emit('pause-requested'); // GET /metrics times pauses from here to 'paused'
    Atomics.store(this.ctl, Ctl.PauseRequested, 1);
    Atomics.notify(this.ctl, Ctl.PauseRequested); // wakes a guest sleeping in poll_oneoff
    Atomics.store(safepointFlags(this.memory), 0, 1);
    this.signalWake(); // and one blocked on a socket or a pipe (after the flag: it looks at the flag when woken)
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

  /** Continues a paused guest. */
  resume(): void {
    if (this.statusValue !== 'paused') throw new GuestError('not-paused', `cannot resume a guest that is ${this.statusValue}`);
    this.lastCapture = null;
    this.drainWake();
    Atomics.store(this.ctl, Ctl.PauseRequested, 0);
    Atomics.store(safepointFlags(this.memory), 0, 0);
    this.statusValue = 'running';
    this.runningSince = performance.now();
    Atomics.store(this.ctl, Ctl.Command, Cmd.Resume);
    Atomics.notify(this.ctl, Ctl.Command);
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
    if (Atomics.load(this.ctl, Ctl.State) === WorkerState.Running && Atomics.load(this.ctl, Ctl.HoldsSockets) !== 0) {
      // Terminating the thread would leave its sockets open in this process (listening, and
      // connections whose peers would wait forever): a guest blocked on a socket pauses at once,
      // and a paused guest's stop closes them.
      await Promise.race([this.pause().catch(() => undefined), new Promise((r) => setTimeout(r, STOP_PAUSE_MS).unref())]);
      if (this.exitInfo) return this.exitInfo;
    }
    if (Atomics.load(this.ctl, Ctl.State) === WorkerState.Paused) {
      Atomics.store(this.ctl, Ctl.Command, Cmd.Stop);
      Atomics.notify(this.ctl, Ctl.Command);
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

  private accountRun(): void {
    if (this.statusValue === 'running' && this.runningSince > 0) this.runMs += performance.now() - this.runningSince;
    this.runningSince = 0;
  }
}

/** Opens the listening sockets of `--listen` (numeric addresses; "localhost" means 127.0.0.1). */
function openListeners(specs: { host: string; port: number }[]): ListenSocket[] {
  const out: ListenSocket[] = [];
  try {
    for (const { host, port } of specs) {
      const address = host === 'localhost' ? '127.0.0.1' : host.replace(/^\[(.*)\]$/, '$1');
      const family = isIP(address);
      if (family !== 4 && family !== 6) throw new GuestError('bad-listen', `listen address ${JSON.stringify(host)} is not a numeric IPv4 or IPv6 address`);
      if (!Number.isInteger(port) || port < 0 || port > 65535) throw new GuestError('bad-listen', `listen port ${port} is not in 0..65535`);
      let hostFd: number;
      try {
        hostFd = tcpListen(family, address, port);
      } catch (err) {
        throw new GuestError('bad-listen', `cannot listen on ${family === 6 ? `[${address}]` : address}:${port}: ${(err as Error).message}`);
      }
      const bound = sockAddress(hostFd);
      out.push({ hostFd, family, address: bound.address, port: bound.port });
    }
  } catch (err) {
    for (const l of out) closeFd(l.hostFd);
    throw err;
  }
  return out;
}

function listenersOf(state: GuestState): SockAddress[] {
  return state.wasi.fds.flatMap((f) => (f.kind === 'listener' && f.socket ? [{ family: f.socket.family, address: f.socket.address, port: f.socket.port }] : []));
}

function stdioOf(s: Partial<StdioBinding> | undefined): StdioBinding {
  return { stdin: s?.stdin ?? 0, stdout: s?.stdout ?? 1, stderr: s?.stderr ?? 2 };
}

function checkImports(meta: InstrumentedMeta): void {
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
