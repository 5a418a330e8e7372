// Typed messages and their payload codecs, in three parts: the message types (message-types.ts),
// the encoder (encode.ts) and the decoder (decode.ts), which share their field checks
// (field-checks.ts). Byte layouts are documented in docs/wire-format.md.
export * from './message-types.js';
export { encodeMessage, encodePages, encodeDiscardRuns } from './encode.js';
export { decodeMessage } from './decode.js';
