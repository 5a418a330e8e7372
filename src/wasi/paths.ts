// Resolving guest paths to host paths without letting them leave their preopen.
import * as fs from 'node:fs';
import * as nodePath from 'node:path';
import { ERRNO, WasiErrno } from './errno.js';

const MAX_SYMLINK_HOPS = 32;

/** A preopened directory as this host sees it. */
export interface PreopenRoot {
  guestPath: string;
  hostPath: string;
  /** realpath of hostPath: every resolved path must stay under it. */
  realRoot: string;
}

export function makePreopenRoot(guestPath: string, hostPath: string): PreopenRoot {
  if (typeof guestPath !== 'string' || guestPath === '') throw new Error('preopen guestPath must be a non-empty string');
  if (typeof hostPath !== 'string' || hostPath === '') throw new Error(`preopen ${guestPath}: hostPath must be a non-empty string`);
  let realRoot: string;
  try {
    realRoot = fs.realpathSync(hostPath);
  } catch (err) {
    throw new Error(`preopen ${guestPath}: host path ${hostPath} cannot be resolved: ${(err as Error).message}`);
  }
  if (!fs.statSync(realRoot).isDirectory()) throw new Error(`preopen ${guestPath}: host path ${hostPath} is not a directory`);
  return { guestPath, hostPath, realRoot };
}

/**
 * Joins `path` (from the guest) onto `base` (a path relative to the preopen root, '.' for the root) and
 * normalises it. Absolute paths and `..` that would climb above the root are refused with ENOTCAPABLE.
 */
export function joinGuestPath(base: string, path: string): string {
  if (path.length === 0) throw new WasiErrno(ERRNO.NOENT);
  if (path.includes('\0')) throw new WasiErrno(ERRNO.INVAL);
  if (path.startsWith('/')) throw new WasiErrno(ERRNO.NOTCAPABLE, `absolute path ${path}`);
  const parts = base === '.' ? [] : base.split('/');
  for (const seg of path.split('/')) {
    if (seg === '' || seg === '.') continue;
    if (seg === '..') {
      if (parts.length === 0) throw new WasiErrno(ERRNO.NOTCAPABLE, `path ${path} escapes its preopen`);
      parts.pop();
    } else parts.push(seg);
  }
  return parts.length === 0 ? '.' : parts.join('/');
}

function isUnder(root: string, p: string): boolean {
  return p === root || p.startsWith(root.endsWith('/') ? root : root + '/');
}

function hostOf(root: PreopenRoot, rel: string): string {
  return rel === '.' ? root.hostPath : nodePath.join(root.hostPath, rel);
}

function checkParentInside(root: PreopenRoot, host: string): void {
  if (host === root.hostPath) return;
  const realParent = fs.realpathSync(nodePath.dirname(host)); // ENOENT / ENOTDIR become the guest's errno
  if (!isUnder(root.realRoot, realParent)) throw new WasiErrno(ERRNO.NOTCAPABLE, `${host} resolves outside its preopen`);
}

/**
 * The host path for guest path `rel` (already joined, relative to the preopen root). The directory it is
 * in must really be inside the root (symlinks included). With `followFinal`, a symlink in the last
 * component is followed by hand, one hop at a time, each hop checked the same way, so a link that points
 * out of the preopen (even a dangling one, which O_CREAT would create) is refused with ENOTCAPABLE.
 * Without it, the caller must not follow the last component (O_NOFOLLOW, lstat, unlink...).
 * Checks race with concurrent renames by other host processes; the guest itself is single-threaded.
 */
export function resolveHostPath(root: PreopenRoot, rel: string, followFinal: boolean): string {
  let host = hostOf(root, rel);
  checkParentInside(root, host);
  if (!followFinal) return host;
  for (let hops = 0; ; hops++) {
    let st: fs.Stats;
    try {
      st = fs.lstatSync(host);
    } catch {
      return host; // does not exist (yet): its parent is checked
    }
    if (!st.isSymbolicLink()) {
      const real = fs.realpathSync(host);
      if (!isUnder(root.realRoot, real)) throw new WasiErrno(ERRNO.NOTCAPABLE, `${host} resolves outside its preopen`);
      return host;
    }
    if (hops >= MAX_SYMLINK_HOPS) throw new WasiErrno(ERRNO.LOOP);
    const target = fs.readlinkSync(host);
    host = nodePath.resolve(nodePath.dirname(host), target);
    if (!isUnder(root.realRoot, host) && !isUnder(root.hostPath, host)) {
      throw new WasiErrno(ERRNO.NOTCAPABLE, `symlink ${target} points outside its preopen`);
    }
    checkParentInside(root, host);
  }
}
