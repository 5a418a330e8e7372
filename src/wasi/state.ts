// The serializable state of a Wasi instance: plain JSON data, versioned. Everything a new host needs to
// rebuild the guest's view of its WASI world (but not host fds, which are rebound on restore).

export const WASI_STATE_VERSION = 1;

/** What a guest fd refers to. Stdio kinds are rebound to the new host's stdio fds on restore. */
export type FdKind = 'stdin' | 'stdout' | 'stderr' | 'preopen' | 'file' | 'dir';
export const FD_KINDS: readonly FdKind[] = ['stdin', 'stdout', 'stderr', 'preopen', 'file', 'dir'];

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
