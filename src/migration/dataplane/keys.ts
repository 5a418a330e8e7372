// Where a data plane connection's keys come from: a secret exported from the session's
// authenticated TLS connection (RFC 5705 / RFC 8446 §7.5), the way Network Time Security keys NTP
// (RFC 8915). Both ends of one TLS session export the same secret and nobody else can; each data
// plane connection then derives fresh per-direction keys from it and both ends' random hello
// nonces (native/dataplane/dp_wire.c, docs/wire-format.md "Native data plane").
import { createHash } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { DATAPLANE_SECRET_BYTES } from '../../sys/dataplane.js';

/** The exporter label (RFC 5705 labels for private use start with "EXPORTER"). */
export const DATAPLANE_EXPORTER_LABEL = 'EXPORTER-ferry-dataplane-v1';

/**
 * The data plane secret of a session: exported from its TLS connection with the session id as
 * context. Without TLS (security 'insecure', explicitly chosen) the secret is derived from the
 * session id alone: frames are still checked against accidents (a flipped bit is refused), but
 * anyone who sees the session id could forge them, exactly as plain TCP offers nothing more.
 */
export function dataplaneSecret(tls: TLSSocket | null, sessionId: Buffer): Buffer {
  if (!tls) return createHash('sha256').update('ferry dataplane without TLS\0').update(sessionId).digest();
  return tls.exportKeyingMaterial(DATAPLANE_SECRET_BYTES, DATAPLANE_EXPORTER_LABEL, sessionId);
}
