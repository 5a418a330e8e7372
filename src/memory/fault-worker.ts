// The fault-serving loop, on its own worker thread. It never touches guest memory (a touch on a hole
// would block the very thread that fills holes): it only reads uffd events, consults the page-state
// table, asks the page source, and places pages with UFFDIO_COPY / UFFDIO_ZEROPAGE.
import { parentPort } from 'node:worker_threads';
import { workerInit } from '../sys/spare-threads.js';
import { preferLatency } from '../sys/sched.js';
import { Userfaultfd, EVENT, EVENT_SLOTS, FILL_EEXIST } from '../sys/uffd.js';
import { native } from '../sys/native.js';
import { Poller, POLLIN, eventfdDrain } from '../sys/fd.js';
import { PageStateTable, PageState, type SharedPageStates } from './page-state.js';
import { openPageSource, type PageSink, type PageSourceSpec } from './page-source.js';
import { STAT, STAT_SLOTS, LATENCY_RING } from './fault-stats.js';
import { HOST_PAGE_SIZE } from './guest-memory.js';

export interface FaultWorkerData {
  uffd: number;
  wakeFd: number;
  base: number;
  maxBytes: number;
  states: SharedPageStates;
  stats: SharedArrayBuffer;
  latencies: SharedArrayBuffer;
  control: SharedArrayBuffer; // Int32Array [stop]
  source: PageSourceSpec;
  faultAround: number;
  spinUs: number;
}

