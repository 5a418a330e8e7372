// The WASI functions on paths (path_*): every guest path is resolved under its preopen's host
// directory (paths.ts refuses escapes), and descriptors whose path goes away or moves are kept in
// step, so a capture records where each open file really is.
import * as fs from 'node:fs';
import * as nodePath from 'node:path';
import { FDFLAGS_ALL, LOOKUP_SYMLINK_FOLLOW, OFLAGS, RIGHTS, RIGHTS_DIR_ONLY, RIGHTS_SEEKING } from './constants.js';
import { ERRNO, WasiErrno } from './errno.js';
import { filetypeOf, isStream } from './fd-table.js';
import { joinGuestPath, resolveHostPath } from './paths.js';
import { openHostFd } from './descriptors.js';
import type { HostFunction, WasiContext } from './context.js';

/** path_* host functions over `ctx`. */
export function pathFunctions(ctx: WasiContext): Record<string, HostFunction> {
  return {
    path_create_directory: (fd: number, ptr: number, len: number) => {
      const { dir, rel } = ctx.guestPath(fd, ptr, len, RIGHTS.PATH_CREATE_DIRECTORY);
      fs.mkdirSync(resolveHostPath(dir.root, rel, false));
      return 0;
    },
    path_filestat_get: (fd: number, flags: number, ptr: number, len: number, out: number) => {
      const { dir, rel } = ctx.guestPath(fd, ptr, len, RIGHTS.PATH_FILESTAT_GET);
      const follow = (flags & LOOKUP_SYMLINK_FOLLOW) !== 0;
      const host = resolveHostPath(dir.root, rel, follow);
      ctx.writeFilestat(out, follow ? fs.statSync(host, { bigint: true }) : fs.lstatSync(host, { bigint: true }));
      return 0;
    },
    path_filestat_set_times: (fd: number, flags: number, ptr: number, len: number, atim: bigint, mtim: bigint, fst: number) => {
      const { dir, rel } = ctx.guestPath(fd, ptr, len, RIGHTS.PATH_FILESTAT_SET_TIMES);
      const follow = (flags & LOOKUP_SYMLINK_FOLLOW) !== 0;
      const host = resolveHostPath(dir.root, rel, follow);
      const st = follow ? fs.statSync(host, { bigint: true }) : fs.lstatSync(host, { bigint: true });
      const [a, mt] = ctx.times(st, atim, mtim, fst);
      if (follow) fs.utimesSync(host, a, mt);
      else fs.lutimesSync(host, a, mt);
      return 0;
    },
    path_link: (oldFd: number, oldFlags: number, oldPtr: number, oldLen: number, newFd: number, newPtr: number, newLen: number) => {
      const src = ctx.guestPath(oldFd, oldPtr, oldLen, RIGHTS.PATH_LINK_SOURCE);
      const dst = ctx.guestPath(newFd, newPtr, newLen, RIGHTS.PATH_LINK_TARGET);
      const srcHost = resolveHostPath(src.dir.root, src.rel, (oldFlags & LOOKUP_SYMLINK_FOLLOW) !== 0);
      fs.linkSync(srcHost, resolveHostPath(dst.dir.root, dst.rel, false));
      return 0;
    },
    path_open: (fd: number, dirflags: number, ptr: number, len: number, oflags: number, rightsBase: bigint, rightsInheriting: bigint, fdflags: number, fdOut: number) =>
      pathOpen(ctx, fd, dirflags, ptr, len, oflags, rightsBase, rightsInheriting, fdflags, fdOut),
    path_readlink: (fd: number, ptr: number, len: number, buf: number, bufLen: number, bufusedPtr: number) => {
      const { dir, rel } = ctx.guestPath(fd, ptr, len, RIGHTS.PATH_READLINK);
      const target = fs.readlinkSync(resolveHostPath(dir.root, rel, false), { encoding: 'buffer' });
      const n = Math.min(target.length, bufLen);
      ctx.m().write(buf, target.subarray(0, n));
      ctx.m().setU32(bufusedPtr, n);
      return 0;
    },
    path_remove_directory: (fd: number, ptr: number, len: number) => {
      const { dir, rel } = ctx.guestPath(fd, ptr, len, RIGHTS.PATH_REMOVE_DIRECTORY);
      if (rel === '.') throw new WasiErrno(ERRNO.BUSY);
      fs.rmdirSync(resolveHostPath(dir.root, rel, false));
      ctx.pathsChanged(dir.root, rel, null);
      return 0;
    },
    path_rename: (fd: number, oldPtr: number, oldLen: number, newFd: number, newPtr: number, newLen: number) => {
      const src = ctx.guestPath(fd, oldPtr, oldLen, RIGHTS.PATH_RENAME_SOURCE);
      const dst = ctx.guestPath(newFd, newPtr, newLen, RIGHTS.PATH_RENAME_TARGET);
      fs.renameSync(resolveHostPath(src.dir.root, src.rel, false), resolveHostPath(dst.dir.root, dst.rel, false));
      if (src.dir.root === dst.dir.root) ctx.pathsChanged(src.dir.root, src.rel, dst.rel);
      else {
        ctx.pathsChanged(dst.dir.root, dst.rel, null);
        ctx.pathsChanged(src.dir.root, src.rel, null); // moved to another preopen: no longer tracked
      }
      return 0;
    },
    path_symlink: (targetPtr: number, targetLen: number, fd: number, ptr: number, len: number) => {
      const target = ctx.m().string(targetPtr, targetLen);
      const { dir, rel } = ctx.guestPath(fd, ptr, len, RIGHTS.PATH_SYMLINK);
      // A link is only followed through resolveHostPath, which checks it, but refuse obvious escapes early.
      joinGuestPath(rel === '.' ? '.' : nodePath.posix.dirname(rel), target);
      fs.symlinkSync(target, resolveHostPath(dir.root, rel, false));
      return 0;
    },
    path_unlink_file: (fd: number, ptr: number, len: number) => {
      const { dir, rel } = ctx.guestPath(fd, ptr, len, RIGHTS.PATH_UNLINK_FILE);
      fs.unlinkSync(resolveHostPath(dir.root, rel, false));
      ctx.pathsChanged(dir.root, rel, null);
      return 0;
    },
  };
}

