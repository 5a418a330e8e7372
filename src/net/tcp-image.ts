// One established TCP connection as data, and back: the hidden state TCP_REPAIR exposes (sequence
// numbers, the unacknowledged and unsent send queue, the unread receive queue, negotiated options,
// window, timestamp clock), so that a socket made on another host continues the same connection.
// The order of the calls is the kernel's (CRIU's libsoccr does the same): queue sequence numbers
// only before connect, options and window only after, queue data in repair mode, unsent data
// after it. Addresses are the caller's business: the local one must exist where a restore runs.
import { close as closeFd } from '../sys/fd.js';
import { isAgain } from '../sys/errors.js';
import { MSG_PEEK, recvmsg, sendmsg, sockAddress } from '../sys/socket.js';
import {
  bindTo, connectTo, forceSocketBuffer, setTransparent, socketBuffer, tcpSocket,
  TCPOPT_MAXSEG, TCPOPT_SACK_PERMITTED, TCPOPT_TIMESTAMP, TCPOPT_WINDOW, TCP_RECV_QUEUE, TCP_SEND_QUEUE,
  maxSegment, negotiatedOptions, queueSeq, queuedBytes, repairWindow, setQueueSeq, setRepair, setRepairOptions,
  setRepairQueue, setRepairWindow, setTcpTimestamp, tcpTimestamp, type RepairWindow,
} from '../sys/tcp-repair.js';

const TCP_ESTABLISHED = 1;

export interface TcpImage {
  family: 4 | 6;
  local: { address: string; port: number };
  peer: { address: string; port: number };
  /** Sequence number of the first byte of `sendQueue` (snd_una). */
  sendSeq: number;
  /** Bytes of the send queue: the first `sentBytes` were sent and wait for their ACK, the rest was never sent. */
  sendQueue: string;
  sentBytes: number;
  /** Sequence number of the first byte of `recvQueue` (rcv_nxt minus what the application has not read). */
  recvSeq: number;
  /** Bytes received and acknowledged that the application has not read yet. */
  recvQueue: string;
  mss: number;
  windowScale: { snd: number; rcv: number } | null;
  sack: boolean;
  /** The timestamp clock the peer saw, or null if timestamps were not negotiated. */
  timestamp: number | null;
  window: RepairWindow;
  /** SO_SNDBUF and SO_RCVBUF as getsockopt reports them (the kernel's doubled values). */
  sndbuf: number;
  rcvbuf: number;
}

function peek(fd: number, queue: number, bytes: number): Buffer {
  setRepairQueue(fd, queue);
  const out = Buffer.alloc(bytes);
  let got = 0;
  // The socket is non-blocking: MSG_PEEK alone never waits.
  if (bytes > 0) got = recvmsg(fd, [out], MSG_PEEK);
  if (got !== bytes) throw new Error(`TCP repair: the ${queue === TCP_SEND_QUEUE ? 'send' : 'receive'} queue holds ${bytes} bytes, read ${got}`);
  return out;
}

/**
 * Reads a connection's state. The socket must be in repair mode already (setRepair 'on': it sends
 * nothing more) and should receive nothing more (its address gone or its packets held), or bytes
 * that arrive after the read are acknowledged and lost.
 */
export function dumpTcp(fd: number): TcpImage {
  const opts = negotiatedOptions(fd);
  if (opts.state !== TCP_ESTABLISHED) throw new Error(`TCP repair: the connection is in state ${opts.state}, not established`);
  const local = sockAddress(fd, false);
  const peer = sockAddress(fd, true);
  const outq = queuedBytes(fd, 'out');
  const unsent = queuedBytes(fd, 'unsent');
  const inq = queuedBytes(fd, 'in');
  const sendQueue = peek(fd, TCP_SEND_QUEUE, outq);
  const writeSeq = queueSeq(fd);
  const recvQueue = peek(fd, TCP_RECV_QUEUE, inq);
  const rcvNxt = queueSeq(fd);
  return {
    family: local.family,
    local: { address: local.address, port: local.port },
    peer: { address: peer.address, port: peer.port },
    sendSeq: (writeSeq - outq) >>> 0,
    sendQueue: sendQueue.toString('base64'),
    sentBytes: outq - unsent,
    recvSeq: (rcvNxt - inq) >>> 0,
    recvQueue: recvQueue.toString('base64'),
    mss: maxSegment(fd),
    windowScale: opts.windowScale,
    sack: opts.sack,
    timestamp: opts.timestamps ? tcpTimestamp(fd) : null,
    window: repairWindow(fd),
    sndbuf: socketBuffer(fd, 'send'),
    rcvbuf: socketBuffer(fd, 'receive'),
  };
}

/** Writes `data` into the selected queue of a socket in repair mode (no transmission). */
function fillQueue(fd: number, queue: number, data: Buffer): void {
  setRepairQueue(fd, queue);
  writeAll(fd, data, queue === TCP_SEND_QUEUE ? 'send' : 'receive');
}

