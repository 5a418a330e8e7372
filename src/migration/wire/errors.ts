// The one error type the wire layer throws. Every decoding failure names the absolute byte offset
// in the stream where the offending frame starts, so a corrupted migration can be diagnosed from
// the log alone (e.g. "bad frame at byte 123456: unknown type 0x7f").

export type WireErrorCode =
  | 'BAD_MAGIC'
  | 'BAD_VERSION'
  | 'BAD_TYPE'
  | 'BAD_FLAGS'
  | 'TOO_LARGE'
  | 'BAD_CRC'
  | 'TRUNCATED'
  | 'BAD_MESSAGE'
  | 'BAD_PAGES'
  | 'BAD_ORDER';

export class WireError extends Error {
  override readonly name = 'WireError';
  constructor(
    readonly code: WireErrorCode,
    /** Absolute stream offset of the frame at fault (or of the truncation), when known. */
    readonly offset: number | undefined,
    readonly detail: string,
  ) {
    super(offset === undefined ? detail : `${prefixFor(code)} at byte ${offset}: ${detail}`);
  }
}

function prefixFor(code: WireErrorCode): string {
  switch (code) {
    case 'TRUNCATED':
      return 'truncated stream';
    case 'BAD_PAGES':
      return 'bad page frame';
    case 'BAD_ORDER':
      return 'out-of-order frame';
    case 'BAD_MESSAGE':
      return 'bad message';
    default:
      return 'bad frame';
  }
}
