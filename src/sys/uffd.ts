// Userfaultfd: a typed wrapper over one uffd (API handshake, register, fill, wake, write-protect, events).
import { K, native, type Bytes } from './native.js';
import { sys, SysError } from './errors.js';
import { HOST_PAGE_SIZE } from './mman.js';

export const UFFD_FEATURE = {
  PAGEFAULT_FLAG_WP: K('UFFD_FEATURE_PAGEFAULT_FLAG_WP'),
  EVENT_FORK: K('UFFD_FEATURE_EVENT_FORK'),
  EVENT_REMAP: K('UFFD_FEATURE_EVENT_REMAP'),
  EVENT_REMOVE: K('UFFD_FEATURE_EVENT_REMOVE'),
  EVENT_UNMAP: K('UFFD_FEATURE_EVENT_UNMAP'),
  MISSING_SHMEM: K('UFFD_FEATURE_MISSING_SHMEM'),
  SIGBUS: K('UFFD_FEATURE_SIGBUS'),
  THREAD_ID: K('UFFD_FEATURE_THREAD_ID'),
  MINOR_SHMEM: K('UFFD_FEATURE_MINOR_SHMEM'),
  EXACT_ADDRESS: K('UFFD_FEATURE_EXACT_ADDRESS'),
  WP_HUGETLBFS_SHMEM: K('UFFD_FEATURE_WP_HUGETLBFS_SHMEM'),
  WP_UNPOPULATED: K('UFFD_FEATURE_WP_UNPOPULATED'),
  POISON: K('UFFD_FEATURE_POISON'),
  WP_ASYNC: K('UFFD_FEATURE_WP_ASYNC'),
  MOVE: K('UFFD_FEATURE_MOVE'),
} as const;

export const REGISTER_MODE = {
  MISSING: K('UFFDIO_REGISTER_MODE_MISSING'),
  WP: K('UFFDIO_REGISTER_MODE_WP'),
  MINOR: K('UFFDIO_REGISTER_MODE_MINOR'),
} as const;

/** Bit numbers of the ioctls reported by UFFDIO_API / UFFDIO_REGISTER (test with hasIoctl). */
export const IOCTL = {
  REGISTER: K('_UFFDIO_REGISTER'), UNREGISTER: K('_UFFDIO_UNREGISTER'), WAKE: K('_UFFDIO_WAKE'),
  COPY: K('_UFFDIO_COPY'), ZEROPAGE: K('_UFFDIO_ZEROPAGE'), MOVE: K('_UFFDIO_MOVE'),
  WRITEPROTECT: K('_UFFDIO_WRITEPROTECT'), CONTINUE: K('_UFFDIO_CONTINUE'), POISON: K('_UFFDIO_POISON'),
  API: K('_UFFDIO_API'),
} as const;

export const EVENT = {
  PAGEFAULT: K('UFFD_EVENT_PAGEFAULT'), FORK: K('UFFD_EVENT_FORK'), REMAP: K('UFFD_EVENT_REMAP'),
  REMOVE: K('UFFD_EVENT_REMOVE'), UNMAP: K('UFFD_EVENT_UNMAP'),
} as const;

export const PAGEFAULT_FLAG = {
  WRITE: K('UFFD_PAGEFAULT_FLAG_WRITE'), WP: K('UFFD_PAGEFAULT_FLAG_WP'), MINOR: K('UFFD_PAGEFAULT_FLAG_MINOR'),
} as const;

export const COPY_MODE = { DONTWAKE: K('UFFDIO_COPY_MODE_DONTWAKE'), WP: K('UFFDIO_COPY_MODE_WP') } as const;
export const WP_MODE = { WP: K('UFFDIO_WRITEPROTECT_MODE_WP'), DONTWAKE: K('UFFDIO_WRITEPROTECT_MODE_DONTWAKE') } as const;

/** Fill result codes (see Userfaultfd.copy): the page already existed / the mm was changing. */
export const FILL_EEXIST = -K('EEXIST');
export const FILL_EAGAIN = -K('EAGAIN');

/** 4 doubles per event in an event buffer: [event, flags, address, arg]. */
export const EVENT_SLOTS = 4;

export interface DecodedEvent {
  event: number;
  /** PAGEFAULT only */
  address: number;
  flags: number;
  write: boolean;
  wp: boolean;
  minor: boolean;
  /** PAGEFAULT: faulting thread id (with THREAD_ID); FORK: new uffd; REMAP: to; REMOVE/UNMAP: end */
  arg: number;
}

export function hasIoctl(mask: bigint, bit: number): boolean {
  return ((mask >> BigInt(bit)) & 1n) === 1n;
}

