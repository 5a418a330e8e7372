// Loads the ferry_native addon (the only module that does) and declares its exact interface.
// Every function validates its arguments in C and throws an Error with .code (errno name),
// .syscall (the operation) and .errno; see native/ferry_native.c.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Any view the addon can take the address of (a SharedArrayBuffer must be passed as a view). */
export type Bytes = ArrayBufferView | ArrayBuffer;

export interface NativeConstants {
  readonly [name: string]: number;
}

export interface FerryNative {
  readonly constants: NativeConstants;
  bufferAddress(buf: Bytes): number;
  madvise(buf: Bytes, offset: number, length: number, advice: number): void;
  mmapAnonymous(length: number): ArrayBuffer;
  mmapFd(fd: number, offset: number, length: number, shared: boolean): ArrayBuffer;
  memfdCreate(name: string, flags: number): number;
  /** Benchmark reference only: reads every word of every page. */
  countNonZeroPages(buf: Bytes): number;
  uffdCreate(nonblock: boolean, cloexec: boolean): number;
  uffdApi(fd: number, features: number): { features: number; ioctls: bigint };
  uffdRegister(fd: number, start: number, length: number, mode: number): bigint;
  uffdUnregister(fd: number, start: number, length: number): void;
  uffdWake(fd: number, start: number, length: number): void;
  uffdWriteprotect(fd: number, start: number, length: number, mode: number): void;
  /** Bytes filled (>= 0, may be partial), -EEXIST or -EAGAIN; other failures throw. */
  uffdCopy(fd: number, dst: number, src: Bytes, srcOffset: number, length: number, mode: number): number;
  uffdZeropage(fd: number, start: number, length: number, mode: number): number;
  uffdContinue(fd: number, start: number, length: number, mode: number): number;
  /** Events decoded 4 slots each into out: [event, flags, address, arg]; 0 when none queued (no wait). */
  uffdReadEvents(fd: number, out: Float64Array, wait: boolean): number;
  /** [spin on non-blocking reads for spinUs,] poll([uffd, wakeFd]) then read: events (> 0), 0 on timeout, -1 when wakeFd is readable. */
  uffdWait(fd: number, wakeFd: number, out: Float64Array, timeoutMs: number, spinUs: number): number;
  pagemapScan(
    fd: number, start: number, end: number, out: Float64Array, flags: number, categoryInverted: number,
    categoryMask: number, categoryAnyofMask: number, returnMask: number, maxPages: number,
  ): { count: number; walkEnd: number };
  /** Whole-range scan (restarts internally) setting bits of bitmaps[j] for regions matching selectors[j] (0 = all). */
  pagemapScanBits(
    fd: number, start: number, end: number, flags: number, categoryInverted: number, categoryMask: number,
    categoryAnyofMask: number, returnMask: number, bitmaps: Uint32Array[], selectors: Int32Array,
  ): { pages: number; regions: number };
  pagemapRead(fd: number, address: number, out: BigUint64Array): number;
  poll(fds: Int32Array, events: Int32Array, revents: Int32Array, timeoutMs: number): number;
  read(fd: number, buf: Bytes, offset: number, length: number): number;
  pread(fd: number, buf: Bytes, offset: number, length: number, position: number): number;
  write(fd: number, buf: Bytes, offset: number, length: number): number;
  close(fd: number): void;
  dup(fd: number): number;
  setsockoptInt(fd: number, option: number, value: number): void;
  /** A non-blocking, close-on-exec TCP socket with SO_REUSEADDR, bound to a numeric address and listening. */
  /** freebind: IP_FREEBIND before bind (the address need not be on this host yet). */
  tcpListen(family: 4 | 6, address: string, port: number, backlog: number, freebind: boolean): number;
  /** getsockname (peer false) or getpeername (peer true) of an IP socket. */
  sockAddress(fd: number, peer: boolean): { family: 4 | 6; address: string; port: number };
  /** accept4(fd, SOCK_NONBLOCK | SOCK_CLOEXEC); throws EAGAIN when no connection waits. */
  accept(fd: number): number;
  /** recvmsg into the views (scatter); bytes received, 0 at end of stream. */
  recvmsg(fd: number, views: Bytes[], flags: number): number;
  /** sendmsg from the views (gather), always with MSG_NOSIGNAL. */
  sendmsg(fd: number, views: Bytes[], flags: number): number;
  shutdown(fd: number, how: number): void;
  setLinger(fd: number, on: boolean, seconds: number): void;
  /** SO_ERROR: the socket's pending error number (cleared by reading it), 0 for none. */
  socketError(fd: number): number;
  tcpInfo(fd: number, buf: Uint8Array): number;
  schedSetThread(policy: number, value: number): void;
  eventfd(initval: number, flags: number): number;
  fdWatch(fd: number, events: number, cb: (status: number, revents: number) => void): object;
  fdUnwatch(handle: object): void;
  /** CLOCK_MONOTONIC in µs (cheaper than performance.now()). */
  nowUs(): number;
  /** Flushes C stdio and ends the process with _exit(code): no V8 or Node teardown. */
  exitNow(code: number): never;
  /** A new non-blocking, close-on-exec TCP socket (not bound, not connected). */
  tcpSocket(family: 4 | 6): number;
  sockBind(fd: number, family: 4 | 6, address: string, port: number): void;
  /** connect(2); EINPROGRESS is thrown (a socket in TCP_REPAIR connects at once). */
  sockConnect(fd: number, family: 4 | 6, address: string, port: number): void;
  /** getsockopt into buf; the bytes the kernel wrote. */
  getsockoptBytes(fd: number, level: number, name: number, buf: Uint8Array): number;
  setsockoptBytes(fd: number, level: number, name: number, buf: Uint8Array): void;
  /** An ioctl that writes one int (SIOCINQ, SIOCOUTQ, SIOCOUTQNSD). */
  ioctlInt(fd: number, request: number): number;
  /** One datagram on an AF_PACKET SOCK_DGRAM socket to dstMac on the interface; bytes sent. */
  packetSend(ifindex: number, ethertype: number, dstMac: Uint8Array, payload: Uint8Array): number;
  /** One rtnetlink request (NLM_F_ACK set); 0 or the errno its acknowledgement carries. */
  netlinkRoute(message: Uint8Array): number;
}

function addonPath(): string {
  // dist/src/sys/native.js and src/sys/native.ts both sit a fixed depth below the package root.
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const p = join(dir, 'build', 'Release', 'ferry_native.node');
    if (existsSync(p)) return p;
    dir = dirname(dir);
  }
  throw new Error('ferry_native addon not built: run `npx node-gyp rebuild --nodedir=/usr` (or npm ci)');
}

const require = createRequire(import.meta.url);
export const native = require(addonPath()) as FerryNative;

/** Named constant from the addon; throws if the name is unknown (a typo must not become undefined). */
export function K(name: string): number {
  const v = native.constants[name];
  if (v === undefined) throw new Error(`unknown native constant ${name}`);
  return v;
}