export function pathOpen(ctx: WasiContext, fd: number, dirflags: number, ptr: number, len: number, oflags: number, rightsBase: bigint, rightsInheriting: bigint, fdflags: number, fdOut: number): number {
  const { dir, rel } = ctx.guestPath(fd, ptr, len, RIGHTS.PATH_OPEN);
  if (oflags & OFLAGS.CREAT) ctx.need(dir, RIGHTS.PATH_CREATE_FILE);
  const follow = (dirflags & LOOKUP_SYMLINK_FOLLOW) !== 0;
  const host = resolveHostPath(dir.root, rel, follow);
  const read = (rightsBase & (RIGHTS.FD_READ | RIGHTS.FD_READDIR)) !== 0n;
  const write = (rightsBase & (RIGHTS.FD_WRITE | RIGHTS.FD_ALLOCATE | RIGHTS.FD_FILESTAT_SET_SIZE)) !== 0n || (oflags & OFLAGS.TRUNC) !== 0;
  const directory = (oflags & OFLAGS.DIRECTORY) !== 0;
  let hostFd: number;
  try {
    hostFd = openHostFd(host, {
      read, write, directory, creat: (oflags & OFLAGS.CREAT) !== 0, excl: (oflags & OFLAGS.EXCL) !== 0,
      trunc: (oflags & OFLAGS.TRUNC) !== 0, follow, fdflags,
    });
  } catch (err) {
    // A directory opened without O_DIRECTORY but with write rights: open it read-only as a directory.
    if (!(typeof err === 'object' && err !== null && 'code' in err && err.code === 'EISDIR') || oflags & (OFLAGS.CREAT | OFLAGS.TRUNC)) throw err;
    hostFd = openHostFd(host, { read: true, write: false, directory: true, creat: false, excl: false, trunc: false, follow, fdflags: 0 });
  }
  const st = fs.fstatSync(hostFd);
  const isDir = st.isDirectory();
  let base = rightsBase & dir.rightsInheriting;
  if (!isDir) base &= ~RIGHTS_DIR_ONLY;
  const stream = isStream(st);
  if (stream) base &= ~RIGHTS_SEEKING;
  const newFd = ctx.table.add({
    kind: isDir ? 'dir' : 'file', hostFd, ownsHostFd: true, root: dir.root, path: rel, offset: 0,
    fdflags: fdflags & FDFLAGS_ALL, oflags, rightsBase: base, rightsInheriting: rightsInheriting & dir.rightsInheriting,
    filetype: filetypeOf(st), read: isDir ? true : read, write: isDir ? false : write, detached: false, stream,
  });
  ctx.m().setU32(fdOut, newFd);
  return 0;
}
