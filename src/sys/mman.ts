// Addresses of buffers, madvise, and staging buffers (anonymous or memfd mappings exposed as
// ArrayBuffers without copies; unmapped when garbage-collected).
import { ftruncateSync } from 'node:fs';
import { K, native, type Bytes } from './native.js';
import { sys } from './errors.js';

/** The host's page size (x86-64 and arm64 with 4 KiB pages): the one definition in Ferry. */
export const HOST_PAGE_SIZE = 4096;

export const MADV_DONTNEED = K('MADV_DONTNEED');
export const MADV_WILLNEED = K('MADV_WILLNEED');
export const MADV_HUGEPAGE = K('MADV_HUGEPAGE');
export const MADV_NOHUGEPAGE = K('MADV_NOHUGEPAGE');
/** Populate a range writable in one call (5.14+); on userfaultfd-registered memory it would fault into the handler. */
export const MADV_POPULATE_WRITE = K('MADV_POPULATE_WRITE');
export const MFD_CLOEXEC = K('MFD_CLOEXEC');

/** Address of the first byte of a view or ArrayBuffer (for a SharedArrayBuffer, pass a view). */
export function addressOf(buf: Bytes | SharedArrayBuffer): number {
  return sys(() => native.bufferAddress(asBytes(buf)));
}

/** madvise(2) on [offset, offset+length) of buf; the range must be page-aligned and inside buf. */
export function madvise(buf: Bytes | SharedArrayBuffer, offset: number, length: number, advice: number): void {
  sys(() => native.madvise(asBytes(buf), offset, length, advice));
}

/** A private anonymous mapping of length bytes (a page multiple) as an ArrayBuffer. */
export function mapAnonymous(length: number): ArrayBuffer {
  return sys(() => native.mmapAnonymous(length));
}

/** A memfd of length bytes and a shared mapping of it; the caller owns (and closes) fd. */
export function mapMemfd(name: string, length: number): { fd: number; buffer: ArrayBuffer } {
  const fd = sys(() => native.memfdCreate(name, MFD_CLOEXEC));
  ftruncateSync(fd, length); // node:fs works on any real fd, memfds included

  return { fd, buffer: sys(() => native.mmapFd(fd, 0, length, true)) };
}

/** Maps [offset, offset+length) of fd (shared or private) as an ArrayBuffer. */
export function mapFd(fd: number, offset: number, length: number, shared: boolean): ArrayBuffer {
  return sys(() => native.mmapFd(fd, offset, length, shared));
}


function asBytes(buf: Bytes | SharedArrayBuffer): Bytes {
  return buf instanceof SharedArrayBuffer ? new Uint8Array(buf) : buf;
}
