// How a migration connection is protected. Plain TCP only when asked for explicitly.
//  - psk:  TLS 1.3 with an external pre-shared key (no certificates). The cipher suite is pinned to
//          TLS_AES_128_GCM_SHA256 because a TLS 1.3 PSK is bound to a hash (SHA-256 here); both
//          sides use Node's `pskCallback`. Verified working on Node 20 with OpenSSL 3.0.
//  - cert: TLS 1.3 with mutual certificates: the server requests and verifies the client's
//          certificate against `ca`, the client verifies the server's against `ca` (and its name).
import type { ConnectionOptions, SecureContextOptions, TLSSocketOptions } from 'node:tls';

export type Security =
  | { kind: 'insecure' }
  | { kind: 'psk'; key: Buffer; identity?: string }
  | { kind: 'cert'; cert: string | Buffer; key: string | Buffer; ca: string | Buffer | Array<string | Buffer>; serverName?: string };

export const PSK_CIPHER = 'TLS_AES_128_GCM_SHA256';
export const DEFAULT_PSK_IDENTITY = 'ferry';
const MIN_PSK_BYTES = 16;

export function validateSecurity(security: Security): void {
  if (!security || typeof security !== 'object') throw new TypeError('security must be { kind: "insecure" | "psk" | "cert", ... }');
  switch (security.kind) {
    case 'insecure':
      return;
    case 'psk':
      if (!Buffer.isBuffer(security.key) || security.key.length < MIN_PSK_BYTES) {
        throw new TypeError(`security.key must be a Buffer of at least ${MIN_PSK_BYTES} bytes (use 32 random bytes)`);
      }
      if (security.identity !== undefined && (typeof security.identity !== 'string' || security.identity.length === 0 || security.identity.length > 128)) {
        throw new TypeError('security.identity must be a string of 1..128 characters');
      }
      return;
    case 'cert':
      for (const field of ['cert', 'key', 'ca'] as const) {
        if (!security[field] || (Array.isArray(security[field]) && (security[field] as unknown[]).length === 0)) {
          throw new TypeError(`security.${field} is required for mutual certificate authentication`);
        }
      }
      return;
    default:
      throw new TypeError(`unknown security kind ${JSON.stringify((security as { kind: unknown }).kind)}`);
  }
}

/** Options for a server-side TLSSocket wrapped around an accepted TCP socket. */
export function serverTlsOptions(security: Exclude<Security, { kind: 'insecure' }>): TLSSocketOptions & SecureContextOptions {
  if (security.kind === 'psk') {
    const identity = security.identity ?? DEFAULT_PSK_IDENTITY;
    return {
      isServer: true,
      minVersion: 'TLSv1.3',
      ciphers: PSK_CIPHER,
      // Returning null for an unknown identity fails the handshake before any data moves.
      pskCallback: (_socket: unknown, id: string) => (id === identity ? security.key : null),
    } as TLSSocketOptions & SecureContextOptions;
  }
  return {
    isServer: true,
    minVersion: 'TLSv1.3',
    cert: security.cert,
    key: security.key,
    ca: security.ca,
    requestCert: true,
    rejectUnauthorized: true,
  };
}

/** Options for tls.connect() over an already connected TCP socket. */
export function clientTlsOptions(security: Exclude<Security, { kind: 'insecure' }>, host: string): ConnectionOptions {
  if (security.kind === 'psk') {
    const identity = security.identity ?? DEFAULT_PSK_IDENTITY;
    return {
      minVersion: 'TLSv1.3',
      ciphers: PSK_CIPHER,
      pskCallback: () => ({ psk: security.key, identity }),
      // No certificates are involved: the PSK authenticates both sides.
      checkServerIdentity: () => undefined,
    };
  }
  return {
    minVersion: 'TLSv1.3',
    cert: security.cert,
    key: security.key,
    ca: security.ca,
    rejectUnauthorized: true,
    servername: security.serverName ?? (isIp(host) ? undefined : host),
    host: security.serverName ?? host,
  };
}

function isIp(host: string): boolean {
  return /^[\d.]+$/.test(host) || host.includes(':');
}

/** A Security as it arrives on another thread (Buffers cloned into plain Uint8Arrays), usable again. */
export function reviveSecurity(s: Security): Security {
  const buf = (v: string | Uint8Array) => (typeof v === 'string' ? v : Buffer.from(v));
  switch (s.kind) {
    case 'insecure':
      return s;
    case 'psk':
      return { ...s, key: Buffer.from(s.key) };
    case 'cert':
      return { ...s, cert: buf(s.cert), key: buf(s.key), ca: Array.isArray(s.ca) ? s.ca.map(buf) : buf(s.ca) };
  }
}
