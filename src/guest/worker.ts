// The guest's thread. It instantiates the instrumented module over Ferry's shared memory, runs
// `_start`, and handles pauses: at a safepoint (or inside a blocking WASI call) it unwinds the
// whole Wasm stack into linear memory with Asyncify, reports a capture, and waits on the control
// block. Resume rewinds the stack and continues; stop ends the thread without running guest code.
import { tmpdir } from 'node:os';
import { parentPort, receiveMessageOnPort } from 'node:worker_threads';
import { Cmd, Ctl, WorkerState, controlWords, safepointFlags } from './control-block.js';
import type { LaunchMessage, PausedCapture, ResumeMessage, WorkerInit, WorkerMessage } from './worker-protocol.js';
import { spareHint, workerInit } from '../sys/spare-threads.js';
import { REHEARSE_HINT } from './spare-worker.js';
import { decodeGlobal, encodeGlobal, type ExecState } from '../state/exec-state.js';
import { UnwindBuffer } from './unwind-buffer.js';
import { Wasi, WasiExit, type WasiHooks } from '../wasi/wasi.js';
import { POLLIN, poll } from '../sys/fd.js';
import { DowntimePriority } from '../sys/sched.js';

// A spare worker (spare-worker.ts) is started before its guest exists and gets its init as its
// first message; any other is given it as workerData.
const initArriving = workerInit<WorkerInit>();
// A spare booted ahead with time to spare rehearses the restore path while its init is on the way
// (spare-worker.ts); the rehearsal needs nothing of the guest, and its hooks are never called.
const IDLE_HOOKS: WasiHooks = { pauseRequested: () => false, unwind: () => undefined };
const rehearsedEarly = initArriving instanceof Promise && spareHint(REHEARSE_HINT) && rehearseQuietly(IDLE_HOOKS);
// Set by main() below once the init is here. Not a top-level await: the thread's script is
// bundled as CommonJS (scripts/bundle.mjs), which a new thread loads sooner than an ES module.
let init!: WorkerInit;
let ctl!: Int32Array;

const post = (m: WorkerMessage) => parentPort!.postMessage(m);

/** The owner may wait on this word synchronously (Atomics.wait): notify on every change. */
function setState(s: WorkerState): void {
  Atomics.store(ctl, Ctl.State, s);
  Atomics.notify(ctl, Ctl.State);
}

const enum AsyncifyState {
  Normal = 0,
  Unwinding = 1,
  Rewinding = 2,
}

interface GuestExports {
  _start(): void;
  asyncify_start_unwind(ptr: number): void;
  asyncify_stop_unwind(): void;
  asyncify_start_rewind(ptr: number): void;
  asyncify_stop_rewind(): void;
  asyncify_get_state(): number;
  [name: string]: unknown;
}

let exports!: GuestExports;
let launch!: LaunchMessage;
let unwind!: UnwindBuffer;

function startUnwind(): void {
  const r = unwind.begin();
  markUnwinding(true);
  exports.asyncify_start_unwind(r.ptr);
}

/**
 * Split functions (loop-resume.ts) that are running but not waiting in a resumable call: Asyncify
 * cannot unwind them, so nothing may unwind while there is one (its next loop head suspends it).
 */
function pinned(): number {
  const running = exports.ferry_pinned as WebAssembly.Global | undefined;
  const atCall = exports.ferry_atcall as WebAssembly.Global | undefined; // waiting in resumable calls
  return running ? (running.value as number) - ((atCall?.value as number | undefined) ?? 0) : 0;
}

/** Tells split functions waiting in a resumable call that the callee returned because it unwound. */
function markUnwinding(on: boolean): void {
  const g = exports.ferry_unwinding as WebAssembly.Global | undefined;
  if (g) g.value = on ? 1 : 0;
}

/**
 * An unwind stopped midway (`holdUnwind`): a split function's callee unwound, the split function
 * saved itself and returns to its wrapper, whose safepoint continues the unwind on the same buffer.
 */
let unwindHeld = false;
function holdUnwind(): void {
  exports.asyncify_stop_unwind();
  unwindHeld = true;
}

/** A resumed split function restarts the rewind before it re-enters the call it was waiting in. */
function rewindAgain(): void {
  const r = unwind.again();
  Atomics.store(safepointFlags(init.memory), 1, 1);
  exports.asyncify_start_rewind(r.ptr);
}

