// TCP_REPAIR (linux/tcp.h): the socket options that read and set a TCP connection's hidden state,
// as CRIU uses them. Thin typed wrappers; which to call in what order is src/net/tcp-image.ts.
import { K, native } from './native.js';
import { sys } from './errors.js';

const TCP = K('IPPROTO_TCP');
const TCP_REPAIR = K('TCP_REPAIR');
const TCP_REPAIR_QUEUE = K('TCP_REPAIR_QUEUE');
const TCP_QUEUE_SEQ = K('TCP_QUEUE_SEQ');
const TCP_REPAIR_OPTIONS = K('TCP_REPAIR_OPTIONS');
const TCP_REPAIR_WINDOW = K('TCP_REPAIR_WINDOW');
const TCP_TIMESTAMP = K('TCP_TIMESTAMP');
const TCP_MAXSEG = K('TCP_MAXSEG');
const TCP_INFO = K('TCP_INFO');

export const TCP_RECV_QUEUE = K('TCP_RECV_QUEUE');
export const TCP_SEND_QUEUE = K('TCP_SEND_QUEUE');
export const TCPOPT_MAXSEG = K('TCPOPT_MAXSEG');
export const TCPOPT_WINDOW = K('TCPOPT_WINDOW');
export const TCPOPT_SACK_PERMITTED = K('TCPOPT_SACK_PERMITTED');
export const TCPOPT_TIMESTAMP = K('TCPOPT_TIMESTAMP');

function getU32(fd: number, name: number): number {
  const b = new Uint8Array(4);
  sys(() => native.getsockoptBytes(fd, TCP, name, b));
  return new DataView(b.buffer).getUint32(0, true);
}

function setI32(fd: number, name: number, v: number): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, v | 0, true);
  sys(() => native.setsockoptBytes(fd, TCP, name, b));
}

/** Repair mode on (the socket stops sending; close discards it silently) or off (off-no-probe: -1). */
export function setRepair(fd: number, mode: 'on' | 'off' | 'off-no-window-probe'): void {
  setI32(fd, TCP_REPAIR, mode === 'on' ? K('TCP_REPAIR_ON') : mode === 'off' ? K('TCP_REPAIR_OFF') : K('TCP_REPAIR_OFF_NO_WP'));
}

/** Which queue TCP_QUEUE_SEQ, peeking recv and repair-mode send act on. */
export function setRepairQueue(fd: number, queue: number): void {
  setI32(fd, TCP_REPAIR_QUEUE, queue);
}

/** The selected queue's sequence number: write_seq (send) or rcv_nxt (receive). */
export function queueSeq(fd: number): number {
  return getU32(fd, TCP_QUEUE_SEQ);
}

/** Sets the selected queue's sequence number (only on a socket not yet connected). */
export function setQueueSeq(fd: number, seq: number): void {
  setI32(fd, TCP_QUEUE_SEQ, seq);
}

/** Bytes queued: 'in' unread, 'out' sent-unacknowledged plus unsent, 'unsent' not yet sent. */
export function queuedBytes(fd: number, which: 'in' | 'out' | 'unsent'): number {
  const req = which === 'in' ? K('SIOCINQ') : which === 'out' ? K('SIOCOUTQ') : K('SIOCOUTQNSD');
  return sys(() => native.ioctlInt(fd, req));
}

/** Sets negotiated options on a repaired (connected) socket: struct tcp_repair_opt {u32 code, u32 value}[]. */
export function setRepairOptions(fd: number, options: Array<{ code: number; value: number }>): void {
  const b = new Uint8Array(options.length * 8);
  const v = new DataView(b.buffer);
  options.forEach((o, i) => {
    v.setUint32(i * 8, o.code, true);
    v.setUint32(i * 8 + 4, o.value >>> 0, true);
  });
  sys(() => native.setsockoptBytes(fd, TCP, TCP_REPAIR_OPTIONS, b));
}

/** struct tcp_repair_window. */
export interface RepairWindow {
  sndWl1: number;
  sndWnd: number;
  maxWindow: number;
  rcvWnd: number;
  rcvWup: number;
}
const WINDOW_FIELDS = ['sndWl1', 'sndWnd', 'maxWindow', 'rcvWnd', 'rcvWup'] as const;

