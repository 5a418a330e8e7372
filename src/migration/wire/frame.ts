// Frame layout (all integers little-endian):
//   0  u16 magic 0x5946 (bytes 46 59: ASCII "FY")
//   2  u8  version (WIRE_VERSION)
//   3  u8  type (FrameType)
//   4  u8  flags: bit 0 NO_CRC (checksum omitted, trailer is 0; only accepted on TLS channels),
//          every other bit must be 0
//   5  u8[3] reserved, must be 0
//   8  u32 payload length (<= MAX_FRAME_PAYLOAD)
//  12  payload
//  12+n u32 CRC32 (zlib) of header + payload
// The CRC catches corruption on plain TCP. Under TLS every record is already authenticated (AEAD),
// and the CRC (zlib's, ~3 GB/s) would cost a third of a core at loopback speed, so TLS channels
// send NO_CRC frames; a decoder accepts them only when told it reads from TLS.
import { crc32 } from 'node:zlib';
import { WireError } from './errors.js';
import { FRAME_HEADER_BYTES, FRAME_MAGIC, FRAME_TRAILER_BYTES, MAX_FRAME_PAYLOAD, WIRE_VERSION } from './limits.js';
import { frameTypeName, isKnownFrameType, type FrameTypeValue } from './types.js';

export const FrameFlag = {
  /** The trailer is zero and carries no checksum (TLS channels only). */
  NO_CRC: 0x01,
} as const;
const KNOWN_FLAGS = FrameFlag.NO_CRC;

export interface FrameEncodeOptions {
  /** false: send a NO_CRC frame (only for channels protected by TLS). Default true. */
  checksum?: boolean;
}

export interface FrameDecoderOptions {
  /** Largest payload accepted (default and upper bound MAX_FRAME_PAYLOAD). */
  maxPayload?: number;
  /** Accept NO_CRC frames: set only when the stream is TLS-protected. */
  acceptUnchecked?: boolean;
}

export interface Frame {
  type: FrameTypeValue;
  flags: number;
  payload: Buffer;
  /** Absolute offset in the stream of the frame's first header byte. */
  offset: number;
}

/**
 * Encodes a frame as a list of buffers: [header, ...payload parts, crc]. The payload parts are not
 * copied, so page data can go straight from a staging buffer to the socket (write them with
 * cork()/uncork() or writev). The caller must not modify the parts until they are written.
 */
export function encodeFrameParts(type: FrameTypeValue, payload: Buffer | readonly Buffer[], opts: FrameEncodeOptions = {}): Buffer[] {
  if (!isKnownFrameType(type)) throw new RangeError(`encodeFrame: unknown frame type ${type}`);
  const checksum = opts.checksum ?? true;
  const parts = Buffer.isBuffer(payload) ? [payload] : payload;
  let length = 0;
  for (const p of parts) length += p.length;
  if (length > MAX_FRAME_PAYLOAD) {
    throw new RangeError(`encodeFrame: payload of ${length} bytes exceeds the ${MAX_FRAME_PAYLOAD}-byte limit`);
  }
  const header = Buffer.allocUnsafe(FRAME_HEADER_BYTES);
  writeHeader(header, type, checksum ? 0 : FrameFlag.NO_CRC, length);
  let crc = 0;
  if (checksum) {
    crc = crc32(header);
    // zlib.crc32(empty, crc) returns 0 on Node 20 instead of crc: skip empty parts.
    for (const p of parts) if (p.length > 0) crc = crc32(p, crc);
  }
  const trailer = Buffer.allocUnsafe(FRAME_TRAILER_BYTES);
  trailer.writeUInt32LE(crc >>> 0, 0);
  return [header, ...parts, trailer];
}

/** Encodes a frame into one contiguous buffer (copies the payload; for small control frames). */
export function encodeFrame(type: FrameTypeValue, payload: Buffer | readonly Buffer[] = Buffer.alloc(0), opts: FrameEncodeOptions = {}): Buffer {
  return Buffer.concat(encodeFrameParts(type, payload, opts));
}

function writeHeader(header: Buffer, type: number, flags: number, length: number): void {
  header.writeUInt16LE(FRAME_MAGIC, 0);
  header.writeUInt8(WIRE_VERSION, 2);
  header.writeUInt8(type, 3);
  header.writeUInt8(flags, 4);
  header.writeUInt8(0, 5);
  header.writeUInt16LE(0, 6);
  header.writeUInt32LE(length, 8);
}

