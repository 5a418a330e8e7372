// WASI preview1 for Ferry guests, with state that can be captured and restored on another host.
// Runs on the guest's thread, synchronously: host functions are Wasm imports. Guest memory is only ever
// touched through fresh views handed straight to syscalls, so a userfaultfd hole is faulted in by the
// kernel on the guest's thread (never copied through JavaScript first).
// The host functions are grouped by what they touch: fd-functions.ts, path-functions.ts, poll.ts,
// all working on one WasiContext (context.ts); the rest (arguments, environment, clocks, exit,
// randomness) are here with the capture and restore of the whole.
import * as fs from 'node:fs';
import { randomFillSync } from 'node:crypto';
import { FILETYPE, RIGHTS_ALL } from './constants.js';
import { ERRNO, errnoOf } from './errno.js';
import { filetypeOf, isStream, type Descriptor } from './fd-table.js';
import { encodeUtf8, GuestMemoryViews } from './memory-views.js';
import { makePreopenRoot, resolveHostPath, type PreopenRoot } from './paths.js';
import { validateWasiState } from './persist.js';
import { WASI_STATE_VERSION, type FdState, type WasiState } from './state.js';
import { DEFAULT_STDIO, WasiExit, validateOptions, type HostFunction, type Preopen, type StdioBinding, type WasiHooks, type WasiOptions } from './options.js';
import { openHostFd, stdioDescriptor } from './host-fds.js';
import { WasiContext } from './context.js';
import { fdFunctions } from './fd-functions.js';
import { pathFunctions } from './path-functions.js';
import { pollOneoff } from './poll.js';

export type { WasiState, FdState, FdKind } from './state.js';

export { WasiExit } from './options.js';
export type { Preopen, StdioBinding, WasiOptions, WasiHooks } from './options.js';

export class Wasi {
  readonly imports: Record<string, HostFunction>;
  /** What the host functions work on. */
  private readonly c: WasiContext;
  private args: string[];
  private env: Record<string, string>;
  private stdio: StdioBinding;
  /** Preopens by guest path; the order is the one the guest saw. */
  private roots = new Map<string, PreopenRoot>();
  private preopenOrder: string[] = [];
  private exitCode: number | null = null;

  constructor(options: WasiOptions, hooks: WasiHooks) {
    validateOptions(options);
    if (typeof hooks?.pauseRequested !== 'function' || typeof hooks.unwind !== 'function') throw new Error('WASI hooks need pauseRequested() and unwind()');
    this.c = new WasiContext(hooks);
    this.args = [...options.args];
    this.env = { ...options.env };
    this.stdio = { ...(options.stdio ?? DEFAULT_STDIO) };
    this.c.table.set(0, stdioDescriptor('stdin', this.stdio.stdin));
    this.c.table.set(1, stdioDescriptor('stdout', this.stdio.stdout));
    this.c.table.set(2, stdioDescriptor('stderr', this.stdio.stderr));
    try {
      for (const p of options.preopens) {
        const root = makePreopenRoot(p.guestPath, p.hostPath);
        this.roots.set(p.guestPath, root);
        this.preopenOrder.push(p.guestPath);
        const hostFd = openHostFd(root.hostPath, { read: true, write: false, directory: true, creat: false, excl: false, trunc: false, follow: true, fdflags: 0 });
        this.c.table.add({
          kind: 'preopen', hostFd, ownsHostFd: true, root, path: '.', offset: 0, fdflags: 0, oflags: 0,
          rightsBase: RIGHTS_ALL, rightsInheriting: RIGHTS_ALL, filetype: FILETYPE.DIRECTORY,
          read: true, write: false, detached: false, stream: false,
        });
      }
    } catch (err) {
      this.c.table.closeAll();
      throw err;
    }
    this.imports = this.buildImports();
  }

