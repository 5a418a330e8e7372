// A connection carrying Ferry frames. Sends keep frame order, honour backpressure and an optional
// bandwidth cap; receives decode the stream into typed messages. Byte counters come from the
// underlying TCP socket, so under TLS they include record and handshake overhead.
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { TLSSocket } from 'node:tls';
import { FrameDecoder, type Frame } from '../wire/frame.js';
import { WireError } from '../wire/errors.js';
import { MAX_FRAME_PAYLOAD, PAGE_SIZE } from '../wire/limits.js';
import { decodeMessage, encodeDiscardRuns, encodeMessage, encodePages, type ChannelKind, type Message, type MessageOf, type PageKind } from '../wire/messages.js';
import { frameTypeName } from '../wire/types.js';
import { TransportError, fromSocketError } from './errors.js';
import { TokenBucket } from './token-bucket.js';
import { SO_RCVBUF, SO_SNDBUF, setSocketBuffer, tcpPathInfo, type TcpPathInfo } from '../../sys/socket.js';

export interface ChannelSession {
  /** 16 random bytes chosen by the connecting side; hex for use as a map key. */
  sessionId: Buffer;
  sessionHex: string;
  channel: ChannelKind;
  /** Feature bits both sides agreed on (HELLO features & listener features). */
  features: number;
}

export interface FramedChannelOptions {
  /** What frames are written to and read from: the TLS socket, or the TCP socket itself. */
  stream: Duplex;
  /** The TCP socket under `stream` (the same object when insecure): source of the byte counts. */
  tcp: Socket;
  /** "host:port" of the peer, for messages. */
  peer: string;
  /** Cap on bytes/s written (frames are never split; the average converges). */
  maxBandwidth?: number;
  maxPayload?: number;
  /**
   * True when `stream` is TLS: frames are then sent without CRC (TLS authenticates every record)
   * and NO_CRC frames are accepted. Plain TCP channels always checksum and reject NO_CRC frames.
   */
  tls?: boolean;
}

// Stop reading from the socket while this many decoded bytes wait for the consumer.
const PAUSE_ABOVE_BYTES = 32 * 1024 * 1024;

export class FramedChannel {
  readonly peer: string;
  /** Set once the HELLO exchange completed (always set on channels from connect()/listen()). */
  session: ChannelSession | null = null;

  private readonly stream: Duplex;
  private readonly tcp: Socket;
  private readonly decoder: FrameDecoder;
  /** Whether the stream is TLS-protected (frames then go without CRC). */
  readonly tls: boolean;
  private bucket: TokenBucket | null = null;
  private dispatchChain: Promise<void> = Promise.resolve();
  /** Frames queued on dispatchChain and not yet handed to the socket. */
  private dispatching = 0;
  private readonly queue: Frame[] = [];
  private queuedBytes = 0;
  private waiters: Array<() => void> = []; // pending receivers (normally one consumer)
  private ended = false;
  private failure: Error | null = null;
  private tcpBytesWritten = 0; // last known counts, kept after the socket is destroyed
  private tcpBytesRead = 0;
  private framesSentCount = 0;
  private payloadSent = 0;
  /** Rejecters of writes the socket has not confirmed yet: a failure settles them all. */
  private readonly unconfirmed = new Set<(err: Error) => void>();

  /** The TLS connection under this channel (null without TLS): its exporter keys the native data plane. */
  get tlsSocket(): TLSSocket | null {
    return this.stream instanceof TLSSocket ? this.stream : null;
  }