/**
 * Streaming frame decoder: push() Buffer chunks split anywhere, get whole frames back. The header is
 * fully validated (magic, version, type, flags, length bound) before the payload is allocated, so a
 * hostile length never causes a large allocation. A frame that lies inside one chunk is returned as
 * a view of that chunk (no copy); a frame split across chunks is assembled once.
 * After an error the decoder is poisoned: every later push() throws the same error.
 */
export class FrameDecoder {
  private readonly header = Buffer.alloc(FRAME_HEADER_BYTES);
  private headerFill = 0;
  private payload: Buffer | null = null; // being assembled across chunks
  private payloadFill = 0;
  private readonly trailer = Buffer.alloc(FRAME_TRAILER_BYTES);
  private trailerFill = 0;
  private type: FrameTypeValue = 0x01;
  private flags = 0;
  private length = 0;
  private frameStart = 0;
  private consumed = 0; // absolute stream offset of the next unread byte
  private failure: WireError | null = null;

  private readonly maxPayload: number;
  private readonly acceptUnchecked: boolean;

  constructor(opts: FrameDecoderOptions = {}) {
    const maxPayload = (this.maxPayload = opts.maxPayload ?? MAX_FRAME_PAYLOAD);
    this.acceptUnchecked = opts.acceptUnchecked ?? false;
    if (!Number.isInteger(maxPayload) || maxPayload < 0 || maxPayload > MAX_FRAME_PAYLOAD) {
      throw new RangeError(`FrameDecoder: maxPayload must be an integer in 0..${MAX_FRAME_PAYLOAD}`);
    }
  }

  /** Total bytes consumed so far (the absolute offset of the next byte). */
  get bytesConsumed(): number {
    return this.consumed;
  }

  /** True when no partial frame is buffered (a clean place for the stream to end). */
  get atFrameBoundary(): boolean {
    return this.headerFill === 0;
  }

  push(chunk: Uint8Array): Frame[] {
    if (this.failure) throw this.failure;
    const buf = Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
    const out: Frame[] = [];
    try {
      let pos = 0;
      while (pos < buf.length) pos = this.step(buf, pos, out);
    } catch (err) {
      if (err instanceof WireError) this.failure = err;
      throw err;
    }
    return out;
  }

  /** Declares end of stream; throws a TRUNCATED error naming the offset if a frame is unfinished. */
  end(): void {
    if (this.failure) throw this.failure;
    if (this.headerFill === 0) return;
    const stage =
      this.headerFill < FRAME_HEADER_BYTES
        ? `inside the header (${this.headerFill} of ${FRAME_HEADER_BYTES} bytes)`
        : this.payloadFill < this.length
          ? `inside the payload (${this.payloadFill} of ${this.length} bytes)`
          : `inside the checksum (${this.trailerFill} of ${FRAME_TRAILER_BYTES} bytes)`;
    this.failure = new WireError(
      'TRUNCATED',
      this.consumed,
      `end of stream ${stage} of the frame that starts at byte ${this.frameStart}`,
    );
    throw this.failure;
  }

