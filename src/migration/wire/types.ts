// The table of frame types. Numbers are the wire values; names are what the code uses.
// Grouped by range so new types have an obvious home: 0x0_ handshake, 0x1_ memory and state
// stream, 0x2_ postcopy/recovery/verification, 0x3_ control. Unknown numbers are rejected by the
// decoder (a version bump is needed to add one).

export const FrameType = {
  HELLO: 0x01,
  HELLO_ACK: 0x02,
  REFUSE: 0x03,
  SETUP: 0x04,
  SETUP_ACK: 0x05,
  MODULE: 0x06,
  PAGES: 0x10,
  GROW: 0x11,
  PASS_END: 0x12,
  DISCARD: 0x13,
  STATE: 0x14,
  COMMIT: 0x15,
  RUNNING: 0x16,
  SOCKETS: 0x17,
  PAGE_REQUEST: 0x20,
  RECEIVED_SET: 0x21,
  DIGEST: 0x22,
  DONE: 0x23,
  FAULT_STATS: 0x24,
  ERROR: 0x30,
  PING: 0x31,
  PONG: 0x32,
} as const;

export type FrameTypeName = keyof typeof FrameType;
export type FrameTypeValue = (typeof FrameType)[FrameTypeName];

const namesByValue = new Map<number, FrameTypeName>(
  (Object.entries(FrameType) as [FrameTypeName, number][]).map(([name, value]) => [value, name]),
);

export function frameTypeName(value: number): FrameTypeName | undefined {
  return namesByValue.get(value);
}

export function isKnownFrameType(value: number): value is FrameTypeValue {
  return namesByValue.has(value);
}
