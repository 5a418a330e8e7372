// The typed messages of the wire protocol (what each frame type carries, as a value) and the
// constants they name. Their byte layouts are in docs/wire-format.md; encode.ts and decode.ts
// turn them into frames and back.
export type ChannelKind = 'bulk' | 'urgent';
export type MigrationMode = 'precopy' | 'postcopy';
/** data: bytes follow; zero: the pages are all zero; untouched: never written on the source. */
export type PageKind = 'data' | 'zero' | 'untouched';

/** A run of whole pages: `offset` in bytes (page-aligned), `count` in pages. */
export interface PageRange {
  offset: number;
  count: number;
}

/** Feature bits carried in HELLO; HELLO_ACK answers with the subset the listener accepts. */
export const Feature = {
  POSTCOPY: 1 << 0,
  RECOVERY: 1 << 1,
  DIGEST: 1 << 2,
  /**
   * The postcopy fault path runs on native threads over a data plane connection of its own (see
   * docs/wire-format.md "Native data plane"). Offered and granted unless FERRY_NATIVE_FAULTS=0
   * on that side; never part of ALL_FEATURES.
   */
  NATIVE_FAULTS: 1 << 3,
  /**
   * The guest's TCP sockets move with it: a SOCKETS blob (the socket set image, src/net) crosses
   * inside the downtime, before STATE. A source whose guest holds sockets refuses to start without it.
   */
  SOCKETS: 1 << 4,
  /**
   * Precopy's pages travel on the native data plane connection too (needs NATIVE_FAULTS; docs/wire-format.md
   * "Native precopy"). Offered unless FERRY_NATIVE_PRECOPY=0 or FERRY_NATIVE_BULK=0 or --max-bandwidth;
   * never part of ALL_FEATURES.
   */
  NATIVE_PRECOPY: 1 << 5,
} as const;
export const ALL_FEATURES = Feature.POSTCOPY | Feature.RECOVERY | Feature.DIGEST | Feature.SOCKETS;

export const SESSION_ID_BYTES = 16;

export type ReceivedSet =
  | { encoding: 'bitmap'; startPage: number; pageCount: number; bits: Buffer }
  | { encoding: 'ranges'; ranges: PageRange[] };

export type Message =
  | { type: 'HELLO'; version: number; channel: ChannelKind; sessionId: Buffer; features: number }
  | { type: 'HELLO_ACK'; features: number }
  | { type: 'REFUSE'; reason: string }
  | {
      type: 'SETUP';
      moduleHash: string;
      moduleSize: number;
      memory: { bytes: number; maxBytes: number };
      preopens: string[];
      mode: MigrationMode;
    }
  | { type: 'SETUP_ACK'; needModule: boolean }
  | { type: 'MODULE'; offset: number; data: Buffer }
  | { type: 'PAGES'; offset: number; count: number; kind: PageKind; data: Buffer | null }
  | { type: 'GROW'; newBytes: number }
  | { type: 'PASS_END'; pass: number; dirtyPages: number }
  | { type: 'DISCARD'; ranges: PageRange[] }
  | { type: 'STATE'; totalBytes: number; offset: number; data: Buffer }
  /** The moved sockets: an opaque blob in chunks like STATE (its meaning is src/net's, not the codec's). */
  | { type: 'SOCKETS'; totalBytes: number; offset: number; data: Buffer }
  | { type: 'COMMIT' }
  /** bulkBufferBytes: the kernel buffers the destination gave its end of the bulk connection for the postcopy stream (0: unchanged); the source sizes its end alike. */
  | { type: 'RUNNING'; bulkBufferBytes: number }
  | { type: 'PAGE_REQUEST'; offset: number; count: number }
  | { type: 'RECEIVED_SET'; set: ReceivedSet }
  | { type: 'DIGEST'; pageCount: number; hex: string }
  | { type: 'DONE' }
  /** Destination → source after postcopy: what only the destination sees (its guest's faults). */
  | {
      type: 'FAULT_STATS';
      faults: number;
      pagesRequested: number;
      pagesPushed: number;
      /** Fault latency in microseconds (event → page placed), rounded to 0.1 µs on the wire. */
      latencyUs: { p50: number; p99: number; max: number };
      guestBlockedUs: number;
      durationMs: number;
    }
  | { type: 'ERROR'; code: string; message: string }
  | { type: 'PING'; nonce: number }
  | { type: 'PONG'; nonce: number };

export type MessageOf<T extends Message['type']> = Extract<Message, { type: T }>;
