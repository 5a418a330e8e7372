// The destination's urgent channel, on a thread of its own. The listener hands it each urgent
// connection as a raw socket right after the preface; this thread makes the TLS session and the
// HELLO exchange, and tells the main thread which session the connection belongs to. Once the
// main thread names the session's connection (`use`) and the guest runs (`activate`), it:
//  - takes the fault worker's page requests from the RequestRing (woken by its eventfd) and sends
//    them at once as PAGE_REQUEST;
//  - checks each answer and places it with UFFDIO_COPY (PagePlacer), which wakes the guest.
// So a faulting guest waits for one network round trip and this thread's own work, never for the
// main thread, which meanwhile decrypts and places the bulk stream.
// This thread never touches guest memory: page bytes go from the socket's buffers to the kernel.
import net from 'node:net';
import { parentPort, workerData } from 'node:worker_threads';
import { HOST_PAGE_SIZE } from '../../../memory/guest-memory.js';
import { FdWatcher, POLLIN, close, eventfdDrain } from '../../../sys/fd.js';
import { ChannelAcceptor, type FramedChannel, reviveSecurity, type Security } from '../../transport/index.js';
import { GO_AHEAD, PageFrameChecker, type MessageOf } from '../../wire/index.js';
import { PagePlacer, type PlacerShared } from '../page-placer.js';
import { RequestRing } from './request-ring.js';
import { preferLatency } from '../../../sys/sched.js';

export interface UrgentRequesterData {
  security: Security;
  /** Float64 [bytes sent, bytes received] over every connection this thread held. */
  counters: SharedArrayBuffer;
}

export type UrgentRequesterCommand =
  /** A handed-off urgent connection, with what is left of its handshake deadline. */
  | { type: 'socket'; fd: number; peer: string; timeoutMs: number }
  | {
      // Once the migration is set up (the memory exists): where pages go and requests come from.
      type: 'setup';
      placer: PlacerShared;
      /** The guest's maximum and the pages-seen bitmap shared with the bulk channel's checker. */
      checker: { maxBytes: number; seen: SharedArrayBuffer };
      ring: SharedArrayBuffer;
      /** Signalled by the fault worker after each request it puts in the ring. */
      ringFd: number;
    }
  | { type: 'use'; conn: number }
  | { type: 'drop'; conn: number }
  | { type: 'activate'; pageCount: number }
  | { type: 'close' };

export type UrgentRequesterEvent =
  | { type: 'hello'; conn: number; peer: string; hello: MessageOf<'HELLO'> }
  | { type: 'rejected'; peer: string; code: string; message: string }
  | { type: 'placed'; pages: number; latenciesUs: number[] }
  | { type: 'lost'; conn: number; message: string };

const d = workerData as UrgentRequesterData;
// The guest is blocked whenever this thread has work: it must run the moment it wakes, not after
// the time slice of the main thread decrypting the bulk stream on a busy core.
preferLatency();
const post = (e: UrgentRequesterEvent) => parentPort!.postMessage(e);
const acceptor = new ChannelAcceptor({ security: reviveSecurity(d.security) });
let setup: { placer: PagePlacer; ring: RequestRing; ringFd: number; maxBytes: number; seen: SharedArrayBuffer; watcher: FdWatcher } | null = null;
/** Made at the commit, for the memory size then: postcopy pages lie below it. */
let checker: PageFrameChecker | null = null;
const counters = new Float64Array(d.counters);

const conns = new Map<number, FramedChannel>();
let nextConn = 1;
/** The session's connection (`use`), or null between a loss and the next reconnection. */
let current: FramedChannel | null = null;
let pageCount = 0; // pages at the commit; 0 until `activate`
let priorSent = 0;
let priorReceived = 0;
let closing = false;

const publish = () => {
  let sent = priorSent;
  let received = priorReceived;
  for (const c of conns.values()) {
    sent += c.bytesSent;
    received += c.bytesReceived;
  }
  counters[0] = sent;
  counters[1] = received;
};

function forget(conn: number): void {
  const c = conns.get(conn);
  if (!c) return;
  priorSent += c.bytesSent;
  priorReceived += c.bytesReceived;
  conns.delete(conn);
  c.destroy();
  if (current === c) current = null;
  publish();
}

function request(first: number, count: number): void {
  if (!current || current.closed) return; // asked again on the next connection
  current.sendMessage({ type: 'PAGE_REQUEST', offset: first * HOST_PAGE_SIZE, count }).catch(() => undefined);
}

