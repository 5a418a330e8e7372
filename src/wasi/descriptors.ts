// Building descriptors for the fd table: stdio bound to the embedder's host fds, files and
// directories opened on the host (always O_NONBLOCK, see openHostFd), and TCP sockets.
import * as fs from 'node:fs';
import { FDFLAGS, FDFLAGS_ALL, FILETYPE, RIGHTS, RIGHTS_ALL, RIGHTS_DIR_ONLY, RIGHTS_SEEKING } from './constants.js';
import { filetypeOf, isStream, type Descriptor } from './fd-table.js';
import type { FdKind, SocketState } from './state.js';

export function stdioDescriptor(kind: FdKind, hostFd: number): Descriptor {
  let st: fs.Stats;
  try {
    st = fs.fstatSync(hostFd);
  } catch (err) {
    throw new Error(`WASI stdio.${kind}: host fd ${hostFd} is not usable: ${(err as Error).message}`);
  }
  const stream = isStream(st);
  let rights = RIGHTS_ALL & ~RIGHTS_DIR_ONLY;
  if (stream) rights &= ~RIGHTS_SEEKING; // what wasi-libc's isatty() looks for
  return {
    kind, hostFd, ownsHostFd: false, root: null, path: '', offset: 0, fdflags: 0, oflags: 0,
    rightsBase: rights, rightsInheriting: 0n, filetype: filetypeOf(st),
    read: kind === 'stdin', write: kind !== 'stdin', detached: false, stream,
  };
}

export interface HostOpen { read: boolean; write: boolean; directory: boolean; creat: boolean; excl: boolean; trunc: boolean; follow: boolean; fdflags: number }

export function openHostFd(host: string, o: HostOpen): number {
  const C = fs.constants;
  let flags = o.directory ? C.O_RDONLY | C.O_DIRECTORY : o.read && o.write ? C.O_RDWR : o.write ? C.O_WRONLY : C.O_RDONLY;
  if (o.creat) flags |= C.O_CREAT;
  if (o.excl) flags |= C.O_EXCL;
  if (o.trunc) flags |= C.O_TRUNC;
  if (!o.follow) flags |= C.O_NOFOLLOW;
  // O_APPEND is emulated (we write at the current size with positional I/O): Linux pwrite ignores the
  // position on O_APPEND fds, which would break the offset we own.
  // O_NONBLOCK: no effect on files and directories, but opening a FIFO never blocks the guest's thread
  // (where no pause could reach it), and stream reads/writes come back with EAGAIN, which fd_read and
  // fd_write turn into pausable waits.
  flags |= C.O_NONBLOCK;
  if (o.fdflags & FDFLAGS.DSYNC) flags |= C.O_DSYNC;
  if (o.fdflags & (FDFLAGS.SYNC | FDFLAGS.RSYNC)) flags |= C.O_SYNC;
  return fs.openSync(host, flags, 0o666);
}

/** Rights of a TCP socket: stream I/O, flags, fstat, poll, shutdown; accept on a listener. */
export const RIGHTS_SOCKET = RIGHTS.FD_READ | RIGHTS.FD_WRITE | RIGHTS.FD_FDSTAT_SET_FLAGS | RIGHTS.FD_FILESTAT_GET |
  RIGHTS.POLL_FD_READWRITE | RIGHTS.SOCK_SHUTDOWN;

export function socketDescriptor(kind: 'listener' | 'socket', hostFd: number, sock: SocketState, fdflags: number): Descriptor {
  const rights = kind === 'listener' ? RIGHTS_SOCKET | RIGHTS.SOCK_ACCEPT : RIGHTS_SOCKET;
  return {
    kind, hostFd, ownsHostFd: hostFd >= 0, root: null, path: '', offset: 0, fdflags: fdflags & FDFLAGS_ALL, oflags: 0,
    rightsBase: rights, rightsInheriting: kind === 'listener' ? RIGHTS_SOCKET : 0n, filetype: FILETYPE.SOCKET_STREAM,
    read: true, write: true, detached: false, stream: true,
    socket: { ...sock, peer: sock.peer === null ? null : { ...sock.peer }, reset: hostFd >= 0 ? 'no' : 'pending' },
  };
}

export function formatSocketAddress(family: 4 | 6, address: string, port: number): string {
  return family === 6 ? `[${address}]:${port}` : `${address}:${port}`;
}