/**
 * Writes all of `data` with non-blocking sendmsg. The same bytes may take more buffer memory here
 * than on the source (the kernel counts each buffer's overhead, and segments here need not be cut
 * as they were there), so a full buffer (EAGAIN) grows it, twice as large each time, rather than
 * fail: the bytes are the guest's, and after the commit there is nowhere else for them to go.
 */
function writeAll(fd: number, data: Buffer, buffer: 'send' | 'receive', queued = 0): void {
  let at = 0;
  // How far the buffer may grow: the kernel counts each queued segment's whole allocation, and the
  // queue already holds the bytes in flight, so what a queue needs is a multiple of its bytes that
  // depends on where the buffer started and how the bytes were cut up — hence a bound by size, not
  // by a number of doublings (a count of 6 failed a 4 MiB queue that started at a 72 KiB buffer).
  // `queued`: bytes the queue holds already (resumeTcp's, sent before the move), which count too.
  const limit = BUFFER_GROWTH_FACTOR * (queued + data.length) + BUFFER_GROWTH_SLACK;
  while (at < data.length) {
    let n: number;
    try {
      n = sendmsg(fd, [data.subarray(at)]);
    } catch (err) {
      const size = socketBuffer(fd, buffer);
      if (!isAgain(err) || size >= limit) throw err;
      forceSocketBuffer(fd, buffer, size); // the kernel doubles it again
      if (socketBuffer(fd, buffer) <= size) throw err; // it cannot grow further: no use trying again
      continue;
    }
    if (n <= 0) throw new Error(`TCP repair: the ${buffer} queue took ${at} of ${data.length} bytes`);
    at += n;
  }
}

/** writeAll doubles a full buffer until it is this many times the bytes to write (plus the slack). */
const BUFFER_GROWTH_FACTOR = 8;
const BUFFER_GROWTH_SLACK = 1 << 20;


/**
 * Makes the connection of `image` on this host: a socket in repair mode, connected without a
 * handshake, with its queues, options, window and timestamp clock. It is left in repair mode
 * (it sends nothing yet) with its unsent bytes not queued: `resumeTcp` finishes it. The local
 * address must be on this host, unless `foreign` (IP_TRANSPARENT: it comes right after; resumeTcp
 * clears it). A socket in repair mode may share the port with a listener.
 */
export function restoreTcp(image: TcpImage, foreign = false): number {
  const fd = tcpSocket(image.family);
  try {
    setRepair(fd, 'on');
    setRepairQueue(fd, TCP_RECV_QUEUE);
    setQueueSeq(fd, image.recvSeq);
    setRepairQueue(fd, TCP_SEND_QUEUE);
    setQueueSeq(fd, image.sendSeq);
    // Buffers at least as large as the source's, so the queues fit (FORCE: above rmem_max, as the
    // source's autotuning may have gone). This fixes them: the kernel no longer autotunes them.
    const send = Buffer.from(image.sendQueue, 'base64');
    const recv = Buffer.from(image.recvQueue, 'base64');
    if (send.length > 0) forceSocketBuffer(fd, 'send', Math.ceil(image.sndbuf / 2));
    if (recv.length > 0) forceSocketBuffer(fd, 'receive', Math.ceil(image.rcvbuf / 2));
    if (foreign) setTransparent(fd, true);
    bindTo(fd, image.family, image.local.address, image.local.port);
    connectTo(fd, image.family, image.peer.address, image.peer.port);
    const options = [{ code: TCPOPT_MAXSEG, value: image.mss }];
    if (image.windowScale) options.push({ code: TCPOPT_WINDOW, value: image.windowScale.snd | (image.windowScale.rcv << 16) });
    if (image.sack) options.push({ code: TCPOPT_SACK_PERMITTED, value: 0 });
    if (image.timestamp !== null) options.push({ code: TCPOPT_TIMESTAMP, value: 0 });
    setRepairOptions(fd, options);
    if (image.timestamp !== null) setTcpTimestamp(fd, image.timestamp);
    fillQueue(fd, TCP_SEND_QUEUE, send.subarray(0, image.sentBytes));
    fillQueue(fd, TCP_RECV_QUEUE, recv);
    setRepairWindow(fd, image.window);
    return fd;
  } catch (err) {
    closeFd(fd); // in repair mode: gone without a packet
    throw err;
  }
}

/**
 * Takes a restored socket out of repair mode (it sends a window probe, so the peer learns the
 * connection is alive here) and queues the bytes the source never sent. Clears IP_TRANSPARENT.
 */
export function resumeTcp(fd: number, image: TcpImage): void {
  // Its address is here now: an ordinary socket again, which can no longer send from an address
  // this host gave up (a later move away releases it before the freeze).
  setTransparent(fd, false);
  setRepair(fd, 'off');
  writeAll(fd, Buffer.from(image.sendQueue, 'base64').subarray(image.sentBytes), 'send', image.sentBytes);
}

