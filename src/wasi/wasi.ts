// WASI preview1 for Ferry guests, with state that can be captured and restored on another host.
// Runs on the guest's thread, synchronously: host functions are Wasm imports. Guest memory is only ever
// touched through fresh views handed straight to syscalls, so a userfaultfd hole is faulted in by the
// kernel on the guest's thread (never copied through JavaScript first).
// This file builds, restores and captures a Wasi; the functions themselves are in fd-ops, path-ops,
// socket-ops, poll and process-ops, over the shared WasiContext.
import * as fs from 'node:fs';
import { FILETYPE, RIGHTS_ALL } from './constants.js';
import { errnoOf } from './errno.js';
import { filetypeOf, isStream, type Descriptor } from './fd-table.js';
import { GuestMemoryViews } from './memory-views.js';
import { makePreopenRoot, resolveHostPath } from './paths.js';
import { validateWasiState } from './persist.js';
import { WASI_STATE_VERSION, type FdState, type WasiState } from './state.js';
import { DEFAULT_STDIO, validateOptions, WasiExit, type AdoptedSocket, type AdoptedSockets, type Preopen, type StdioBinding, type WasiHooks, type WasiOptions } from './options.js';
import { formatSocketAddress, openHostFd, RIGHTS_SOCKET, socketDescriptor, stdioDescriptor } from './descriptors.js';
import { WasiContext, type HostFunction } from './context.js';
import { fdFunctions } from './fd-ops.js';
import { pathFunctions } from './path-ops.js';
import { socketFunctions } from './socket-ops.js';
import { pollOneoff } from './poll.js';
import { processFunctions } from './process-ops.js';
import { tcpListen } from '../sys/socket.js';
import { close as closeFd } from '../sys/fd.js';

function closeHostSocket(fd: number): void {
  try {
    closeFd(fd);
  } catch {
    // already closed
  }
}

export type { WasiState, FdState, FdKind, SocketState } from './state.js';
export type { AdoptedSocket, AdoptedSockets, ListenSocket, Preopen, StdioBinding, WasiHooks, WasiOptions } from './options.js';
export { WasiExit } from './options.js';
export { formatSocketAddress } from './descriptors.js';

export class Wasi {
  readonly imports: Record<string, HostFunction>;
  private readonly ctx: WasiContext;

  constructor(options: WasiOptions, hooks: WasiHooks) {
    validateOptions(options);
    if (typeof hooks?.pauseRequested !== 'function' || typeof hooks.unwind !== 'function') throw new Error('WASI hooks need pauseRequested() and unwind()');
    this.ctx = new WasiContext([...options.args], { ...options.env }, { ...(options.stdio ?? DEFAULT_STDIO) }, hooks);
    this.ctx.table.set(0, stdioDescriptor('stdin', this.ctx.stdio.stdin));
    this.ctx.table.set(1, stdioDescriptor('stdout', this.ctx.stdio.stdout));
    this.ctx.table.set(2, stdioDescriptor('stderr', this.ctx.stdio.stderr));
    try {
      for (const p of options.preopens) {
        const root = makePreopenRoot(p.guestPath, p.hostPath);
        this.ctx.roots.set(p.guestPath, root);
        this.ctx.preopenOrder.push(p.guestPath);
        const hostFd = openHostFd(root.hostPath, { read: true, write: false, directory: true, creat: false, excl: false, trunc: false, follow: true, fdflags: 0 });
        this.ctx.table.add({
          kind: 'preopen', hostFd, ownsHostFd: true, root, path: '.', offset: 0, fdflags: 0, oflags: 0,
          rightsBase: RIGHTS_ALL, rightsInheriting: RIGHTS_ALL, filetype: FILETYPE.DIRECTORY,
          read: true, write: false, detached: false, stream: false,
        });
      }
      for (const l of options.listen ?? []) {
        this.ctx.table.add(socketDescriptor('listener', l.hostFd, { family: l.family, address: l.address, port: l.port, peer: null }, 0));
      }
    } catch (err) {
      this.ctx.table.closeAll();
      throw err;
    }
    this.imports = this.buildImports();
  }