export function repairWindow(fd: number): RepairWindow {
  const b = new Uint8Array(20);
  const got = sys(() => native.getsockoptBytes(fd, TCP, TCP_REPAIR_WINDOW, b));
  if (got !== 20) throw new Error(`TCP_REPAIR_WINDOW: ${got} bytes, expected 20`);
  const v = new DataView(b.buffer);
  return Object.fromEntries(WINDOW_FIELDS.map((k, i) => [k, v.getUint32(i * 4, true)])) as unknown as RepairWindow;
}

export function setRepairWindow(fd: number, w: RepairWindow): void {
  const b = new Uint8Array(20);
  const v = new DataView(b.buffer);
  WINDOW_FIELDS.forEach((k, i) => v.setUint32(i * 4, w[k] >>> 0, true));
  sys(() => native.setsockoptBytes(fd, TCP, TCP_REPAIR_WINDOW, b));
}

/** The TCP timestamp clock the socket sends now (the host's clock plus its offset). */
export function tcpTimestamp(fd: number): number {
  return getU32(fd, TCP_TIMESTAMP);
}

/** In repair mode: the offset such that the socket's timestamp clock reads `ts` now. */
export function setTcpTimestamp(fd: number, ts: number): void {
  setI32(fd, TCP_TIMESTAMP, ts);
}

export function maxSegment(fd: number): number {
  return getU32(fd, TCP_MAXSEG);
}

/** From TCP_INFO (struct tcp_info: u8 at 5 tcpi_options, u8 at 6 snd_wscale:4 | rcv_wscale:4). */
export interface NegotiatedOptions {
  timestamps: boolean;
  sack: boolean;
  windowScale: { snd: number; rcv: number } | null;
  /** tcpi_state: 1 is ESTABLISHED (TCP_ESTABLISHED in the kernel's enum). */
  state: number;
}

export function negotiatedOptions(fd: number): NegotiatedOptions {
  const b = new Uint8Array(8);
  sys(() => native.getsockoptBytes(fd, TCP, TCP_INFO, b));
  const opts = b[5]!;
  // TCPI_OPT_TIMESTAMPS 1, TCPI_OPT_SACK 2, TCPI_OPT_WSCALE 4
  return {
    state: b[0]!,
    timestamps: (opts & 1) !== 0,
    sack: (opts & 2) !== 0,
    windowScale: opts & 4 ? { snd: b[6]! & 0xf, rcv: b[6]! >> 4 } : null,
  };
}

const SOL_SOCKET = K('SOL_SOCKET');

/** A new non-blocking, close-on-exec TCP socket, neither bound nor connected. */
export function tcpSocket(family: 4 | 6): number {
  return sys(() => native.tcpSocket(family));
}

export function bindTo(fd: number, family: 4 | 6, address: string, port: number): void {
  sys(() => native.sockBind(fd, family, address, port));
}

/**
 * IP_TRANSPARENT (CAP_NET_ADMIN, as TCP_REPAIR): the socket may bind to, connect from and send
 * from an address this host does not hold (yet). IP_FREEBIND would allow the bind only: connect
 * then finds no route from a foreign source (ENETUNREACH).
 */
export function setTransparent(fd: number, on: boolean): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, on ? 1 : 0, true);
  sys(() => native.setsockoptBytes(fd, K('IPPROTO_IP'), K('IP_TRANSPARENT'), b));
}

/** connect(2): at once for a socket in repair mode (no handshake); otherwise throws EINPROGRESS. */
export function connectTo(fd: number, family: 4 | 6, address: string, port: number): void {
  sys(() => native.sockConnect(fd, family, address, port));
}

/** SO_SNDBUF or SO_RCVBUF as getsockopt reports it (the kernel's doubled value). */
export function socketBuffer(fd: number, which: 'send' | 'receive'): number {
  const b = new Uint8Array(4);
  sys(() => native.getsockoptBytes(fd, SOL_SOCKET, K(which === 'send' ? 'SO_SNDBUF' : 'SO_RCVBUF'), b));
  return new DataView(b.buffer).getInt32(0, true);
}

/** SO_SNDBUFFORCE / SO_RCVBUFFORCE (CAP_NET_ADMIN; may exceed wmem_max/rmem_max; the kernel doubles it). */
export function forceSocketBuffer(fd: number, which: 'send' | 'receive', bytes: number): void {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setInt32(0, bytes, true);
  sys(() => native.setsockoptBytes(fd, SOL_SOCKET, K(which === 'send' ? 'SO_SNDBUFFORCE' : 'SO_RCVBUFFORCE'), b));
}