export function decodeEvent(buf: Float64Array, i: number): DecodedEvent {
  const o = i * EVENT_SLOTS;
  const flags = buf[o + 1]!;
  return {
    event: buf[o]!, flags, address: buf[o + 2]!, arg: buf[o + 3]!,
    write: (flags & PAGEFAULT_FLAG.WRITE) !== 0, wp: (flags & PAGEFAULT_FLAG.WP) !== 0,
    minor: (flags & PAGEFAULT_FLAG.MINOR) !== 0,
  };
}

export interface UffdOptions {
  /** Features to ask for in the UFFDIO_API handshake (fails with EINVAL if the kernel lacks one). */
  features?: number;
  nonblock?: boolean;
}

/**
 * One userfaultfd. The fd is a plain number valid in every thread of the process, so a Userfaultfd can be
 * re-attached in a worker with Userfaultfd.attach(fd) (no second handshake).
 */
export class Userfaultfd {
  private closed = false;
  private constructor(readonly fd: number, readonly features: number, readonly ioctls: bigint) {}

  static open(opts: UffdOptions = {}): Userfaultfd {
    const fd = sys(() => native.uffdCreate(opts.nonblock ?? true, true));
    try {
      const api = sys(() => native.uffdApi(fd, opts.features ?? 0));
      return new Userfaultfd(fd, api.features, api.ioctls);
    } catch (e) {
      native.close(fd);
      throw e;
    }
  }

  /** Wraps an fd opened (and handshaken) elsewhere in this process. */
  static attach(fd: number, features = 0): Userfaultfd {
    return new Userfaultfd(fd, features, 0n);
  }

  /** Registers [start, start+length); returns the ioctl mask available there (test bits with hasIoctl). */
  register(start: number, length: number, mode: number): bigint {
    return sys(() => native.uffdRegister(this.fd, start, length, mode));
  }
  unregister(start: number, length: number): void {
    sys(() => native.uffdUnregister(this.fd, start, length));
  }

  /**
   * UFFDIO_COPY of length bytes from src[srcOffset..] to dst. Returns the bytes copied (may be fewer
   * than asked: continue after them), FILL_EEXIST when the page at dst is already present (a racing fill:
   * treat as success) or FILL_EAGAIN (retry). Other failures throw SysError.
   */
  copy(dst: number, src: Bytes, srcOffset: number, length: number, mode = 0): number {
    return sys(() => native.uffdCopy(this.fd, dst, src, srcOffset, length, mode));
  }

  /** Copies a whole range, skipping pages that already exist; returns pages copied and pages found present. */
  copyAll(dst: number, src: Bytes, srcOffset: number, length: number, mode = 0): { copied: number; existed: number } {
    let done = 0;
    let existed = 0;
    while (done < length) {
      const r = this.copy(dst + done, src, srcOffset + done, length - done, mode);
      if (r === FILL_EEXIST) { existed++; done += HOST_PAGE_SIZE; this.wakeQuiet(dst + done - HOST_PAGE_SIZE, HOST_PAGE_SIZE); }
      else if (r === FILL_EAGAIN) continue;
      else done += r;
    }
    return { copied: (length - existed * HOST_PAGE_SIZE) / HOST_PAGE_SIZE, existed };
  }

  /** UFFDIO_ZEROPAGE; same result convention as copy(). */
  zeropage(start: number, length: number, mode = 0): number {
    return sys(() => native.uffdZeropage(this.fd, start, length, mode));
  }

  /** UFFDIO_CONTINUE (MINOR faults on shmem); same result convention as copy(). */
  continue(start: number, length: number, mode = 0): number {
    return sys(() => native.uffdContinue(this.fd, start, length, mode));
  }

  wake(start: number, length: number): void {
    sys(() => native.uffdWake(this.fd, start, length));
  }

  /** Write-protects (protect = true) or un-protects a range (un-protecting wakes waiters unless dontWake). */
  writeProtect(start: number, length: number, protect: boolean, dontWake = false): void {
    sys(() => native.uffdWriteprotect(this.fd, start, length, (protect ? WP_MODE.WP : 0) | (dontWake ? WP_MODE.DONTWAKE : 0)));
  }

  /** Reads queued events into out (EVENT_SLOTS doubles each); blocks for at least one when wait is true. */
  readEvents(out: Float64Array, wait = false): number {
    return sys(() => native.uffdReadEvents(this.fd, out, wait));
  }

  /**
   * Waits for events or for wakeFd to become readable: > 0 events, 0 timeout, -1 woken. With spinUs > 0
   * (non-blocking uffd only) it first polls with non-blocking reads for that long before sleeping.
   */
  waitEvents(wakeFd: number, out: Float64Array, timeoutMs = -1, spinUs = 0): number {
    return sys(() => native.uffdWait(this.fd, wakeFd, out, timeoutMs, spinUs));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    sys(() => native.close(this.fd));
  }

  private wakeQuiet(start: number, length: number): void {
    try {
      this.wake(start, length);
    } catch (e) {
      if (!(e instanceof SysError)) throw e;
    }
  }
}