  // Consumes bytes of buf from pos; returns the new position.
  private step(buf: Buffer, pos: number, out: Frame[]): number {
    if (this.headerFill < FRAME_HEADER_BYTES) {
      if (this.headerFill === 0) {
        this.frameStart = this.consumed;
        // Fast path: the whole frame is inside this chunk: return a view, copy nothing.
        if (buf.length - pos >= FRAME_HEADER_BYTES) {
          this.parseHeader(buf, pos);
          const total = FRAME_HEADER_BYTES + this.length + FRAME_TRAILER_BYTES;
          if (buf.length - pos >= total) {
            const body = buf.subarray(pos, pos + FRAME_HEADER_BYTES + this.length);
            this.checkTrailer(body, null, buf.readUInt32LE(pos + FRAME_HEADER_BYTES + this.length));
            out.push({ type: this.type, flags: this.flags, payload: body.subarray(FRAME_HEADER_BYTES), offset: this.frameStart });
            this.consumed += total;
            return pos + total;
          }
        }
      }
      const n = Math.min(FRAME_HEADER_BYTES - this.headerFill, buf.length - pos);
      buf.copy(this.header, this.headerFill, pos, pos + n);
      this.headerFill += n;
      this.consumed += n;
      pos += n;
      if (this.headerFill === FRAME_HEADER_BYTES) {
        this.parseHeader(this.header, 0);
        this.payload = Buffer.allocUnsafe(this.length); // bounded by parseHeader
        this.payloadFill = 0;
        this.trailerFill = 0;
      }
      return pos;
    }
    const payload = this.payload!;
    if (this.payloadFill < this.length) {
      const n = Math.min(this.length - this.payloadFill, buf.length - pos);
      buf.copy(payload, this.payloadFill, pos, pos + n);
      this.payloadFill += n;
      this.consumed += n;
      return pos + n;
    }
    const n = Math.min(FRAME_TRAILER_BYTES - this.trailerFill, buf.length - pos);
    buf.copy(this.trailer, this.trailerFill, pos, pos + n);
    this.trailerFill += n;
    this.consumed += n;
    pos += n;
    if (this.trailerFill === FRAME_TRAILER_BYTES) {
      this.checkTrailer(this.header, payload, this.trailer.readUInt32LE(0));
      out.push({ type: this.type, flags: this.flags, payload, offset: this.frameStart });
      this.headerFill = 0;
      this.payload = null;
    }
    return pos;
  }

  private parseHeader(h: Buffer, at: number): void {
    const magic = h.readUInt16LE(at);
    if (magic !== FRAME_MAGIC) this.fail('BAD_MAGIC', `bad magic 0x${hex(magic, 4)} (expected 0x${hex(FRAME_MAGIC, 4)})`);
    const version = h.readUInt8(at + 2);
    if (version !== WIRE_VERSION) this.fail('BAD_VERSION', `unsupported wire version ${version} (this side speaks ${WIRE_VERSION})`);
    const type = h.readUInt8(at + 3);
    if (!isKnownFrameType(type)) this.fail('BAD_TYPE', `unknown type 0x${hex(type, 2)}`);
    const flags = h.readUInt8(at + 4);
    if ((flags & ~KNOWN_FLAGS) !== 0) this.fail('BAD_FLAGS', `unknown flags 0x${hex(flags, 2)} on ${frameTypeName(type)}`);
    if (flags & FrameFlag.NO_CRC && !this.acceptUnchecked) {
      this.fail('BAD_FLAGS', `${frameTypeName(type)} frame without checksum (NO_CRC) on a channel that is not TLS-protected`);
    }
    if (h.readUInt8(at + 5) !== 0 || h.readUInt16LE(at + 6) !== 0) this.fail('BAD_FLAGS', 'reserved header bytes are not zero');
    const length = h.readUInt32LE(at + 8);
    if (length > this.maxPayload) {
      this.fail('TOO_LARGE', `${frameTypeName(type)} payload of ${length} bytes exceeds the ${this.maxPayload}-byte limit`);
    }
    this.type = type as FrameTypeValue;
    this.flags = flags;
    this.length = length;
  }

  // `first` is the header (or header + payload in one view), `rest` the payload if separate.
  private checkTrailer(first: Buffer, rest: Buffer | null, trailer: number): void {
    if (this.flags & FrameFlag.NO_CRC) {
      if (trailer !== 0) this.fail('BAD_CRC', `NO_CRC ${frameTypeName(this.type)} frame has a non-zero trailer 0x${hex(trailer, 8)}`);
      return;
    }
    // (zlib.crc32 of an empty buffer ignores the running value on Node 20: never pass one.)
    const actual = (rest && rest.length > 0 ? crc32(rest, crc32(first)) : crc32(first)) >>> 0;
    if (actual !== trailer >>> 0) {
      this.fail('BAD_CRC', `checksum mismatch on ${frameTypeName(this.type)} frame (crc32 0x${hex(actual, 8)}, frame says 0x${hex(trailer, 8)})`);
    }
  }

  private fail(code: 'BAD_MAGIC' | 'BAD_VERSION' | 'BAD_TYPE' | 'BAD_FLAGS' | 'TOO_LARGE' | 'BAD_CRC', detail: string): never {
    throw new WireError(code, this.frameStart, detail);
  }
}

function hex(v: number, width: number): string {
  return v.toString(16).padStart(width, '0');
}