const hooks: WasiHooks = {
  pauseRequested: () => Atomics.load(ctl, Ctl.PauseRequested) !== 0 && pinned() === 0,
  unwind: startUnwind,
  // Blocking reads wait beside the wake fd, which the owner signals with every pause request.
  waitReadable: (fd: number, timeoutMs: number) => poll([fd, init.wakeFd], [POLLIN, POLLIN], timeoutMs)[0] !== 0,
  get wakeFd() {
    return init.wakeFd;
  },
  // A sleeping guest wakes the moment its owner asks for a pause (Guest notifies this word).
  sleep: (ms: number) => void Atomics.wait(ctl, Ctl.PauseRequested, 0, ms),
};

let wasi!: Wasi;

function stopRewind(): void {
  exports.asyncify_stop_rewind();
  Atomics.store(safepointFlags(init.memory), 1, 0);
  unwind.rewound();
}

// Called by a safepoint only when its flags say a pause or a rewind is pending.
function onSafepoint(_site: number): void {
  const state = exports.asyncify_get_state();
  if (state === AsyncifyState.Rewinding) {
    stopRewind();
    return;
  }
  if (unwindHeld && state === AsyncifyState.Normal) {
    unwindHeld = false;
    exports.asyncify_start_unwind(unwind.region!.ptr); // continues: the frames already saved stay
    return;
  }
  if (state === AsyncifyState.Normal && Atomics.load(ctl, Ctl.PauseRequested) !== 0 && pinned() === 0) startUnwind();
}

// Blocking WASI calls are unwind points too: on rewind the same call runs again from the start.
function reentrant(fn: (...a: never[]) => unknown): (...a: never[]) => unknown {
  return (...args) => {
    if (exports.asyncify_get_state() === AsyncifyState.Rewinding) stopRewind();
    return fn(...args);
  };
}

// The instance's imports call through `calls`, which launch() fills from the guest's Wasi: the
// module is instantiated when the worker starts, before the WASI state is known — for a migration
// destination that is long before the switchover, whose downtime it would otherwise lengthen.
const calls: Record<string, (...a: never[]) => unknown> = {};

function instantiate(): void {
  const imports: Record<string, Record<string, unknown>> = { ferry: { memory: init.memory, rewind: rewindAgain, hold: holdUnwind } };
  for (const imp of init.meta.functionImports) {
    imports[imp.module] ??= {};
    imports[imp.module]![imp.name] = (...args: never[]) => calls[imp.name]!(...args);
  }
  imports[init.meta.safepointImport.module] ??= {};
  imports[init.meta.safepointImport.module]![init.meta.safepointImport.name] = onSafepoint;
  const instance = new WebAssembly.Instance(init.module, imports as WebAssembly.Imports);
  exports = instance.exports as unknown as GuestExports;
}

function bindWasi(): void {
  const wasiImports: Record<string, unknown> = { ...wasi.imports };
  for (const u of init.meta.unwindImports) {
    if (u.module === init.meta.safepointImport.module && u.name === init.meta.safepointImport.name) continue;
    const f = wasiImports[u.name];
    if (typeof f === 'function') wasiImports[u.name] = reentrant(f as (...a: never[]) => unknown);
  }
  for (const imp of init.meta.functionImports) {
    const f = wasiImports[imp.name];
    if (typeof f !== 'function') throw new Error(`module imports ${imp.module}.${imp.name}, which Ferry does not provide`);
    calls[imp.name] = f as (...a: never[]) => unknown;
  }
}

/**
 * The first WASI restore in a thread runs cold code (state validation, descriptor and preopen
 * setup): about 2 ms on these machines, inside a switchover's downtime. A worker prepared for a
 * restore runs that path on a throwaway state while it waits, so the real one runs warm. Once was
 * not enough: the code still ran in V8's interpreter, and the destination's restore took 1.0-1.3 ms
 * (of which validation 0.2-0.4, the Wasi's construction 0.4-0.5); after 30 runs 0.6-0.8 ms (demo
 * job, 3 alternating pairs, marks in the worker, 2026-12-08). Measured apart, the first run took
 * 4.3-6.3 ms and the next 29 together 10.5-14.7 ms.
 */
const REHEARSALS = 30;

function rehearseRestore(withHooks: WasiHooks): void {
  for (let i = 0; i < REHEARSALS; i++) rehearseRestoreOnce(withHooks);
}

function rehearseRestoreOnce(withHooks: WasiHooks): void {
  const stdio = { stdin: 0, stdout: 1, stderr: 2 };
  const preopens = [{ guestPath: '/rehearsal', hostPath: tmpdir() }];
  const probe = new Wasi({ args: ['rehearsal'], env: {}, preopens, stdio }, withHooks);
  let state: ReturnType<Wasi['capture']>;
  try {
    state = probe.capture();
  } finally {
    probe.close();
  }
  Wasi.restore(state, { preopens, stdio }, withHooks).close();
}

