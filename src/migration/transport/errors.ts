// Transport-level failures, each naming the peer (host:port) and saying what went wrong in words.
export type TransportErrorCode =
  | 'CONNECT_REFUSED' // nothing listens at host:port
  | 'UNREACHABLE' // no route, DNS failure
  | 'TIMEOUT' // connect, handshake or read took too long
  | 'RESET' // the peer reset or aborted the connection
  | 'CLOSED' // the peer closed the connection where a message was expected
  | 'TLS' // handshake failed: wrong key, untrusted certificate, protocol mismatch
  | 'REFUSED' // the peer answered with REFUSE
  | 'REMOTE' // the peer answered with ERROR
  | 'PROTOCOL' // the peer sent an unexpected or malformed message
  | 'IO'; // any other socket error

export class TransportError extends Error {
  override readonly name = 'TransportError';
  constructor(
    readonly code: TransportErrorCode,
    /** "host:port" of the peer. */
    readonly peer: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(`${peer}: ${message}`, options);
  }
}

/** Wraps a Node socket/TLS error into a TransportError with a clear message. */
export function fromSocketError(err: unknown, peer: string, during: string): TransportError {
  if (err instanceof TransportError) return err;
  const e = err as NodeJS.ErrnoException & { reason?: string; library?: string };
  const code = e?.code ?? '';
  const text = e?.message ?? String(err);
  switch (code) {
    case 'ECONNREFUSED':
      return new TransportError('CONNECT_REFUSED', peer, `connection refused during ${during} (ECONNREFUSED): is a ferry destination listening there?`, { cause: err });
    case 'ECONNRESET':
    case 'EPIPE':
    case 'ECONNABORTED':
      return new TransportError('RESET', peer, `connection reset by peer during ${during} (${code})`, { cause: err });
    case 'ETIMEDOUT':
      return new TransportError('TIMEOUT', peer, `connection timed out during ${during} (ETIMEDOUT)`, { cause: err });
    case 'EHOSTUNREACH':
    case 'ENETUNREACH':
    case 'ENOTFOUND':
    case 'EAI_AGAIN':
      return new TransportError('UNREACHABLE', peer, `host unreachable during ${during} (${code})`, { cause: err });
  }
  if (code.startsWith('ERR_SSL') || code.startsWith('ERR_TLS') || /SSL routines|alert|certificate|self.signed|verify/i.test(text) || isCertCode(code)) {
    return new TransportError('TLS', peer, `TLS handshake failed during ${during}: ${describeTls(code, text)}`, { cause: err });
  }
  return new TransportError('IO', peer, `socket error during ${during}: ${text}${code ? ` (${code})` : ''}`, { cause: err });
}

function isCertCode(code: string): boolean {
  return /CERT|SIGNATURE|ISSUER|SELF_SIGNED|UNABLE_TO/.test(code);
}

function describeTls(code: string, text: string): string {
  if (/binder does not verify|illegal parameter|decrypt error|bad record mac/i.test(text)) {
    return `the peers do not share the same pre-shared key (${text.split('\n')[0]!.trim()})`;
  }
  if (/psk identity|no suitable|handshake failure/i.test(text)) return `no common credential (wrong PSK identity, or one side not using PSK?) (${firstLine(text)})`;
  if (isCertCode(code) || /certificate/i.test(text)) return `certificate not trusted (${code || firstLine(text)}; check the CA)`;
  return firstLine(text) + (code ? ` (${code})` : '');
}

function firstLine(s: string): string {
  return s.split('\n')[0]!.trim();
}
