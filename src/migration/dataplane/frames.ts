// The data plane's framing in TypeScript: the same hello, key schedule and AES-256-GCM frames as
// native/dataplane/dp_wire.c, over a Node socket. Ferry's hot path never uses it (the native
// threads do); it is the second, independent implementation of docs/wire-format.md "Native data
// plane" that tests drive the native threads with, as a well-behaved or a hostile peer.
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import type net from 'node:net';
import { DataplaneRole, type DataplaneRoleValue } from '../../sys/dataplane.js';

/** Frame types; ZERO, MARK and CLOSE are native precopy's (channel "precopy"). */
export const DataplaneFrame = { FINISHED: 1, REQUEST: 2, PAGES: 3, ZERO: 4, MARK: 5, CLOSE: 6 } as const;
export const DATAPLANE_MAGIC = Buffer.from('FERRYDP1');
export const DATAPLANE_HELLO_BYTES = 40;
export const DATAPLANE_HEADER_BYTES = 8;
export const DATAPLANE_TAG_BYTES = 16;
export const DATAPLANE_MAX_RUN = 16;

interface Direction {
  key: Buffer;
  iv: Buffer;
  seq: bigint;
}

function direction(prkInput: { secret: Uint8Array; salt: Buffer }, channel: string, dir: string): Direction {
  const key = Buffer.from(hkdfSync('sha256', prkInput.secret, prkInput.salt, `ferry dp1 ${channel} ${dir} key`, 32));
  const iv = Buffer.from(hkdfSync('sha256', prkInput.secret, prkInput.salt, `ferry dp1 ${channel} ${dir} iv`, 12));
  return { key, iv, seq: 0n };
}

function nonceOf(d: Direction): Buffer {
  const n = Buffer.from(d.iv);
  const s = Buffer.alloc(8);
  s.writeBigUInt64BE(d.seq);
  for (let i = 0; i < 8; i++) n[4 + i]! ^= s[i]!;
  return n;
}

/** Reads a socket as a byte queue: exact-length reads, and the end of the stream. */
class ByteQueue {
  private buf = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | null = null;
  constructor(sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.buf = Buffer.concat([this.buf, d]);
      this.wake?.();
    });
    const end = () => {
      this.ended = true;
      this.wake?.();
    };
    sock.on('end', end);
    sock.on('close', end);
    sock.on('error', end);
  }
  /** The next n bytes, or null if the stream ends first. */
  async take(n: number): Promise<Buffer | null> {
    while (this.buf.length < n) {
      if (this.ended) return null;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }
}

export class DataplanePeer {
  private constructor(
    readonly sock: net.Socket,
    private readonly queue: ByteQueue,
    private readonly tx: Direction,
    private readonly rx: Direction,
  ) {}

  /** Hello exchange, keys, FINISHED each way. */
  static async open(sock: net.Socket, secret: Uint8Array, role: DataplaneRoleValue, channel = 'urgent'): Promise<DataplanePeer> {
    const queue = new ByteQueue(sock);
    const mine = Buffer.concat([DATAPLANE_MAGIC, randomBytes(32)]);
    sock.write(mine);
    const theirs = await queue.take(DATAPLANE_HELLO_BYTES);
    if (!theirs || !theirs.subarray(0, 8).equals(DATAPLANE_MAGIC)) throw new Error('bad data plane hello');
    const connector = role === DataplaneRole.CONNECTOR;
    const salt = Buffer.concat([(connector ? mine : theirs).subarray(8), (connector ? theirs : mine).subarray(8)]);
    const tx = direction({ secret, salt }, channel, connector ? 'c2a' : 'a2c');
    const rx = direction({ secret, salt }, channel, connector ? 'a2c' : 'c2a');
    const peer = new DataplanePeer(sock, queue, tx, rx);
    peer.send(DataplaneFrame.FINISHED, Buffer.alloc(0));
    const f = await peer.next();
    if (!f || f.type !== DataplaneFrame.FINISHED) throw new Error('the peer did not finish the data plane handshake');
    return peer;
  }

  /** One sealed frame, with the next counter of this direction. */
  seal(type: number, body: Buffer): Buffer {
    const hdr = Buffer.alloc(DATAPLANE_HEADER_BYTES);
    hdr.writeUInt32BE(body.length, 0);
    hdr[4] = type;
    const c = createCipheriv('aes-256-gcm', this.tx.key, nonceOf(this.tx));
    c.setAAD(hdr);
    const out = Buffer.concat([hdr, c.update(body), c.final(), c.getAuthTag()]);
    this.tx.seq++;
    return out;
  }

  send(type: number, body: Buffer): void {
    this.sock.write(this.seal(type, body));
  }

  request(first: number, count: number): void {
    const b = Buffer.alloc(8);
    b.writeUInt32BE(first, 0);
    b.writeUInt32BE(count, 4);
    this.send(DataplaneFrame.REQUEST, b);
  }

  /** A PAGES frame's body: first page, count, then the bytes. */
  static pagesBody(first: number, bytes: Buffer): Buffer {
    const b = Buffer.alloc(8);
    b.writeUInt32BE(first, 0);
    b.writeUInt32BE(bytes.length / 4096, 4);
    return Buffer.concat([b, bytes]);
  }

  /** The next frame opened, or null at the end of the stream; throws if it fails authentication. */
  async next(): Promise<{ type: number; body: Buffer } | null> {
    const hdr = await this.queue.take(DATAPLANE_HEADER_BYTES);
    if (!hdr) return null;
    const len = hdr.readUInt32BE(0);
    const rest = await this.queue.take(len + DATAPLANE_TAG_BYTES);
    if (!rest) throw new Error('the stream ended inside a frame');
    const d = createDecipheriv('aes-256-gcm', this.rx.key, nonceOf(this.rx));
    d.setAAD(hdr);
    d.setAuthTag(rest.subarray(len));
    const body = Buffer.concat([d.update(rest.subarray(0, len)), d.final()]);
    this.rx.seq++;
    return { type: hdr[4]!, body };
  }
}