  /**
   * Rebuilds a Wasi from captured state on this host: files are reopened at their paths under the
   * preopens of `binding` (matched by guest path) and continue at their offsets, without O_CREAT, O_TRUNC
   * or O_EXCL; stdio descriptors are rebound to `binding.stdio`; clocks continue from the captured values.
   */
  static restore(state: WasiState, binding: { preopens: Preopen[]; stdio: StdioBinding }, hooks: WasiHooks): Wasi {
    const s = validateWasiState(state);
    const w = new Wasi({ args: s.args, env: s.env, preopens: [], stdio: binding.stdio }, hooks);
    w.c.table.closeAll();
    try {
      const needed = new Set(s.fds.flatMap((f) => (f.preopen === null ? [] : [f.preopen])));
      for (const guestPath of s.preopens) {
        const p = binding.preopens.find((b) => b.guestPath === guestPath);
        if (p === undefined) {
          if (needed.has(guestPath)) throw new Error(`cannot restore WASI state: it needs preopen ${guestPath}, which this host's binding does not provide`);
          continue; // the guest closed it; nothing refers to it any more
        }
        w.roots.set(guestPath, makePreopenRoot(guestPath, p.hostPath));
      }
      w.preopenOrder = [...s.preopens];
      for (const f of s.fds) w.c.table.set(f.fd, w.reopen(f));
    } catch (err) {
      w.c.table.closeAll();
      throw err;
    }
    w.c.clocks.continueFrom(BigInt(s.clocks.monotonicNs), BigInt(s.clocks.cputimeNs));
    w.exitCode = s.exitCode;
    w.c.pendingPoll = s.pendingPoll === null ? null : { subscriptions: s.pendingPoll.subscriptions, deadlineNs: BigInt(s.pendingPoll.deadlineNs) };
    return w;
  }

  private reopen(f: FdState): Descriptor {
    if (f.kind === 'stdin' || f.kind === 'stdout' || f.kind === 'stderr') {
      const d = stdioDescriptor(f.kind, this.stdio[f.kind]);
      return { ...d, fdflags: f.fdflags, rightsBase: BigInt(f.rightsBase) & d.rightsBase, rightsInheriting: BigInt(f.rightsInheriting) };
    }
    if (f.detached) throw new Error(`cannot restore WASI fd ${f.fd}: ${f.preopen}/${f.path} was removed while open`);
    const root = this.roots.get(f.preopen!);
    if (root === undefined) throw new Error(`cannot restore WASI fd ${f.fd}: preopen ${f.preopen} is not bound`);
    const directory = f.kind !== 'file';
    let hostFd: number;
    try {
      const host = resolveHostPath(root, f.path, true);
      hostFd = openHostFd(host, { read: f.read, write: f.write, directory, creat: false, excl: false, trunc: false, follow: true, fdflags: f.fdflags });
    } catch (err) {
      throw new Error(`cannot restore WASI fd ${f.fd}: reopening ${f.preopen}/${f.path} under ${root.hostPath} failed: ${(err as Error).message}`);
    }
    const st = fs.fstatSync(hostFd);
    return {
      kind: f.kind, hostFd, ownsHostFd: true, root, path: f.path, offset: f.offset, fdflags: f.fdflags, oflags: f.oflags,
      rightsBase: BigInt(f.rightsBase), rightsInheriting: BigInt(f.rightsInheriting), filetype: filetypeOf(st),
      read: f.read, write: f.write, detached: false, stream: isStream(st),
    };
  }

  setMemory(memory: WebAssembly.Memory): void {
    if (!(memory instanceof WebAssembly.Memory)) throw new Error('setMemory needs a WebAssembly.Memory');
    this.c.mem = new GuestMemoryViews(memory);
  }

  capture(): WasiState {
    return {
      version: WASI_STATE_VERSION,
      args: [...this.args],
      env: { ...this.env },
      preopens: [...this.preopenOrder],
      fds: this.c.table.list().map(([fd, d]): FdState => ({
        fd, kind: d.kind, preopen: d.root?.guestPath ?? null, path: d.path, offset: d.offset, fdflags: d.fdflags,
        oflags: d.oflags, rightsBase: d.rightsBase.toString(), rightsInheriting: d.rightsInheriting.toString(),
        filetype: d.filetype, read: d.read, write: d.write, detached: d.detached,
      })),
      clocks: { monotonicNs: this.c.clocks.monotonicNs().toString(), cputimeNs: this.c.clocks.cputimeNs().toString() },
      exitCode: this.exitCode,
      pendingPoll: this.c.pendingPoll === null ? null : { subscriptions: this.c.pendingPoll.subscriptions, deadlineNs: this.c.pendingPoll.deadlineNs.toString() },
    };
  }

