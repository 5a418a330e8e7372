// The transport-security flags shared by `run --incoming`, `migrate` and `serve-snapshot`:
// --insecure | --tls-psk FILE | --tls-cert FILE --tls-key FILE --tls-ca FILE. Exactly one choice.
import { readFileSync, statSync } from 'node:fs';
import type { Command } from 'commander';
import { UsageError } from './exit-codes.js';
import type { Security } from '../migration/transport/index.js';
import { parseHostPort } from '../migration/transport/host-port.js';

export interface TlsFlags {
  insecure?: boolean;
  tlsPsk?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

export function addTlsOptions(cmd: Command): Command {
  return cmd
    .option('--insecure', 'plain TCP, no authentication or encryption (explicit opt-in)')
    .option('--tls-psk <FILE>', 'TLS 1.3 with a pre-shared key: FILE holds the key, hex (e.g. openssl rand -hex 32)')
    .option('--tls-cert <FILE>', 'TLS 1.3 with mutual certificates: this side\'s certificate (PEM)')
    .option('--tls-key <FILE>', 'private key for --tls-cert (PEM)')
    .option('--tls-ca <FILE>', 'CA that signed the peer\'s certificate (PEM)');
}

/** The TLS material read from files, in the form the control API carries it. */
export interface TlsMaterial {
  insecure?: boolean;
  psk?: string;
  cert?: string;
  key?: string;
  ca?: string;
}

export function readTlsFlags(f: TlsFlags): TlsMaterial {
  const certs = [f.tlsCert, f.tlsKey, f.tlsCa].filter((x) => x !== undefined).length;
  const choices = (f.insecure ? 1 : 0) + (f.tlsPsk ? 1 : 0) + (certs > 0 ? 1 : 0);
  if (choices === 0) throw new UsageError('choose transport security: --tls-psk FILE, --tls-cert/--tls-key/--tls-ca, or --insecure');
  if (choices > 1) throw new UsageError('--insecure, --tls-psk and --tls-cert/--tls-key/--tls-ca exclude each other');
  if (f.insecure) return { insecure: true };
  const read = (p: string, flag: string) => {
    try {
      return readFileSync(p, 'utf8');
    } catch (err) {
      throw new UsageError(`${flag} ${p}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  };
  if (f.tlsPsk) {
    checkPrivate(f.tlsPsk, '--tls-psk');
    const hex = read(f.tlsPsk, '--tls-psk').trim();
    if (!/^([0-9a-fA-F]{2}){16,}$/.test(hex)) throw new UsageError(`--tls-psk ${f.tlsPsk}: expected at least 16 bytes of hex (openssl rand -hex 32)`);
    return { psk: hex.toLowerCase() };
  }
  if (certs !== 3) throw new UsageError('--tls-cert, --tls-key and --tls-ca go together');
  checkPrivate(f.tlsKey!, '--tls-key');
  return { cert: read(f.tlsCert!, '--tls-cert'), key: read(f.tlsKey!, '--tls-key'), ca: read(f.tlsCa!, '--tls-ca') };
}

/**
 * A secret file (pre-shared key, private key) that other users can read or write is refused, as
 * ssh refuses such a private key: anyone who can read it can impersonate either host, and anyone
 * who can write it can swap in a key of their own. Mode 0600 (or 0400) passes.
 */
export function checkPrivate(path: string, flag: string): void {
  let mode: number;
  try {
    mode = statSync(path).mode;
  } catch (err) {
    throw new UsageError(`${flag} ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  if ((mode & 0o077) !== 0) {
    const octal = (mode & 0o777).toString(8).padStart(4, '0');
    throw new UsageError(`${flag} ${path}: permissions ${octal} let other users ${mode & 0o044 ? 'read' : 'change'} this secret; refused (chmod 600 ${path})`);
  }
}

export function securityOf(m: TlsMaterial): Security {
  if (m.insecure) return { kind: 'insecure' };
  if (m.psk) return { kind: 'psk', key: Buffer.from(m.psk, 'hex') };
  if (m.cert && m.key && m.ca) return { kind: 'cert', cert: m.cert, key: m.key, ca: m.ca };
  throw new UsageError('no transport security given');
}

export function parseHostPortFlag(value: string, flag: string, allowZero = false): { host: string; port: number } {
  try {
    return parseHostPort(value, allowZero);
  } catch (err) {
    throw new UsageError(`${flag} ${value}: ${(err as Error).message}`);
  }
}
