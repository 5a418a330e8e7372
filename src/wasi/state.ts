// The serializable state of a Wasi instance: plain JSON data, versioned. Everything a new host needs to
// rebuild the guest's view of its WASI world (but not host fds, which are rebound on restore).

/** 2 added TCP sockets (kinds 'listener' and 'socket', FdState.socket); version 1 states still load. */
export const WASI_STATE_VERSION = 2;

/** What a guest fd refers to. Stdio kinds are rebound to the new host's stdio fds on restore. */
export type FdKind = 'stdin' | 'stdout' | 'stderr' | 'preopen' | 'file' | 'dir' | 'listener' | 'socket';
export const FD_KINDS: readonly FdKind[] = ['stdin', 'stdout', 'stderr', 'preopen', 'file', 'dir', 'listener', 'socket'];

/**
 * A TCP socket: a listener (from `--listen`; re-created at the same address on restore) or an
 * established connection the guest accepted. A connection does not survive a restore: it comes back
 * as a reset one (the guest's next recv or send gets ECONNRESET).
 */
export interface SocketState {
  family: 4 | 6;
  /** Local address (numeric) and port. */
  address: string;
  port: number;
  /** The peer of a connection; null for a listener. */
  peer: { address: string; port: number } | null;
}

export interface FdState {
  fd: number;
  kind: FdKind;
  /** guestPath of the preopen this descriptor lives under; null for stdio. */
  preopen: string | null;
  /** Path relative to that preopen's root, '.' for the root itself; '' for stdio. */
  path: string;
  /** Our own file offset (positional I/O), for files; 0 otherwise. */
  offset: number;
  fdflags: number;
  /** The oflags the guest opened with (informational: restore never repeats CREAT/TRUNC/EXCL). */
  oflags: number;
  /** 64-bit rights as decimal strings (JSON has no 64-bit integers). */
  rightsBase: string;
  rightsInheriting: string;
  /** preview1 filetype seen when opened. */
  filetype: number;
  /** Whether the host file was opened for reading / writing. */
  read: boolean;
  write: boolean;
  /** Set when the guest unlinked or renamed over the path while this fd was open: it cannot be reopened. */
  detached: boolean;
  /** Present exactly for kinds 'listener' and 'socket' (preopen null, path ''). */
  socket?: SocketState;
}

/** A poll_oneoff that was interrupted by a pause: its absolute deadline survives re-entry. */
export interface PendingPollState {
  /** Base64 of the raw subscription bytes, so re-entry with other arguments is recognised. */
  subscriptions: string;
  /** Deadline on the guest's monotonic clock, ns, decimal string. */
  deadlineNs: string;
}

export interface WasiState {
  version: typeof WASI_STATE_VERSION;
  args: string[];
  env: Record<string, string>;
  /** Preopen guest paths, in the order the guest saw them. */
  preopens: string[];
  fds: FdState[];
  clocks: {
    /** Guest-visible monotonic / cputime clocks at capture, ns, decimal strings. */
    monotonicNs: string;
    cputimeNs: string;
  };
  exitCode: number | null;
  pendingPoll: PendingPollState | null;
}