  /**
   * Rebuilds a Wasi from captured state on this host: files are reopened at their paths under the
   * preopens of `binding` (matched by guest path) and continue at their offsets, without O_CREAT, O_TRUNC
   * or O_EXCL; stdio descriptors are rebound to `binding.stdio`; clocks continue from the captured values.
   * Sockets in `binding.sockets` (a live migration moved them) are adopted as they are; other listeners
   * listen again, other connections come back reset.
   */
  static restore(state: WasiState, binding: { preopens: Preopen[]; stdio: StdioBinding; sockets?: AdoptedSockets }, hooks: WasiHooks): Wasi {
    const adopted = new Map(Object.entries(binding.sockets ?? {}).map(([fd, a]) => [Number(fd), a]));
    const s = validateWasiState(state);
    const w = new Wasi({ args: s.args, env: s.env, preopens: [], stdio: binding.stdio }, hooks);
    w.ctx.table.closeAll();
    try {
      const needed = new Set(s.fds.flatMap((f) => (f.preopen === null ? [] : [f.preopen])));
      for (const guestPath of s.preopens) {
        const p = binding.preopens.find((b) => b.guestPath === guestPath);
        if (p === undefined) {
          if (needed.has(guestPath)) throw new Error(`cannot restore WASI state: it needs preopen ${guestPath}, which this host's binding does not provide`);
          continue; // the guest closed it; nothing refers to it any more
        }
        w.ctx.roots.set(guestPath, makePreopenRoot(guestPath, p.hostPath));
      }
      w.ctx.preopenOrder = [...s.preopens];
      for (const f of s.fds) {
        w.ctx.table.set(f.fd, w.reopen(f, adopted.get(f.fd)));
        adopted.delete(f.fd);
      }
      if (adopted.size > 0) throw new Error(`cannot restore WASI state: sockets were moved for guest fds ${[...adopted.keys()].join(', ')}, which the state does not hold as sockets`);
    } catch (err) {
      w.ctx.table.closeAll();
      for (const a of adopted.values()) for (const fd of [a.hostFd, ...a.accepted]) closeHostSocket(fd); // not adopted yet: still ours to close
      throw err;
    }
    w.ctx.clocks.continueFrom(BigInt(s.clocks.monotonicNs), BigInt(s.clocks.cputimeNs));
    w.ctx.exitCode = s.exitCode;
    w.ctx.pendingPoll = s.pendingPoll === null ? null : { subscriptions: s.pendingPoll.subscriptions, deadlineNs: BigInt(s.pendingPoll.deadlineNs) };
    return w;
  }

  private reopen(f: FdState, moved: AdoptedSocket | undefined): Descriptor {
    if (moved !== undefined && f.kind !== 'listener' && f.kind !== 'socket') throw new Error(`cannot restore WASI fd ${f.fd}: a socket was moved for it, but it is a ${f.kind}`);
    if (f.kind === 'listener' || f.kind === 'socket') {
      const s = f.socket!;
      let hostFd = moved?.hostFd ?? -1;
      if (f.kind === 'listener' && moved === undefined) {
        try {
          hostFd = tcpListen(s.family, s.address, s.port);
        } catch (err) {
          throw new Error(`cannot restore WASI fd ${f.fd}: listening again on ${formatSocketAddress(s.family, s.address, s.port)} failed: ${(err as Error).message}`);
        }
      }
      // A connection cannot be re-created from a snapshot: it comes back reset (ECONNRESET on first use).
      const d = socketDescriptor(f.kind, hostFd, s, f.fdflags);
      if (moved !== undefined && moved.accepted.length > 0) d.pendingAccepts = [...moved.accepted];
      return { ...d, rightsBase: BigInt(f.rightsBase) & d.rightsBase, rightsInheriting: BigInt(f.rightsInheriting) & RIGHTS_SOCKET };
    }
    if (f.kind === 'stdin' || f.kind === 'stdout' || f.kind === 'stderr') {
      const d = stdioDescriptor(f.kind, this.ctx.stdio[f.kind]);
      return { ...d, fdflags: f.fdflags, rightsBase: BigInt(f.rightsBase) & d.rightsBase, rightsInheriting: BigInt(f.rightsInheriting) };
    }
    if (f.detached) throw new Error(`cannot restore WASI fd ${f.fd}: ${f.preopen}/${f.path} was removed while open`);
    const root = this.ctx.roots.get(f.preopen!);
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
    this.ctx.mem = new GuestMemoryViews(memory);
  }

  capture(): WasiState {
    return {
      version: WASI_STATE_VERSION,
      args: [...this.ctx.args],
      env: { ...this.ctx.env },
      preopens: [...this.ctx.preopenOrder],
      fds: this.ctx.table.list().map(([fd, d]): FdState => ({
        fd, kind: d.kind, preopen: d.root?.guestPath ?? null, path: d.path, offset: d.offset, fdflags: d.fdflags,
        oflags: d.oflags, rightsBase: d.rightsBase.toString(), rightsInheriting: d.rightsInheriting.toString(),
        filetype: d.filetype, read: d.read, write: d.write, detached: d.detached,
        ...(d.socket === undefined ? {} : {
          socket: { family: d.socket.family, address: d.socket.address, port: d.socket.port, peer: d.socket.peer === null ? null : { ...d.socket.peer } },
        }),
      })),
      clocks: { monotonicNs: this.ctx.clocks.monotonicNs().toString(), cputimeNs: this.ctx.clocks.cputimeNs().toString() },
      exitCode: this.ctx.exitCode,
      pendingPoll: this.ctx.pendingPoll === null ? null : { subscriptions: this.ctx.pendingPoll.subscriptions, deadlineNs: this.ctx.pendingPoll.deadlineNs.toString() },
    };
  }

