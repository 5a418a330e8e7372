// Bounded little-endian field reader/writer used by the message codecs. Every read checks that the
// bytes exist; every failure is a WireError naming the frame's stream offset.
import { WireError } from './errors.js';
import { MAX_TEXT_BYTES } from './limits.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

export class FieldReader {
  private pos = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly what: string,
    private readonly frameOffset: number,
  ) {}

  fail(detail: string): never {
    throw new WireError('BAD_MESSAGE', this.frameOffset, `${this.what}: ${detail}`);
  }

  private need(n: number, field: string): void {
    if (this.buf.length - this.pos < n) this.fail(`payload ends inside field '${field}' (needs ${n} bytes, ${this.buf.length - this.pos} left)`);
  }

  u8(field: string): number {
    this.need(1, field);
    return this.buf.readUInt8(this.pos++);
  }
  u16(field: string): number {
    this.need(2, field);
    const v = this.buf.readUInt16LE(this.pos);
    this.pos += 2;
    return v;
  }
  u32(field: string): number {
    this.need(4, field);
    const v = this.buf.readUInt32LE(this.pos);
    this.pos += 4;
    return v;
  }
  /** u64 that must fit a JS safe integer. */
  u64(field: string): number {
    this.need(8, field);
    const v = this.buf.readBigUInt64LE(this.pos);
    this.pos += 8;
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) this.fail(`field '${field}' = ${v} is out of range`);
    return Number(v);
  }
  bytes(n: number, field: string): Buffer {
    this.need(n, field);
    const v = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return v;
  }
  zeros(n: number, field: string): void {
    const b = this.bytes(n, field);
    for (const x of b) if (x !== 0) this.fail(`reserved field '${field}' is not zero`);
  }
  /** u16 length + UTF-8 text, at most MAX_TEXT_BYTES, no NUL. */
  text(field: string): string {
    const n = this.u16(`${field}.length`);
    if (n > MAX_TEXT_BYTES) this.fail(`field '${field}' is ${n} bytes (limit ${MAX_TEXT_BYTES})`);
    const b = this.bytes(n, field);
    let s: string;
    try {
      s = utf8.decode(b);
    } catch {
      this.fail(`field '${field}' is not valid UTF-8`);
    }
    if (s.includes('\0')) this.fail(`field '${field}' contains a NUL character`);
    return s;
  }
  rest(): Buffer {
    const v = this.buf.subarray(this.pos);
    this.pos = this.buf.length;
    return v;
  }
  remaining(): number {
    return this.buf.length - this.pos;
  }
  end(): void {
    if (this.pos !== this.buf.length) this.fail(`${this.buf.length - this.pos} unexpected trailing bytes`);
  }
}

export class FieldWriter {
  private readonly chunks: Buffer[] = [];
  private cur = Buffer.allocUnsafe(64);
  private pos = 0;

  private room(n: number): void {
    if (this.cur.length - this.pos >= n) return;
    this.flush();
    this.cur = Buffer.allocUnsafe(Math.max(64, n));
  }
  private flush(): void {
    if (this.pos > 0) this.chunks.push(this.cur.subarray(0, this.pos));
    this.pos = 0;
  }
  u8(v: number, field: string): this {
    checkUint(v, 0xff, field);
    this.room(1);
    this.cur.writeUInt8(v, this.pos++);
    return this;
  }
  u16(v: number, field: string): this {
    checkUint(v, 0xffff, field);
    this.room(2);
    this.cur.writeUInt16LE(v, this.pos);
    this.pos += 2;
    return this;
  }
  u32(v: number, field: string): this {
    checkUint(v, 0xffffffff, field);
    this.room(4);
    this.cur.writeUInt32LE(v, this.pos);
    this.pos += 4;
    return this;
  }
  u64(v: number, field: string): this {
    checkUint(v, Number.MAX_SAFE_INTEGER, field);
    this.room(8);
    this.cur.writeBigUInt64LE(BigInt(v), this.pos);
    this.pos += 8;
    return this;
  }
  bytes(b: Uint8Array): this {
    this.room(b.length);
    this.cur.set(b, this.pos);
    this.pos += b.length;
    return this;
  }
  text(s: string, field: string): this {
    const b = Buffer.from(s, 'utf8');
    if (b.length > MAX_TEXT_BYTES) throw new RangeError(`${field} is ${b.length} bytes of UTF-8 (limit ${MAX_TEXT_BYTES})`);
    if (s.includes('\0')) throw new RangeError(`${field} contains a NUL character`);
    return this.u16(b.length, `${field}.length`).bytes(b);
  }
  /** The encoded fields as one buffer. */
  done(): Buffer {
    this.flush();
    return this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
  }
}

function checkUint(v: number, max: number, field: string): void {
  if (!Number.isInteger(v) || v < 0 || v > max) throw new RangeError(`${field} must be an integer in 0..${max}, got ${v}`);
}
