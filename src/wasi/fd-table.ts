// The guest's descriptor table: guest fd → what it refers to on this host, plus everything we must
// remember to reopen it elsewhere (path under its preopen, our own offset, flags, rights).
import * as fs from 'node:fs';
import { FILETYPE } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';
import type { PreopenRoot } from './paths.js';
import type { FdKind, SocketState } from './state.js';
import { setLinger } from '../sys/socket.js';
import { close as closeFd } from '../sys/fd.js';

export interface DirEntry { name: string; ino: bigint; filetype: number }

export interface Descriptor {
  kind: FdKind;
  hostFd: number;
  /** False for stdio: those host fds belong to the embedder and are never closed by us. */
  ownsHostFd: boolean;
  root: PreopenRoot | null;
  path: string;
  offset: number;
  fdflags: number;
  oflags: number;
  rightsBase: bigint;
  rightsInheriting: bigint;
  filetype: number;
  read: boolean;
  write: boolean;
  detached: boolean;
  /** A pipe, socket, tty or other device: reads may block, and there is no offset. Host-local, recomputed. */
  stream: boolean;
  /** Sorted listing for fd_readdir, refreshed when the guest starts over at cookie 0. Host-local cache. */
  listing?: DirEntry[];
  /** Kinds 'listener' and 'socket': addresses, and whether the connection was reset by a restore. */
  socket?: SocketState & {
    /**
     * A connection that did not survive a restore (hostFd -1): 'pending' until the guest has been told
     * ECONNRESET once, then 'reported' (reads see end of stream, writes EPIPE), as the kernel does.
     */
    reset: 'no' | 'pending' | 'reported';
  };
}

/** preview1 filetype of a host stat result. FIFOs have no preview1 type and are UNKNOWN. */
export function filetypeOf(st: fs.Stats | fs.BigIntStats): number {
  if (st.isFile()) return FILETYPE.REGULAR_FILE;
  if (st.isDirectory()) return FILETYPE.DIRECTORY;
  if (st.isSymbolicLink()) return FILETYPE.SYMBOLIC_LINK;
  if (st.isCharacterDevice()) return FILETYPE.CHARACTER_DEVICE;
  if (st.isBlockDevice()) return FILETYPE.BLOCK_DEVICE;
  if (st.isSocket()) return FILETYPE.SOCKET_STREAM;
  return FILETYPE.UNKNOWN;
}

/** Whether reads from this host fd may block (no data yet) rather than hit EOF. */
export function isStream(st: fs.Stats): boolean {
  return st.isFIFO() || st.isSocket() || st.isCharacterDevice();
}

export class FdTable {
  private readonly entries = new Map<number, Descriptor>();

  get(fd: number): Descriptor {
    const d = this.entries.get(fd);
    if (d === undefined) throw new WasiErrno(ERRNO.BADF);
    return d;
  }

  has(fd: number): boolean {
    return this.entries.has(fd);
  }

  /** Places `d` at the lowest free guest fd (POSIX-like numbering). */
  add(d: Descriptor): number {
    let fd = 0;
    while (this.entries.has(fd)) fd++;
    this.entries.set(fd, d);
    return fd;
  }

  set(fd: number, d: Descriptor): void {
    this.entries.set(fd, d);
  }

  delete(fd: number): void {
    this.entries.delete(fd);
  }

  /** Entries ordered by guest fd. */
  list(): [number, Descriptor][] {
    return [...this.entries.entries()].sort((a, b) => a[0] - b[0]);
  }

  /** Closes host fds we opened and empties the table; `resetConnections` aborts TCP connections (the peer sees a reset). */
  closeAll(resetConnections = false): void {
    for (const d of this.entries.values()) closeHost(d, resetConnections);
    this.entries.clear();
  }
}

export function closeHost(d: Descriptor, resetConnection = false): void {
  if (!d.ownsHostFd || d.hostFd < 0) return;
  try {
    // SO_LINGER {1, 0}: close() aborts the connection, and the peer sees a reset rather than an end of stream.
    if (resetConnection && d.kind === 'socket') setLinger(d.hostFd, true, 0);
  } catch {
    // not connected any more: a plain close will do
  }
  try {
    // Sockets were opened by the addon, not by node:fs (which warns when it closes an fd it did not open).
    if (d.socket !== undefined) closeFd(d.hostFd);
    else fs.closeSync(d.hostFd);
  } catch {
    // already closed: nothing to release
  }
  d.hostFd = -1;
}