/**
 * The early rehearsal of a spare: a failure there only means the guest rehearses later, as without
 * the hint. A fresh start that adopts a spare still rehearsing waits for the rest of it (the 30
 * runs take 15-21 ms in a thread here, 2026-12-08): spares with the hint are booted with time to
 * spare (keepGuestThreadReady), not on a start's critical path.
 */
function rehearseQuietly(withHooks: WasiHooks): boolean {
  try {
    rehearseRestore(withHooks);
    return true;
  } catch {
    return false;
  }
}

function writeDataSegments(image: Uint8Array): void {
  const mem = new Uint8Array(init.memory.buffer);
  let at = 0;
  for (const s of init.meta.dataSegments) {
    mem.set(image.subarray(at, at + s.length), s.offset);
    at += s.length;
  }
}

function restoreGlobals(exec: ExecState): void {
  if (exec.globals.length !== init.meta.globals.length) {
    throw new Error(`state has ${exec.globals.length} globals, module has ${init.meta.globals.length}`);
  }
  init.meta.globals.forEach((g, i) => {
    const v = exec.globals[i]!;
    if (v.type !== g.type) throw new Error(`global ${i}: state has ${v.type}, module has ${g.type}`);
    (exports[g.exportName] as WebAssembly.Global).value = decodeGlobal(v);
  });
}

function capture(): PausedCapture {
  return {
    exec: {
      globals: init.meta.globals.map((g) => encodeGlobal(g.type, (exports[g.exportName] as WebAssembly.Global).value)),
      unwind: unwind.region,
      displaced: unwind.displacedBase64(),
    },
    wasi: wasi.capture(),
    movabilityProblems: wasi.movabilityProblems(),
    problemsIfSocketsMove: wasi.movabilityProblems(true),
    hostSockets: wasi.hostSockets(),
    memoryBytes: init.memory.buffer.byteLength,
  };
}

/** Tells the owner whether a running guest holds sockets (see Ctl.HoldsSockets). */
function noteSockets(): void {
  Atomics.store(ctl, Ctl.HoldsSockets, wasi.holdsSockets() ? 1 : 0);
}

/**
 * The guest has ended: release its descriptors. Stopped, its TCP connections are aborted (their
 * peers see a reset: the guest never closed them); exited, they are closed as a process exit would.
 */
function release(stopped: boolean): void {
  try {
    wasi.close(stopped);
  } catch {
    // best effort: the thread is ending anyway
  }
  Atomics.store(ctl, Ctl.HoldsSockets, 0);
}

/** Waits for a command while paused; returns true to resume, false to stop. */
function waitForCommand(): boolean {
  for (;;) {
    const cmd = Atomics.exchange(ctl, Ctl.Command, Cmd.None);
    if (cmd === Cmd.Resume) {
      const m = receiveMessageOnPort(init.launchPort);
      if (m) wasi.adoptAccepted((m.message as ResumeMessage).accepted);
      return true;
    }
    if (cmd === Cmd.Stop) return false;
    Atomics.wait(ctl, Ctl.Command, Cmd.None);
  }
}

