// Reassembles a blob sent as MODULE or STATE chunks. Chunks must arrive in order, without gaps or
// overlap; the total is fixed by the first chunk (STATE) or by SETUP.moduleSize (MODULE). Memory is
// allocated once, for the declared total, which the message decoders have already bounded.
import { WireError } from './errors.js';

export class ChunkAssembler {
  private readonly buf: Buffer;
  private filled = 0;

  constructor(
    readonly what: 'MODULE' | 'STATE' | 'SOCKETS',
    readonly totalBytes: number,
  ) {
    if (!Number.isInteger(totalBytes) || totalBytes < 0) throw new RangeError(`${what}: bad total ${totalBytes}`);
    this.buf = Buffer.alloc(totalBytes);
  }

  get complete(): boolean {
    return this.filled === this.totalBytes;
  }

  get received(): number {
    return this.filled;
  }

  /** Adds the next chunk; `frameOffset` is the stream offset of its frame, for errors. */
  add(offset: number, data: Uint8Array, frameOffset: number, declaredTotal = this.totalBytes): void {
    const fail = (d: string): never => {
      throw new WireError('BAD_ORDER', frameOffset, `${this.what} chunk: ${d}`);
    };
    if (declaredTotal !== this.totalBytes) fail(`total ${declaredTotal} differs from the ${this.totalBytes} announced first`);
    if (this.complete) fail('chunk after the blob was complete');
    if (offset !== this.filled) fail(`chunk at ${offset} but ${this.filled} bytes were received (chunks must be contiguous)`);
    if (data.length === 0 && this.totalBytes > 0) fail('empty chunk');
    if (offset + data.length > this.totalBytes) fail(`chunk ${offset}+${data.length} runs past ${this.totalBytes} bytes`);
    this.buf.set(data, offset);
    this.filled += data.length;
  }

  /** The whole blob; throws unless every byte arrived. */
  result(): Buffer {
    if (!this.complete) throw new WireError('TRUNCATED', undefined, `${this.what}: ${this.filled} of ${this.totalBytes} bytes received`);
    return this.buf;
  }
}