  constructor(opts: FramedChannelOptions) {
    this.stream = opts.stream;
    this.tcp = opts.tcp;
    this.peer = opts.peer;
    this.tls = opts.tls ?? false;
    this.decoder = new FrameDecoder({ maxPayload: opts.maxPayload ?? MAX_FRAME_PAYLOAD, acceptUnchecked: this.tls });
    if (opts.maxBandwidth !== undefined) this.setMaxBandwidth(opts.maxBandwidth);
    this.stream.on('data', (chunk: Buffer) => this.onData(chunk));
    this.stream.on('end', () => this.onEnd());
    // A TLS error (a bad record MAC, an alert from the peer) leaves the socket open with a write
    // in progress whose callback never comes: fail the channel and tear the socket down, or a
    // sender waiting on that write waits for ever.
    this.stream.on('error', (err) => {
      this.fail(fromSocketError(err, this.peer, 'transfer'));
      this.destroy();
    });
    this.stream.on('close', () => {
      this.snapshotCounters();
      // After a clean end this only settles writes still waiting (fail() keeps the clean end).
      this.fail(new TransportError('CLOSED', this.peer, 'connection closed'));
    });
    this.tcp.on('close', () => this.snapshotCounters());
  }

  /**
   * Caps the kernel's send and receive buffers of the TCP socket (disabling their autotuning):
   * less data queued in front of whatever is sent next, at some cost in throughput.
   */
  limitKernelBuffers(bytes: number): boolean {
    return setSocketBuffer(this.tcp, SO_SNDBUF, bytes) && setSocketBuffer(this.tcp, SO_RCVBUF, bytes);
  }

  /** The kernel's view of the TCP path (round trips), or null once the socket is gone. */
  pathInfo(): TcpPathInfo | null {
    return tcpPathInfo(this.tcp);
  }

  /** Bytes written to the TCP socket (TLS overhead included). */
  get bytesSent(): number {
    return this.tcp.destroyed ? this.tcpBytesWritten : this.tcp.bytesWritten;
  }
  /** Bytes read from the TCP socket (TLS overhead included). */
  get bytesReceived(): number {
    return this.tcp.destroyed ? this.tcpBytesRead : this.tcp.bytesRead;
  }
  /** Frames handed to send() so far, and their payload bytes (no framing, no TLS). */
  get framesSent(): number {
    return this.framesSentCount;
  }
  get payloadBytesSent(): number {
    return this.payloadSent;
  }
  get closed(): boolean {
    return this.stream.destroyed;
  }

  /** Caps the send rate (bytes/s), or removes the cap with undefined. */
  setMaxBandwidth(bytesPerSecond: number | undefined): void {
    this.bucket = bytesPerSecond === undefined ? null : new TokenBucket(bytesPerSecond);
  }

  /** Latency matters more than packet count on the urgent channel. */
  setNoDelay(on = true): void {
    this.tcp.setNoDelay(on);
  }

