// Plain file-descriptor syscalls: poll, read, write, pread, close, eventfd, and an event-loop watcher.
import { K, native, type Bytes } from './native.js';
import { sys } from './errors.js';

export const POLLIN = K('POLLIN');
export const POLLOUT = K('POLLOUT');
export const POLLERR = K('POLLERR');
export const POLLHUP = K('POLLHUP');
export const EFD_NONBLOCK = K('EFD_NONBLOCK');
export const EFD_CLOEXEC = K('EFD_CLOEXEC');
export const EFD_SEMAPHORE = K('EFD_SEMAPHORE');

/** poll(2) on a few fds; returns revents per fd (all 0 on timeout). Blocks the calling thread. */
export function poll(fds: readonly number[], events: readonly number[], timeoutMs: number): number[] {
  const p = new Poller(fds, events);
  p.wait(timeoutMs);
  return Array.from(p.revents);
}

/** A reusable poll set for hot loops (no allocation per wait). */
export class Poller {
  readonly fds: Int32Array;
  readonly events: Int32Array;
  readonly revents: Int32Array;
  constructor(fds: readonly number[], events: readonly number[]) {
    if (fds.length !== events.length) throw new TypeError('poll: fds and events must have the same length');
    this.fds = Int32Array.from(fds);
    this.events = Int32Array.from(events);
    this.revents = new Int32Array(fds.length);
  }
  /** Number of ready fds (0 on timeout); revents holds the details. */
  wait(timeoutMs: number): number {
    return sys(() => native.poll(this.fds, this.events, this.revents, timeoutMs));
  }
}

export function read(fd: number, buf: Bytes, offset = 0, length = byteLen(buf) - offset): number {
  return sys(() => native.read(fd, buf, offset, length));
}

export function pread(fd: number, buf: Bytes, offset: number, length: number, position: number): number {
  return sys(() => native.pread(fd, buf, offset, length, position));
}

export function write(fd: number, buf: Bytes, offset = 0, length = byteLen(buf) - offset): number {
  return sys(() => native.write(fd, buf, offset, length));
}

export function close(fd: number): void {
  sys(() => native.close(fd));
}

/** A second (close-on-exec) descriptor of the same open file: a socket outlives closing either. */
export function dup(fd: number): number {
  return sys(() => native.dup(fd));
}

/** eventfd(2); flags from EFD_NONBLOCK | EFD_CLOEXEC | EFD_SEMAPHORE. */
export function eventfd(initval = 0, flags = EFD_CLOEXEC): number {
  return sys(() => native.eventfd(initval, flags));
}

const one = new BigUint64Array([1n]);
/** Adds 1 to an eventfd counter (wakes whoever polls it). */
export function eventfdSignal(fd: number, n = 1): void {
  one[0] = BigInt(n);
  write(fd, one, 0, 8);
}

/** Reads (and resets) an eventfd counter; 0 if it was not signalled and the fd is non-blocking. */
export function eventfdDrain(fd: number): number {
  const v = new BigUint64Array(1);
  try {
    read(fd, v, 0, 8);
  } catch (e) {
    if ((e as { code?: string }).code === 'EAGAIN') return 0;
    throw e;
  }
  return Number(v[0]);
}

/**
 * Calls cb(status, revents) on this thread's event loop whenever fd is ready (a libuv poll handle),
 * so a thread with an event loop can wait for a uffd or socket without blocking. stop() is idempotent.
 */
export class FdWatcher {
  private handle: object | null;
  constructor(readonly fd: number, events: number, cb: (status: number, revents: number) => void) {
    this.handle = sys(() => native.fdWatch(fd, events, cb));
  }
  stop(): void {
    if (this.handle) native.fdUnwatch(this.handle);
    this.handle = null;
  }
}

function byteLen(buf: Bytes): number {
  return buf.byteLength;
}
