// The page source the fault worker uses during postcopy: it cannot own the network connection
// (its loop blocks in poll() on the uffd, with no event loop for TLS), so it forwards each request
// through a RequestRing and an eventfd to the destination's urgent thread, which sends it on the
// urgent channel and places the answer with UFFDIO_COPY (waking the faulting threads).
// Loaded inside the fault worker through a { kind: 'module' } PageSourceSpec.
import type { PageSink, PageSource } from '../../../memory/page-source.js';
import { eventfdSignal } from '../../../sys/fd.js';
import { RequestRing } from './request-ring.js';

export interface RemotePageSourceOptions {
  ring: SharedArrayBuffer;
  eventFd: number;
}

class RemotePageSource implements PageSource {
  readonly pollFds: readonly number[] = [];
  private readonly ring: RequestRing;

  constructor(private readonly opts: RemotePageSourceOptions) {
    this.ring = new RequestRing(opts.ring);
  }

  request(firstPage: number, count: number, _sink: PageSink): void {
    const faultTime = performance.timeOrigin + performance.now();
    while (!this.ring.push(firstPage, count, faultTime)) {
      // Full ring: the main thread is behind; give it a moment (this thread only serves faults).
      eventfdSignal(this.opts.eventFd);
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1);
    }
    eventfdSignal(this.opts.eventFd);
  }

  onReadable(): void {}
  close(): void {}
}

export function createPageSource(options: RemotePageSourceOptions): PageSource {
  return new RemotePageSource(options);
}