  /** `socketsMove`: a live migration that moves sockets (Feature.SOCKETS): they are no problem then. */
  movabilityProblems(socketsMove = false): string[] {
    const problems: string[] = [];
    for (const [fd, d] of this.ctx.table.list()) {
      if (d.kind === 'stdin' || d.kind === 'stdout' || d.kind === 'stderr') continue;
      if (d.socket !== undefined && socketsMove) continue;
      if (d.socket !== undefined) {
        const s = d.socket;
        const local = formatSocketAddress(s.family, s.address, s.port);
        if (d.kind === 'listener') {
          problems.push(`fd ${fd} listens on ${local}: live migration does not move listening sockets to a destination without the SOCKETS feature (a snapshot and restore re-creates them)`);
        } else if (s.reset === 'no' && s.peer !== null) {
          problems.push(`fd ${fd} is a TCP connection ${local} <-> ${formatSocketAddress(s.family, s.peer.address, s.peer.port)}: live migration does not move connections to a destination without the SOCKETS feature (restored from a snapshot, the guest gets ECONNRESET on it)`);
        }
        continue; // a connection already reset is dead everywhere: it moves as it is
      }
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

  /**
   * Closes every host fd the guest holds. `resetConnections` (a guest stopped, not exited) aborts its
   * TCP connections, so their peers see a reset rather than an orderly end of stream.
   */
  close(resetConnections = false): void {
    this.ctx.table.closeAll(resetConnections);
  }

  /**
   * The host fds of the guest's live sockets by guest fd (a listener's with the connections a
   * migration brought that the guest has not accepted yet): what a live migration moves.
   */
  hostSockets(): AdoptedSockets {
    const out: AdoptedSockets = {};
    for (const [fd, d] of this.ctx.table.list()) {
      if (d.socket !== undefined && d.hostFd >= 0) out[fd] = { hostFd: d.hostFd, accepted: [...(d.pendingAccepts ?? [])] };
    }
    return out;
  }

  /** Hands listeners connections to accept next (those a failed live migration took from their queues). */
  adoptAccepted(accepted: Record<number, number[]>): void {
    for (const [key, fds] of Object.entries(accepted)) {
      const d = this.ctx.table.get(Number(key));
      if (d.kind !== 'listener') throw new Error(`guest fd ${key} is not a listener`);
      d.pendingAccepts = [...(d.pendingAccepts ?? []), ...fds];
    }
  }

  /** Whether the guest holds live sockets (their host fds must be closed when it ends). */
  holdsSockets(): boolean {
    return this.ctx.table.list().some(([, d]) => d.socket !== undefined && d.hostFd >= 0);
  }

  /** The exit status the guest passed to proc_exit, if it did. */
  get exitStatus(): number | null {
    return this.ctx.exitCode;
  }

  private buildImports(): Record<string, HostFunction> {
    const ctx = this.ctx;
    // Each group's functions are copied in one by one, not spread into one literal: spreading five
    // groups of closures made every Wasi's construction cost ≈ 0.18 ms (a profile of 1 000), and a
    // destination restores its guest's WASI inside a switchover's downtime.
    const wrapped: Record<string, HostFunction> = {};
    const groups: Array<Record<string, HostFunction>> = [
      processFunctions(ctx),
      fdFunctions(ctx),
      pathFunctions(ctx),
      { poll_oneoff: (inPtr: number, outPtr: number, nsubs: number, neventsPtr: number) => pollOneoff(ctx, inPtr, outPtr, nsubs, neventsPtr) },
      socketFunctions(ctx),
    ];
    for (const group of groups) for (const name of Object.keys(group)) wrapped[name] = errnoReturning(group[name]!);
    return wrapped;
  }
}

/**
 * A host function that returns the WASI errno of what it throws (a SysError or a Node error with a
 * code), and rethrows anything else — WasiExit included. Fixed parameters (preview1 functions take
 * at most 9) avoid a rest array on every host call; Wasm passes exactly the declared arguments,
 * extra ones are undefined and unused.
 */
function errnoReturning(fn: HostFunction): HostFunction {
  return (a?: unknown, b?: unknown, c?: unknown, d?: unknown, e?: unknown, f?: unknown, g?: unknown, h?: unknown, i?: unknown) => {
    try {
      return fn(a, b, c, d, e, f, g, h, i);
    } catch (err) {
      if (err instanceof WasiExit) throw err;
      const errno = errnoOf(err);
      if (errno === undefined) throw err;
      return errno;
    }
  };
}
