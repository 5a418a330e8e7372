// Validation of WasiState read from untrusted storage or the network.
import { isIP } from 'node:net';
import { FD_KINDS, WASI_STATE_VERSION, type FdKind, type FdState, type PendingPollState, type SocketState, type WasiState } from './state.js';

export type { WasiState } from './state.js';

function fail(field: string, why: string): never {
  throw new Error(`invalid WASI state: ${field} ${why}`);
}

function isRecord(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function str(x: unknown, field: string): string {
  if (typeof x !== 'string') fail(field, `must be a string, got ${typeof x}`);
  return x;
}

function u64String(x: unknown, field: string): string {
  const s = str(x, field);
  if (!/^[0-9]{1,20}$/.test(s) || BigInt(s) >= 1n << 64n) fail(field, `must be a decimal unsigned 64-bit integer, got ${JSON.stringify(s)}`);
  return s;
}

function int(x: unknown, field: string, min: number, max: number): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) fail(field, `must be an integer in [${min}, ${max}], got ${JSON.stringify(x)}`);
  return x;
}

function bool(x: unknown, field: string): boolean {
  if (typeof x !== 'boolean') fail(field, `must be a boolean, got ${typeof x}`);
  return x;
}

function ipAddress(x: unknown, field: string, family: 4 | 6): string {
  const s = str(x, field);
  if (s.length > 45 || isIP(s) !== family) fail(field, `must be a numeric IPv${family} address, got ${JSON.stringify(s)}`);
  return s;
}

function validateSocket(x: unknown, field: string, listener: boolean): SocketState {
  if (!isRecord(x)) fail(field, 'must be an object');
  const family = int(x.family, `${field}.family`, 4, 6);
  if (family !== 4 && family !== 6) fail(`${field}.family`, `must be 4 or 6, got ${family}`);
  const address = ipAddress(x.address, `${field}.address`, family);
  // A listener was bound before it was captured: its port is the one to bind again, never 0.
  const port = int(x.port, `${field}.port`, listener ? 1 : 0, 65535);
  let peer: SocketState['peer'] = null;
  if (listener) {
    if (x.peer !== null) fail(`${field}.peer`, 'must be null for a listener');
  } else {
    if (!isRecord(x.peer)) fail(`${field}.peer`, 'must be an object for a connection');
    peer = { address: ipAddress(x.peer.address, `${field}.peer.address`, family), port: int(x.peer.port, `${field}.peer.port`, 0, 65535) };
  }
  return { family, address, port, peer };
}

function validateFd(x: unknown, field: string, preopens: readonly string[], version: number): FdState {
  if (!isRecord(x)) fail(field, 'must be an object');
  const kind = str(x.kind, `${field}.kind`);
  if (!FD_KINDS.includes(kind as FdKind)) fail(`${field}.kind`, `must be one of ${FD_KINDS.join(', ')}, got ${JSON.stringify(kind)}`);
  const isSocket = kind === 'listener' || kind === 'socket';
  if (isSocket && version < 2) fail(`${field}.kind`, `${kind} needs WASI state version 2`);
  const isStdio = kind === 'stdin' || kind === 'stdout' || kind === 'stderr' || isSocket;
  let preopen: string | null = null;
  if (isStdio) {
    if (x.preopen !== null) fail(`${field}.preopen`, `must be null for ${isSocket ? 'a socket' : 'stdio'}`);
  } else {
    preopen = str(x.preopen, `${field}.preopen`);
    if (!preopens.includes(preopen)) fail(`${field}.preopen`, `names ${JSON.stringify(preopen)}, which is not in preopens`);
  }
  const path = str(x.path, `${field}.path`);
  if (!isStdio && (path === '' || path.startsWith('/') || path.split('/').includes('..'))) {
    fail(`${field}.path`, `must be a relative path inside its preopen, got ${JSON.stringify(path)}`);
  }
  if (isSocket && path !== '') fail(`${field}.path`, 'must be empty for a socket');
  if (!isSocket && x.socket !== undefined) fail(`${field}.socket`, `must be absent for kind ${kind}`);
  const fd: FdState = {
    fd: int(x.fd, `${field}.fd`, 0, 0x7fffffff),
    kind: kind as FdKind,
    preopen,
    path,
    offset: int(x.offset, `${field}.offset`, 0, Number.MAX_SAFE_INTEGER),
    fdflags: int(x.fdflags, `${field}.fdflags`, 0, 0xffff),
    oflags: int(x.oflags, `${field}.oflags`, 0, 0xffff),
    rightsBase: u64String(x.rightsBase, `${field}.rightsBase`),
    rightsInheriting: u64String(x.rightsInheriting, `${field}.rightsInheriting`),
    filetype: int(x.filetype, `${field}.filetype`, 0, 7),
    read: bool(x.read, `${field}.read`),
    write: bool(x.write, `${field}.write`),
    detached: bool(x.detached, `${field}.detached`),
  };
  if (isSocket) fd.socket = validateSocket(x.socket, `${field}.socket`, kind === 'listener');
  return fd;
}

function validatePendingPoll(x: unknown): PendingPollState | null {
  if (x === null) return null;
  if (!isRecord(x)) fail('pendingPoll', 'must be null or an object');
  const subscriptions = str(x.subscriptions, 'pendingPoll.subscriptions');
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(subscriptions)) fail('pendingPoll.subscriptions', 'must be base64');
  return { subscriptions, deadlineNs: u64String(x.deadlineNs, 'pendingPoll.deadlineNs') };
}

/** Checks that `x` is a WasiState this version can restore; throws an Error naming the bad field. */
export function validateWasiState(x: unknown): WasiState {
  if (!isRecord(x)) fail('(root)', 'must be an object');
  // Version 1 (before sockets) is a subset of version 2: it loads, and is version 2 from then on.
  if (x.version !== WASI_STATE_VERSION && x.version !== 1) fail('version', `must be 1 or ${WASI_STATE_VERSION}, got ${JSON.stringify(x.version)}`);
  const version = x.version;
  if (!Array.isArray(x.args)) fail('args', 'must be an array of strings');
  const args = x.args.map((a, i) => str(a, `args[${i}]`));
  if (!isRecord(x.env)) fail('env', 'must be an object of strings');
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(x.env)) env[k] = str(v, `env.${k}`);
  if (!Array.isArray(x.preopens)) fail('preopens', 'must be an array of strings');
  const preopens = x.preopens.map((p, i) => str(p, `preopens[${i}]`));
  if (new Set(preopens).size !== preopens.length) fail('preopens', 'must not repeat a guest path');
  if (!Array.isArray(x.fds)) fail('fds', 'must be an array');
  const fds = x.fds.map((f, i) => validateFd(f, `fds[${i}]`, preopens, version));
  const seen = new Set<number>();
  for (const [i, f] of fds.entries()) {
    if (seen.has(f.fd)) fail(`fds[${i}].fd`, `repeats fd ${f.fd}`);
    seen.add(f.fd);
  }
  if (!isRecord(x.clocks)) fail('clocks', 'must be an object');
  const clocks = {
    monotonicNs: u64String(x.clocks.monotonicNs, 'clocks.monotonicNs'),
    cputimeNs: u64String(x.clocks.cputimeNs, 'clocks.cputimeNs'),
  };
  const exitCode = x.exitCode === null ? null : int(x.exitCode, 'exitCode', 0, 0xffffffff);
  return { version: WASI_STATE_VERSION, args, env, preopens, fds, clocks, exitCode, pendingPoll: validatePendingPoll(x.pendingPoll) };
}
