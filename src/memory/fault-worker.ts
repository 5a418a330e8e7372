// The fault-serving loop, on its own worker thread. It never touches guest memory (a touch on a hole
// would block the very thread that fills holes): it only reads uffd events, consults the page-state
// table, asks the page source, and places pages with UFFDIO_COPY / UFFDIO_ZEROPAGE.
import { workerData, parentPort } from 'node:worker_threads';
import { performance } from 'node:perf_hooks';
import { Userfaultfd, EVENT, EVENT_SLOTS, FILL_EEXIST } from '../sys/uffd.js';
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
  const d = workerData as FaultWorkerData;
  const uffd = Userfaultfd.attach(d.uffd);
  const states = PageStateTable.fromShared(d.states);
  const stats = new Float64Array(d.stats, 0, STAT_SLOTS);
  const lat = new Float64Array(d.latencies);
  const stop = new Int32Array(d.control);
  const source = await openPageSource(d.source);
  const pageCount = d.maxBytes / HOST_PAGE_SIZE;
  const inflight = new Map<number, number>(); // page -> time its first fault was read (ms)

  const record = (t0: number, now: number) => {
    const n = stats[STAT.LATENCY_COUNT]!;
    lat[n % LATENCY_RING] = (now - t0) * 1000;
    stats[STAT.LATENCY_COUNT] = n + 1;
  };

  const sink: PageSink = {
    place(firstPage, count, bytes, offset) {
      // States first: once copied, the guest runs again and may look at the table or the counters.
      for (let p = firstPage; p < firstPage + count; p++) states.markReceived(p);
      stats[STAT.PAGES_PLACED] = stats[STAT.PAGES_PLACED]! + count;
      const r = uffd.copyAll(d.base + firstPage * HOST_PAGE_SIZE, bytes, offset, count * HOST_PAGE_SIZE);
      const now = performance.now();
      if (r.existed) {
        stats[STAT.PAGES_PLACED] = stats[STAT.PAGES_PLACED]! - r.existed;
        stats[STAT.EEXIST] = stats[STAT.EEXIST]! + r.existed;
      }
      for (let p = firstPage; p < firstPage + count; p++) {
        const t0 = inflight.get(p);
        if (t0 !== undefined) { record(t0, now); inflight.delete(p); }
      }
    },
  };

  const onFault = (address: number, t0: number) => {
    const page = Math.floor((address - d.base) / HOST_PAGE_SIZE);
    const pageAddr = d.base + page * HOST_PAGE_SIZE;
    stats[STAT.FAULTS] = stats[STAT.FAULTS]! + 1;
    switch (states.get(page)) {
      case PageState.KNOWN_ZERO: {
        // Never leaves the machine. EEXIST: another thread's fault on it was already served.
        // (Counters are updated before the fill: the fill resumes the guest, and tests read them right after.)
        stats[STAT.ZERO_FILLS] = stats[STAT.ZERO_FILLS]! + 1;
        if (uffd.zeropage(pageAddr, HOST_PAGE_SIZE) === FILL_EEXIST) uffd.wake(pageAddr, HOST_PAGE_SIZE);
        record(t0, performance.now());
        return;
      }
      case PageState.RECEIVED:
        // Placed between the fault and now (place() from another thread): the copy woke most waiters; wake the rest.
        stats[STAT.WAKES] = stats[STAT.WAKES]! + 1;
        uffd.wake(pageAddr, HOST_PAGE_SIZE);
        return;
      default: {
        if (inflight.has(page)) { stats[STAT.DEDUPED] = stats[STAT.DEDUPED]! + 1; return; }
        let count = 1;
        while (count < d.faultAround && page + count < pageCount && states.get(page + count) === PageState.PENDING &&
          !inflight.has(page + count)) count++;
        for (let p = page; p < page + count; p++) inflight.set(p, t0);
        stats[STAT.REQUESTS] = stats[STAT.REQUESTS]! + 1;
        source.request(page, count, sink);
      }
    }
  };

  const events = new Float64Array(64 * EVENT_SLOTS);
  const handle = (n: number) => {
    const t0 = performance.now();
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
      const n = uffd.waitEvents(d.wakeFd, events, -1, d.spinUs);
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