  /**
   * Sends an encoded frame (from encodeFrameParts/encodeMessage/encodePages). Frames go out in call
   * order. The promise resolves when the socket has taken the bytes — only then may buffers passed
   * as page data be reused — and rejects with a TransportError if the connection fails. Awaiting
   * each send gives backpressure; to keep the pipe full, keep a few sends in flight with distinct
   * staging buffers.
   */
  send(parts: readonly Buffer[]): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    let bytes = 0;
    for (const p of parts) bytes += p.length;
    this.framesSentCount++;
    this.payloadSent += Math.max(0, bytes - 16);
    const bucket = this.bucket;
    // Nothing waits ahead of this frame (no pacing, no earlier frame still on its way): hand it to
    // the socket now. Through the chain it would go a few microtask turns later, and a switchover
    // that sends its last frames and then walks the page tables would walk first.
    if (!bucket && this.dispatching === 0) return this.writeParts(parts);
    this.dispatching++;
    const ready = bucket ? this.dispatchChain.then(() => bucket.take(bytes)) : this.dispatchChain;
    // The count drops in the same turn as the write, so no later frame can overtake this one.
    // (The write's promise travels in an object: the chain moves on once the frame is handed
    // to the socket, not once the socket confirms it.)
    const handed = ready.then(
      () => {
        this.dispatching--;
        return { written: this.writeParts(parts) };
      },
      (err: unknown) => {
        this.dispatching--;
        throw err;
      },
    );
    this.dispatchChain = handed.then(
      () => undefined,
      () => undefined,
    );
    return handed.then((h) => h.written);
  }

  /**
   * Resolves once every frame sent so far has been handed to the socket (written into it, not yet
   * confirmed): a few microtask turns, where a write's confirmation may take an event-loop turn.
   */
  handedOver(): Promise<void> {
    return this.dispatchChain;
  }

  /**
   * Runs `send` (which sends frames) with the socket corked, so its frames reach the socket in one
   * write. A TLS socket takes one write at a time and holds later ones until a turn of the event
   * loop confirms the first: frames that must leave before a long synchronous step (the
   * switchover's page-table walk) go out together, or only the first of them does.
   */
  batch<T>(send: () => T): T {
    this.stream.cork();
    try {
      return send();
    } finally {
      this.stream.uncork();
    }
  }

  sendMessage(msg: Message): Promise<void> {
    return this.send(encodeMessage(msg, { checksum: !this.tls }));
  }

  /**
   * Encodes, and drops, a few frames of each kind a switchover sends (STATE, data and zero pages,
   * DISCARD, COMMIT) with this channel's options: in a migration whose pages went on the native
   * data plane, the switchover is the first time this process runs that code, and compiling it
   * cold cost ≈ 0.7 ms of the downtime. Sends nothing.
   */
  rehearseEncoding(): void {
    const opts = { checksum: !this.tls };
    const page = Buffer.alloc(PAGE_SIZE);
    for (let i = 0; i < 3; i++) {
      encodeMessage({ type: 'STATE', totalBytes: page.length, offset: 0, data: page }, opts);
      encodePages(0, 1, 'data', page, opts);
      encodePages(PAGE_SIZE, 2, 'zero', null, opts);
      encodeDiscardRuns([[0, 1], [2, 4]], opts);
      encodeMessage({ type: 'COMMIT' }, opts);
    }
  }

  /** One run of pages; `data` (count*4096 bytes for kind 'data') is written without copying. */
  sendPages(offset: number, count: number, kind: PageKind, data: Uint8Array | null = null): Promise<void> {
    return this.send(encodePages(offset, count, kind, data, { checksum: !this.tls }));
  }

  /** DISCARD of page runs [first, end), ascending (see encodeDiscardRuns). */
  sendDiscardRuns(runs: ReadonlyArray<readonly [number, number]>): Promise<void> {
    return this.send(encodeDiscardRuns(runs, { checksum: !this.tls }));
  }

  private writeParts(parts: readonly Buffer[]): Promise<void> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<void>((resolve, reject) => {
      const s = this.stream;
      this.unconfirmed.add(reject);
      s.cork();
      const last = parts.length - 1;
      for (let i = 0; i < last; i++) s.write(parts[i]);
      s.write(parts[last], (err) => {
        this.unconfirmed.delete(reject);
        if (err) reject(this.failure ?? fromSocketError(err, this.peer, 'send'));
        else resolve();
      });
      s.uncork();
    });
  }

  /** Next frame, or null when the peer closed cleanly at a frame boundary. */
  async recvFrame(): Promise<Frame | null> {
    for (;;) {
      const f = this.queue.shift();
      if (f) {
        this.queuedBytes -= f.payload.length;
        if (this.stream.isPaused() && this.queuedBytes < PAUSE_ABOVE_BYTES / 2) this.stream.resume();
        return f;
      }
      if (this.failure) throw this.failure;
      if (this.ended) return null;
      await new Promise<void>((resolve) => this.waiters.push(resolve));
    }
  }

  /** Next decoded message, or null at a clean end of stream. Malformed frames fail the channel. */
  async recv(): Promise<Message | null> {
    const f = await this.recvFrame();
    if (!f) return null;
    try {
      return decodeMessage(f);
    } catch (err) {
      this.fail(err as Error);
      this.stream.destroy();
      throw err;
    }
  }

  /** Like recv(), plus the frame's stream offset (for checker errors). */
  async recvWithOffset(): Promise<{ msg: Message; offset: number } | null> {
    const f = await this.recvFrame();
    if (!f) return null;
    try {
      return { msg: decodeMessage(f), offset: f.offset };
    } catch (err) {
      this.fail(err as Error);
      this.stream.destroy();
      throw err;
    }
  }

  /**
   * Receives the next message and checks its type. REFUSE and ERROR from the peer become
   * TransportErrors ('REFUSED' / 'REMOTE'); end of stream becomes 'CLOSED'.
   */
  async expect<T extends Message['type']>(type: T, timeoutMs?: number): Promise<MessageOf<T>> {
    let timer: NodeJS.Timeout | undefined;
    const timeout =
      timeoutMs === undefined
        ? null
        : new Promise<never>((_, reject) => {
            timer = setTimeout(() => reject(new TransportError('TIMEOUT', this.peer, `no ${type} within ${timeoutMs} ms`)), timeoutMs);
          });
    try {
      const msg = await (timeout ? Promise.race([this.recv(), timeout]) : this.recv());
      if (msg === null) throw new TransportError('CLOSED', this.peer, `connection closed while waiting for ${type}`);
      if (msg.type === type) return msg as MessageOf<T>;
      if (msg.type === 'REFUSE') throw new TransportError('REFUSED', this.peer, `refused: ${msg.reason}`);
      if (msg.type === 'ERROR') throw new TransportError('REMOTE', this.peer, `peer error ${msg.code}: ${msg.message}`);
      throw new TransportError('PROTOCOL', this.peer, `expected ${type}, got ${msg.type}`);
    } finally {
      if (timer) clearTimeout(timer);
    }
  }

  /** Decoded messages until the peer closes; throws on error. */
  async *[Symbol.asyncIterator](): AsyncGenerator<Message, void, undefined> {
    for (;;) {
      const m = await this.recv();
      if (m === null) return;
      yield m;
    }
  }

  /** Raw frames until the peer closes. */
  async *frames(): AsyncGenerator<Frame, void, undefined> {
    for (;;) {
      const f = await this.recvFrame();
      if (f === null) return;
      yield f;
    }
  }

  /** Finishes sending (after queued frames) and half-closes; resolves when the socket is closed. */
  async close(): Promise<void> {
    await this.dispatchChain;
    if (this.stream.destroyed) return;
    await new Promise<void>((resolve) => {
      this.stream.once('close', () => resolve());
      this.stream.end();
      // If the peer never closes its side, do not hang forever.
      setTimeout(() => this.stream.destroy(), 5000).unref();
    });
  }

  /** Tears the connection down now; pending receives fail with `err` (or CLOSED). */
  destroy(err?: Error): void {
    if (err) this.fail(err);
    this.stream.destroy();
    if (this.tcp !== this.stream) this.tcp.destroy();
  }

  private onData(chunk: Buffer): void {
    if (this.failure) return;
    let frames: Frame[];
    try {
      frames = this.decoder.push(chunk);
    } catch (err) {
      this.fail(err instanceof WireError ? err : new TransportError('PROTOCOL', this.peer, String(err)));
      this.stream.destroy();
      return;
    }
    for (const f of frames) {
      this.queue.push(f);
      this.queuedBytes += f.payload.length;
    }
    if (this.queuedBytes > PAUSE_ABOVE_BYTES) this.stream.pause();
    if (frames.length > 0) this.wake();
  }

  private onEnd(): void {
    try {
      this.decoder.end();
      this.ended = true;
    } catch (err) {
      this.fail(err as Error);
    }
    this.wake();
  }

  private fail(err: Error): void {
    if (!this.failure && !this.ended) this.failure = err;
    const failure = this.failure ?? err;
    for (const reject of this.unconfirmed) reject(failure);
    this.unconfirmed.clear();
    this.wake();
  }

  private wake(): void {
    const ws = this.waiters;
    this.waiters = [];
    for (const w of ws) w();
  }

  private snapshotCounters(): void {
    // net.Socket keeps bytesRead/bytesWritten readable after close; copy them once to be safe.
    this.tcpBytesWritten = Math.max(this.tcpBytesWritten, this.tcp.bytesWritten ?? 0);
    this.tcpBytesRead = Math.max(this.tcpBytesRead, this.tcp.bytesRead ?? 0);
  }
}

/** Name of a frame type for logs. */
export function describeFrame(f: Frame): string {
  return `${frameTypeName(f.type) ?? 'unknown'} (${f.payload.length} bytes at ${f.offset})`;
}