function firstWasmFunction(err: Error): string | null {
  for (const line of (err.stack ?? '').split('\n')) {
    const m = /at (\S+) \(wasm:\/\//.exec(line) ?? /at (\S+) \(<anonymous>:wasm-function/.exec(line);
    if (m) return m[1]!;
  }
  return null;
}

/** Set when Go arrived before the worker took the launch (the owner's commit came first). */
let goEarly = false;

/** A staged restore waits here for Go (true) or Stop (false). Guest memory is not touched before. */
function waitForGo(): boolean {
  if (goEarly) return true;
  for (;;) {
    const cmd = Atomics.load(ctl, Ctl.Command);
    if (cmd === Cmd.Stop) return false;
    if (cmd === Cmd.Go && Atomics.compareExchange(ctl, Ctl.Command, Cmd.Go, Cmd.None) === Cmd.Go) return true;
    if (cmd !== Cmd.Go) Atomics.wait(ctl, Ctl.Command, cmd);
  }
}

/** Blocks until the owner sends the LaunchMessage (or stops the worker first). */
function waitForLaunch(): LaunchMessage | null {
  for (;;) {
    const cmd = Atomics.load(ctl, Ctl.Command);
    if (cmd === Cmd.Stop) return null;
    // Go only ever follows a launch: if it has already replaced Launch in the word, the launch
    // message is on the port and the guest may run at once. The exchange (not a plain store)
    // makes sure a Go written meanwhile is not wiped out.
    if (cmd === Cmd.Launch || cmd === Cmd.Go) {
      if (Atomics.compareExchange(ctl, Ctl.Command, cmd, Cmd.None) !== cmd) continue;
      goEarly = cmd === Cmd.Go;
      const m = receiveMessageOnPort(init.launchPort);
      if (!m) throw new Error('launch requested without a launch message');
      return m.message as LaunchMessage;
    }
    Atomics.wait(ctl, Ctl.Command, cmd);
  }
}

function run(): void {
  instantiate();
  if (init.restore?.rehearse && !rehearsedEarly) rehearseRestore(hooks);
  post({ type: 'ready' });
  // A guest thread prepared for a restore (a migration's destination, a snapshot's restore) takes
  // its launch inside the downtime, and everything it does until guest code runs (the WASI state
  // rebuilt, the globals set, the wait for Go) is downtime: at normal priority, on a host whose
  // cores are busy with the bulk stream, each wake-up waited for a time slice and that work ran
  // in pieces (staged → running 1.2-2 ms in the demo). So it waits and works ahead of normal
  // threads, as the owner's thread does through the downtime, and drops back before guest code.
  const ahead = init.restore ? new DowntimePriority() : null;
  ahead?.raise();
  const l = waitForLaunch();
  if (!l) {
    setState(WorkerState.Done);
    return;
  }
  launch = l;
  if (launch.restore) {
    unwind.restore(launch.restore.exec.unwind, launch.restore.exec.displaced);
    wasi = Wasi.restore(launch.restore.wasi, { preopens: launch.restore.preopens, stdio: launch.restore.stdio, sockets: launch.restore.sockets ?? {} }, hooks);
  } else {
    wasi = new Wasi(launch.fresh!.wasi, hooks);
  }
  wasi.setMemory(init.memory);
  bindWasi();
  noteSockets();
  let rewind = false;
  if (launch.restore) {
    restoreGlobals(launch.restore.exec);
    if (launch.waitForGo && !waitForGo()) {
      release(true);
      setState(WorkerState.Done);
      return;
    }
    // The memory was captured with the pause flag set: it now says what this host's owner wants.
    Atomics.store(safepointFlags(init.memory), 0, Atomics.load(ctl, Ctl.PauseRequested));
    rewind = launch.restore.exec.unwind !== null;
  } else {
    writeDataSegments(launch.fresh!.dataImage);
  }
  setState(WorkerState.Running);
  // After the state says Running (the owner's downtime ends there): dropping back may hand the
  // core to a normal thread at once (0.06-0.2 ms here), which must not come first.
  ahead?.end();
  post({ type: 'started' });
  for (;;) {
    if (rewind) {
      Atomics.store(safepointFlags(init.memory), 1, 1); // the safepoints must call back to stop the rewind
      exports.asyncify_start_rewind(unwind.region!.ptr);
    }
    try {
      exports._start();
    } catch (err: unknown) {
      release(!(err instanceof WasiExit));
      setState(WorkerState.Done);
      if (err instanceof WasiExit) return post({ type: 'exit', code: err.code });
      const e = err as Error;
      if (e instanceof WebAssembly.RuntimeError || e instanceof RangeError) {
        return post({ type: 'trap', message: e.message, func: firstWasmFunction(e) });
      }
      return post({ type: 'error', message: e.stack ?? String(e) });
    }
    if (exports.asyncify_get_state() !== AsyncifyState.Unwinding) {
      release(false);
      setState(WorkerState.Done);
      return post({ type: 'exit', code: 0 });
    }
    exports.asyncify_stop_unwind();
    markUnwinding(false);
    unwind.unwound();
    noteSockets();
    // The capture goes first on its own port, so an owner waiting synchronously on the state
    // word finds it there with receiveMessageOnPort the moment the state says Paused.
    init.capturePort.postMessage(capture());
    setState(WorkerState.Paused);
    post({ type: 'paused' });
    if (!waitForCommand()) {
      release(true);
      setState(WorkerState.Done);
      return; // stopped: no more guest code, no atexit handlers, no stdio flush
    }
    setState(WorkerState.Running);
    rewind = true;
  }
}

function main(arrived: WorkerInit): void {
  init = arrived;
  ctl = controlWords(init.control);
  unwind = new UnwindBuffer(init.memory, init.unwindBytes);
  try {
    run();
  } catch (err: unknown) {
    setState(WorkerState.Done);
    post({ type: 'error', message: (err as Error).message });
  }
}

if (initArriving instanceof Promise) void initArriving.then(main);
else main(initArriving);
