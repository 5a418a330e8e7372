// Protocol constants and the hard bounds every decoder enforces. Changing a bound changes the
// protocol: bump WIRE_VERSION and update docs/wire-format.md.
import { HOST_PAGE_SIZE, WASM_PAGE_SIZE } from '../../memory/guest-memory.js';

/** Version of the frame layout and message set. A peer with another version is refused. */
export const WIRE_VERSION = 3;
/** First two bytes of every frame: ASCII "FY" (0x46 0x59; the u16 read little-endian is 0x5946). */
export const FRAME_MAGIC = 0x5946;
/** magic u16 + version u8 + type u8 + flags u8 + reserved u8[3] + payload length u32. */
export const FRAME_HEADER_BYTES = 12;
/** CRC32 (zlib polynomial) of header + payload, after the payload. */
export const FRAME_TRAILER_BYTES = 4;
/** Largest payload a decoder accepts; checked before any allocation. */
export const MAX_FRAME_PAYLOAD = 8 * 1024 * 1024;

/** Host page size: the unit of every page offset and count on the wire. */
export const PAGE_SIZE = HOST_PAGE_SIZE;
/** WebAssembly page size: memory sizes (SETUP, GROW) are multiples of it. */
export { WASM_PAGE_SIZE };
/** wasm32 linear memory can never exceed 4 GiB. */
export const MAX_MEMORY_BYTES = 4 * 1024 * 1024 * 1024;
/** A `data` run carries at most this many pages (4 MiB); senders should use RECOMMENDED_RUN_PAGES. */
export const MAX_DATA_RUN_PAGES = 1024;
/** 256 pages = 1 MiB per run: 32 bytes of framing per MiB (0.003%). */
export const RECOMMENDED_RUN_PAGES = 256;
/** A page request asks for at most this many pages (matches the largest data run). */
export const MAX_REQUEST_PAGES = MAX_DATA_RUN_PAGES;

/** Guest state (STATE chunks) is an opaque blob of at most 64 MiB. */
export const MAX_STATE_BYTES = 64 * 1024 * 1024;
/** Largest module the destination accepts (MODULE chunks). */
export const MAX_MODULE_BYTES = 512 * 1024 * 1024;
/** Largest data chunk in one MODULE or STATE frame (leaves room for the chunk header). */
export const MAX_CHUNK_BYTES = MAX_FRAME_PAYLOAD - 16;
/** Text fields (reasons, error messages, preopen paths) are UTF-8 of at most this many bytes. */
export const MAX_TEXT_BYTES = 4096;
/** At most this many preopens in SETUP. */
export const MAX_PREOPENS = 256;

/**
 * The first byte a source sends on a new connection, in the clear before TLS: which channel it will
 * carry, so that the destination can give an urgent connection to the thread that uses it before
 * any TLS state exists. The source then waits for GO_AHEAD before its TLS handshake (or HELLO), so
 * the preface is all the destination has read when it routes the connection.
 */
export const CHANNEL_PREFACE = { bulk: 0x62, urgent: 0x75 } as const; // 'b', 'u'
/** The native data plane's connection (Feature.NATIVE_FAULTS): no GO_AHEAD, no TLS; its own hello follows. */
export const DATAPLANE_PREFACE = 0x64; // 'd'
/** Frame offsets count from after the preface (byte 0 is the first frame's first byte). */
export const CHANNEL_PREFACE_BYTES = 1;
export const GO_AHEAD = 0x2b; // '+'