async function main(): Promise<void> {
  const d = await workerInit<FaultWorkerData>();
  const uffd = Userfaultfd.attach(d.uffd);
  const states = PageStateTable.fromShared(d.states);
  const stats = new Float64Array(d.stats, 0, STAT_SLOTS);
  const lat = new Float64Array(d.latencies);
  const stop = new Int32Array(d.control);
  const source = await openPageSource(d.source);
  preferLatency(); // a guest thread is blocked every time this one wakes
  const pageCount = d.maxBytes / HOST_PAGE_SIZE;
  // Hot path: plain typed arrays and direct addon calls (no wrappers, no allocation per fault); the
  // addon's own errors still carry code/syscall and end the worker loudly (see the catch below).
  const stateBytes = new Uint8Array(d.states.states, 0, pageCount);
  const inflight = new Float64Array(pageCount).fill(-1); // page -> time its first fault was read (µs), -1 = none
  const fd = d.uffd;

  const record = (t0: number, now: number) => {
    const n = stats[STAT.LATENCY_COUNT]!;
    lat[n % LATENCY_RING] = now - t0;
    stats[STAT.LATENCY_COUNT] = n + 1;
  };

  // Whether the last batch resumed a thread here (a local fill, a wake, a local source's page):
  // only then is its next fault due within microseconds and worth spinning for. After a request
  // to a remote source the faulting thread stays blocked for a round trip, and a spin would only
  // take a core from the threads bringing its page (this one runs real-time).
  let servedLocally = false;
  const sink: PageSink = {
    place(firstPage, count, bytes, offset) {
      if (!(firstPage >= 0 && firstPage + count <= pageCount)) throw new RangeError(`page source placed pages [${firstPage}, ${firstPage + count}) outside the reservation`);
      // States first: once copied, the guest runs again and may look at the table or the counters.
      for (let p = firstPage; p < firstPage + count; p++) states.markReceived(p);
      stats[STAT.PAGES_PLACED] = stats[STAT.PAGES_PLACED]! + count;
      const dst = d.base + firstPage * HOST_PAGE_SIZE;
      const len = count * HOST_PAGE_SIZE;
      const r = native.uffdCopy(fd, dst, bytes, offset, len, 0);
      if (r !== len) {
        // partial, EEXIST (a racing place()) or EAGAIN: finish page by page
        const done = r > 0 ? r : 0;
        const rest = uffd.copyAll(dst + done, bytes, offset + done, len - done);
        if (rest.existed) {
          stats[STAT.PAGES_PLACED] = stats[STAT.PAGES_PLACED]! - rest.existed;
          stats[STAT.EEXIST] = stats[STAT.EEXIST]! + rest.existed;
        }
      }
      servedLocally = true; // a local source answers at once: the thread runs on now
      const now = native.nowUs();
      for (let p = firstPage; p < firstPage + count; p++) {
        const t0 = inflight[p]!;
        if (t0 >= 0) { record(t0, now); inflight[p] = -1; }
      }
    },
  };

  const onFault = (address: number, t0: number) => {
    const page = Math.floor((address - d.base) / HOST_PAGE_SIZE);
    const pageAddr = d.base + page * HOST_PAGE_SIZE;
    stats[STAT.FAULTS] = stats[STAT.FAULTS]! + 1;
    switch (Atomics.load(stateBytes, page)) {
      case PageState.KNOWN_ZERO: {
        // Never leaves the machine. EEXIST: another thread's fault on it was already served.
        // (Counters are updated before the fill: the fill resumes the guest, and tests read them right after.)
        stats[STAT.ZERO_FILLS] = stats[STAT.ZERO_FILLS]! + 1;
        if (native.uffdZeropage(fd, pageAddr, HOST_PAGE_SIZE, 0) === FILL_EEXIST) native.uffdWake(fd, pageAddr, HOST_PAGE_SIZE);
        record(t0, native.nowUs());
        servedLocally = true;
        return;
      }
      case PageState.RECEIVED:
        // Placed between the fault and now (place() from another thread): the copy woke most waiters; wake the rest.
        stats[STAT.WAKES] = stats[STAT.WAKES]! + 1;
        native.uffdWake(fd, pageAddr, HOST_PAGE_SIZE);
        servedLocally = true;
        return;
      default: {
        if (inflight[page]! >= 0) { stats[STAT.DEDUPED] = stats[STAT.DEDUPED]! + 1; return; }
        let count = 1;
        while (count < d.faultAround && page + count < pageCount && Atomics.load(stateBytes, page + count) === PageState.PENDING &&
          inflight[page + count]! < 0) count++;
        for (let p = page; p < page + count; p++) inflight[p] = t0;
        stats[STAT.REQUESTS] = stats[STAT.REQUESTS]! + 1;
        source.request(page, count, sink);
      }
    }
  };

  const events = new Float64Array(64 * EVENT_SLOTS);
  const handle = (n: number) => {
    const t0 = native.nowUs();
    servedLocally = false;
    for (let i = 0; i < n; i++) {
      const o = i * EVENT_SLOTS;
      if (events[o] === EVENT.PAGEFAULT) onFault(events[o + 2]!, t0);
    }
  };

  parentPort!.postMessage({ type: 'ready' });
  const extra = source.pollFds;
  if (extra.length === 0) {
    // Fast path: one native call per wakeup (poll on [uffd, wakeFd] + read).
    for (;;) {
      const n = native.uffdWait(fd, d.wakeFd, events, -1, servedLocally ? d.spinUs : 0);
      if (n < 0) { eventfdDrain(d.wakeFd); if (Atomics.load(stop, 0)) break; continue; }
      handle(n);
    }
  } else {
    const poller = new Poller([d.uffd, d.wakeFd, ...extra], [POLLIN, POLLIN, ...extra.map(() => POLLIN)]);
    for (;;) {
      poller.wait(-1);
      if (poller.revents[1]) { eventfdDrain(d.wakeFd); if (Atomics.load(stop, 0)) break; }
      for (let i = 0; i < extra.length; i++) if (poller.revents[i + 2]) source.onReadable(extra[i]!, sink);
      if (poller.revents[0]) handle(uffd.readEvents(events, false));
    }
  }
  source.close();
  parentPort!.postMessage({ type: 'stopped' });
}

main().catch((e: unknown) => {
  // A dead fault server leaves faulting threads blocked: report loudly to the owner.
  parentPort!.postMessage({ type: 'error', message: e instanceof Error ? e.stack ?? e.message : String(e) });
  process.exitCode = 1;
});