  movabilityProblems(): string[] {
    const problems: string[] = [];
    for (const [fd, d] of this.c.table.list()) {
      if (d.kind === 'stdin' || d.kind === 'stdout' || d.kind === 'stderr') continue;
      const where = `${d.root?.guestPath}/${d.path}`;
      if (d.detached) problems.push(`fd ${fd} (${where}) was unlinked or replaced while open; it cannot be reopened elsewhere`);
      else if (d.kind === 'file' && d.filetype !== FILETYPE.REGULAR_FILE) {
        const what = d.filetype === FILETYPE.SOCKET_STREAM ? 'a socket' : d.filetype === FILETYPE.CHARACTER_DEVICE ? 'a character device'
          : d.filetype === FILETYPE.BLOCK_DEVICE ? 'a block device' : 'a pipe or FIFO';
        problems.push(`fd ${fd} (${where}) is ${what}`);
      }
    }
    return problems;
  }

  close(): void {
    this.c.table.closeAll();
  }

  /** The exit status the guest passed to proc_exit, if it did. */
  get exitStatus(): number | null {
    return this.exitCode;
  }

  // ---- the preview1 functions ----

  private buildImports(): Record<string, HostFunction> {
    const c = this.c;
    const fns: Record<string, HostFunction> = {
      args_get: (argv: number, buf: number) => this.putStrings(this.args, argv, buf),
      args_sizes_get: (countPtr: number, sizePtr: number) => this.putSizes(this.args, countPtr, sizePtr),
      environ_get: (environ: number, buf: number) => this.putStrings(this.envStrings(), environ, buf),
      environ_sizes_get: (countPtr: number, sizePtr: number) => this.putSizes(this.envStrings(), countPtr, sizePtr),

      clock_res_get: (id: number, out: number) => { c.m().setU64(out, c.clocks.resolution(id)); return 0; },
      clock_time_get: (id: number, _precision: bigint, out: number) => { c.m().setU64(out, c.clocks.now(id)); return 0; },

      ...fdFunctions(c),
      ...pathFunctions(c),

      poll_oneoff: (inPtr: number, outPtr: number, nsubs: number, neventsPtr: number) => pollOneoff(c, inPtr, outPtr, nsubs, neventsPtr),
      proc_exit: (code: number): void => {
        this.exitCode = code >>> 0;
        throw new WasiExit(code >>> 0);
      },
      proc_raise: () => ERRNO.NOSYS,
      random_get: (ptr: number, len: number) => { randomFillSync(c.m().bytes(ptr, len)); return 0; },
      sched_yield: () => 0,

      // No sockets: preview1 can only get them from the embedder, and Ferry gives none (they cannot move).
      sock_accept: (fd: number) => { c.table.get(fd); return ERRNO.NOTSUP; },
      sock_recv: (fd: number) => { c.table.get(fd); return ERRNO.NOTSUP; },
      sock_send: (fd: number) => { c.table.get(fd); return ERRNO.NOTSUP; },
      sock_shutdown: (fd: number) => { c.table.get(fd); return ERRNO.NOTSUP; },
    };
    const wrapped: Record<string, HostFunction> = {};
    for (const [name, fn] of Object.entries(fns)) {
      // Fixed parameters (preview1 functions take at most 9) avoid a rest array on every host call;
      // Wasm passes exactly the declared arguments, extra ones are undefined and unused.
      wrapped[name] = (a0?: unknown, a1?: unknown, a2?: unknown, a3?: unknown, a4?: unknown, a5?: unknown, a6?: unknown, a7?: unknown, a8?: unknown) => {
        try {
          return fn(a0, a1, a2, a3, a4, a5, a6, a7, a8);
        } catch (err) {
          if (err instanceof WasiExit) throw err;
          const errno = errnoOf(err);
          if (errno === undefined) throw err;
          return errno;
        }
      };
    }
    return wrapped;
  }

  private envStrings(): string[] {
    return Object.entries(this.env).map(([k, v]) => `${k}=${v}`);
  }

  private putSizes(strings: string[], countPtr: number, sizePtr: number): number {
    const m = this.c.m();
    m.setU32(countPtr, strings.length);
    m.setU32(sizePtr, strings.reduce((n, s) => n + encodeUtf8(s).length + 1, 0));
    return 0;
  }

  private putStrings(strings: string[], ptrs: number, buf: number): number {
    const m = this.c.m();
    let at = buf;
    strings.forEach((s, i) => {
      const bytes = encodeUtf8(s);
      m.setU32(ptrs + i * 4, at);
      m.write(at, bytes);
      m.setU8(at + bytes.length, 0);
      at += bytes.length + 1;
    });
    return 0;
  }
}