/** The fault worker's requests: note each page's fault time, then ask for the run. */
function forwardRequests(): void {
  if (!setup) return;
  const { placer, ring, ringFd } = setup;
  try {
    eventfdDrain(ringFd);
  } catch {
    /* spurious wake */
  }
  if (pageCount === 0) return; // before the commit nothing faults; stray entries wait for activate
  ring.drain((first, count, faultTime) => {
    const faultUs = BigInt(Math.round(faultTime * 1000));
    let asked = false;
    for (let p = first; p < first + count; p++) asked = placer.noteRequest(p, faultUs) || asked;
    if (asked) request(first, count);
  });
  publish();
}

/** A new connection's first job: ask again for every page still awaited (the old one may have lost them). */
function askAgain(): void {
  if (!setup) return;
  const waiting = setup.placer.requestedPages(pageCount);
  for (let i = 0; i < waiting.length; ) {
    let j = i + 1;
    while (j < waiting.length && waiting[j] === waiting[j - 1]! + 1 && j - i < 256) j++;
    request(waiting[i]!, j - i);
    i = j;
  }
}

async function serve(conn: number, channel: FramedChannel): Promise<void> {
  try {
    for (;;) {
      const r = await channel.recvWithOffset();
      if (!r) throw new Error('the source closed the urgent channel');
      if (r.msg.type !== 'PAGES') throw new Error(`unexpected ${r.msg.type} on the urgent channel`);
      if (!checker || !setup) throw new Error(`pages on the urgent channel before the commit (frame at byte ${r.offset})`);
      checker.checkPages(r.msg, r.offset);
      if (r.msg.kind !== 'data' || !r.msg.data) throw new Error(`postcopy pages must carry data (frame at byte ${r.offset})`);
      const { placed, latenciesUs } = setup.placer.place(r.msg);
      publish();
      post({ type: 'placed', pages: placed, latenciesUs });
    }
  } catch (err) {
    if (!conns.has(conn) || closing) return; // dropped or closed on purpose
    const message = err instanceof Error ? err.message : String(err);
    forget(conn);
    post({ type: 'lost', conn, message });
  }
}

function onSocket(fd: number, peer: string, timeoutMs: number): void {
  let tcp: net.Socket;
  try {
    tcp = new net.Socket({ fd, readable: true, writable: true });
  } catch (err) {
    try {
      close(fd);
    } catch {
      /* already gone */
    }
    post({ type: 'rejected', peer, code: 'IO', message: `could not take the urgent connection: ${(err as Error).message}` });
    return;
  }
  tcp.setNoDelay(true);
  tcp.write(Buffer.from([GO_AHEAD]));
  acceptor.accept(tcp, 'urgent', timeoutMs).then(
    ({ channel, hello }) => {
      const conn = nextConn++;
      conns.set(conn, channel);
      void serve(conn, channel);
      post({ type: 'hello', conn, peer, hello });
    },
    (err: unknown) => {
      const e = err as { code?: unknown; message?: unknown };
      post({ type: 'rejected', peer, code: typeof e.code === 'string' ? e.code : 'IO', message: String(e.message ?? err) });
    },
  );
}

parentPort!.on('message', (m: UrgentRequesterCommand) => {
  switch (m.type) {
    case 'socket':
      onSocket(m.fd, m.peer, m.timeoutMs);
      break;
    case 'setup':
      setup = {
        placer: new PagePlacer(m.placer),
        ring: new RequestRing(m.ring),
        ringFd: m.ringFd,
        maxBytes: m.checker.maxBytes,
        seen: m.checker.seen,
        watcher: new FdWatcher(m.ringFd, POLLIN, () => forwardRequests()),
      };
      break;
    case 'use':
      current = conns.get(m.conn) ?? null;
      // Lost between its HELLO and its pairing: say so now, or requests would go nowhere.
      if (!current) return post({ type: 'lost', conn: m.conn, message: 'the connection was lost before it was used' });
      if (pageCount > 0) askAgain();
      forwardRequests();
      break;
    case 'drop':
      forget(m.conn);
      break;
    case 'activate':
      pageCount = m.pageCount;
      if (setup) checker = new PageFrameChecker({ bytes: m.pageCount * HOST_PAGE_SIZE, maxBytes: setup.maxBytes }, setup.seen);
      forwardRequests();
      break;
    case 'close':
      closing = true;
      setup?.watcher.stop();
      if (setup) close(setup.ringFd);
      void Promise.all([...conns.values()].map((c) => c.close().catch(() => undefined))).then(() => {
        publish();
        parentPort!.close(); // the thread exits: UrgentRequests.close() waits for that
      });
      break;
  }
});
