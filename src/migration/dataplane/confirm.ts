// Key confirmation of a native data plane connection, at connect time: the connection is refused
// before it is kept unless the source proves it holds the session's data plane secret (exported
// from the bulk channel's TLS session, keys.ts), and the destination proves it back. A stray or
// hostile connection thus ends in the listener, at once, instead of at the commit when the native
// threads exchange FINISHED frames (docs/wire-format.md "Native data plane", "Key confirmation").
//
//   source → 'd'
//   dest   → '+' (GO_AHEAD) || challenge (32 random bytes)
//   source → session id (16) || source nonce (32) || HMAC-SHA256(secret, SOURCE_LABEL || challenge || source nonce)
//   dest   → HMAC-SHA256(secret, DESTINATION_LABEL || challenge || source nonce), or it closes
//
// Both proofs cover both fresh nonces, so neither can be replayed on another connection.
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import { SESSION_ID_BYTES } from '../wire/messages.js';

export const CHALLENGE_BYTES = 32;
const NONCE_BYTES = 32;
const PROOF_BYTES = 32;
/** What the source sends after the challenge: session id, its nonce, its proof. */
export const CONFIRMATION_BYTES = SESSION_ID_BYTES + NONCE_BYTES + PROOF_BYTES;
/** What the destination answers once the source's proof holds. */
export const ACCEPTANCE_BYTES = PROOF_BYTES;

const SOURCE_LABEL = Buffer.from('ferry dp1 confirm source\0');
const DESTINATION_LABEL = Buffer.from('ferry dp1 confirm destination\0');

export interface Confirmation {
  sessionId: Buffer;
  sourceNonce: Buffer;
  proof: Buffer;
}

export function newChallenge(): Buffer {
  return randomBytes(CHALLENGE_BYTES);
}

function proof(label: Buffer, secret: Uint8Array, challenge: Uint8Array, sourceNonce: Uint8Array): Buffer {
  return createHmac('sha256', secret).update(label).update(challenge).update(sourceNonce).digest();
}

/** The source's answer to a challenge, ready to send. */
export function confirm(secret: Uint8Array, sessionId: Uint8Array, challenge: Uint8Array): { bytes: Buffer; sourceNonce: Buffer } {
  if (sessionId.length !== SESSION_ID_BYTES) throw new RangeError(`session id of ${sessionId.length} bytes`);
  const sourceNonce = randomBytes(NONCE_BYTES);
  return { bytes: Buffer.concat([sessionId, sourceNonce, proof(SOURCE_LABEL, secret, challenge, sourceNonce)]), sourceNonce };
}

export function parseConfirmation(bytes: Buffer): Confirmation {
  if (bytes.length !== CONFIRMATION_BYTES) throw new RangeError(`a confirmation is ${CONFIRMATION_BYTES} bytes, not ${bytes.length}`);
  return {
    sessionId: bytes.subarray(0, SESSION_ID_BYTES),
    sourceNonce: bytes.subarray(SESSION_ID_BYTES, SESSION_ID_BYTES + NONCE_BYTES),
    proof: bytes.subarray(SESSION_ID_BYTES + NONCE_BYTES),
  };
}

/** The destination's check of the source's proof (constant time); the acceptance to send when it holds, else null. */
export function accept(secret: Uint8Array, challenge: Uint8Array, c: Confirmation): Buffer | null {
  if (!timingSafeEqual(proof(SOURCE_LABEL, secret, challenge, c.sourceNonce), c.proof)) return null;
  return proof(DESTINATION_LABEL, secret, challenge, c.sourceNonce);
}

/** The source's check of the destination's acceptance (constant time). */
export function acceptanceHolds(secret: Uint8Array, challenge: Uint8Array, sourceNonce: Uint8Array, acceptance: Buffer): boolean {
  return acceptance.length === PROOF_BYTES && timingSafeEqual(proof(DESTINATION_LABEL, secret, challenge, sourceNonce), acceptance);
}
