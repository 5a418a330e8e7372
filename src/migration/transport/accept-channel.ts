// The accepting half of one migration connection, after its channel preface: TLS (if any), then
// HELLO → HELLO_ACK (or REFUSE). The listener runs it on the main thread for bulk channels; the
// destination's urgent thread runs its own for the urgent connections handed to it (a TLS session
// cannot move between threads, so the thread that will use a connection must also make it).
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { ALL_FEATURES, type ChannelKind, type MessageOf } from '../wire/messages.js';
import { WIRE_VERSION } from '../wire/limits.js';
import { TransportError, fromSocketError } from './errors.js';
import { FramedChannel } from './framed-channel.js';
import { serverTlsOptions, validateSecurity, type Security } from './security.js';
import { DEFAULT_HANDSHAKE_MS } from './handshake-limits.js';

/**
 * How long an unauthenticated connection may take, from its arrival to HELLO_ACK (preface, TLS
 * handshake, HELLO): a peer that is not a Ferry source costs the destination at most this long.
 */
export { DEFAULT_HANDSHAKE_MS };

export interface AcceptOptions {
  security: Security;
  /** Feature bits this side accepts (default: all this build knows). */
  features?: number;
  /** Limit on TLS handshake + HELLO for one connection (default DEFAULT_HANDSHAKE_MS). */
  handshakeTimeoutMs?: number;
  /** Return a reason to refuse a HELLO (sent back as REFUSE), or null to accept. */
  checkHello?: (hello: MessageOf<'HELLO'>) => string | null;
}

export interface AcceptedChannel {
  channel: FramedChannel;
  hello: MessageOf<'HELLO'>;
}

type TlsWaiter = { tcp: net.Socket; resolve: (s: tls.TLSSocket) => void; reject: (e: unknown) => void };

export class ChannelAcceptor {
  // tls.Server (not a bare TLSSocket, which never sets `authorized`) verifies the client
  // certificate; it never listens: connections are given to it with emit('connection'). The
  // result is enforced here (rejectUnauthorized off at the TLS layer) so that a refusal is
  // reported with its reason instead of a bare reset.
  private readonly tlsServer: tls.Server | null = null;
  private readonly waiting = new Map<string, TlsWaiter>();

  constructor(private readonly opts: AcceptOptions) {
    validateSecurity(opts.security);
    const security = opts.security;
    if (security.kind === 'insecure') return;
    const { isServer: _unused, ...tlsOpts } = serverTlsOptions(security);
    const server = tls.createServer({ ...tlsOpts, rejectUnauthorized: false, handshakeTimeout: opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS });
    server.on('secureConnection', (secure: tls.TLSSocket) => {
      const w = this.take(secure);
      if (!w) return void secure.destroy();
      if (security.kind === 'cert' && !secure.authorized) {
        secure.destroy();
        const why = String(secure.authorizationError ?? 'no client certificate');
        return w.reject(new TransportError('TLS', peerOf(w.tcp), `TLS handshake failed: client certificate not trusted (${why}; check the CA)`));
      }
      w.resolve(secure);
    });
    server.on('tlsClientError', (err: Error, secure: tls.TLSSocket) => this.take(secure)?.reject(err));
    this.tlsServer = server;
  }

  /**
   * Authenticates `tcp` (its preface, naming `preface`, already read) and exchanges HELLO. Resolves with the channel
   * once HELLO_ACK is sent; rejects (the socket destroyed) on any failure or refusal. `timeoutMs`:
   * what is left of the connection's handshake deadline (default: the whole of it).
   */
  async accept(tcp: net.Socket, preface: ChannelKind, timeoutMs = this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS): Promise<AcceptedChannel> {
    const peer = peerOf(tcp);
    timeoutMs = Math.max(1, Math.round(timeoutMs));
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TransportError('TIMEOUT', peer, `HELLO did not arrive within ${timeoutMs} ms`)), timeoutMs);
    });
    tcp.on('error', () => undefined); // reported through the stream
    let stream: Duplex = tcp;
    try {
      tcp.setKeepAlive(true, 10_000);
      if (this.tlsServer) stream = await Promise.race([timeout, this.secure(tcp)]);
      const channel = new FramedChannel({ stream, tcp, peer, tls: stream !== tcp });
      const hello = await Promise.race([timeout, channel.expect('HELLO')]);
      let refusal: string | null = null;
      if (hello.version !== WIRE_VERSION) refusal = `protocol version ${hello.version} is not supported (this side speaks ${WIRE_VERSION})`;
      else if (hello.channel !== preface) refusal = `HELLO names the ${hello.channel} channel, the connection's preface the ${preface} channel`;
      else refusal = this.opts.checkHello?.(hello) ?? null;
      if (refusal) {
        await channel.sendMessage({ type: 'REFUSE', reason: refusal }).catch(() => undefined);
        await channel.close();
        throw new TransportError('REFUSED', peer, `refused HELLO: ${refusal}`);
      }
      const features = hello.features & (this.opts.features ?? ALL_FEATURES);
      await Promise.race([timeout, channel.sendMessage({ type: 'HELLO_ACK', features })]);
      if (hello.channel === 'urgent') channel.setNoDelay(true);
      channel.session = { sessionId: Buffer.from(hello.sessionId), sessionHex: hello.sessionId.toString('hex'), channel: hello.channel, features };
      return { channel, hello: { ...hello, sessionId: Buffer.from(hello.sessionId) } };
    } catch (err) {
      stream.destroy();
      tcp.destroy();
      throw err instanceof TransportError ? err : fromSocketError(err, peer, this.tlsServer && stream === tcp ? 'TLS handshake' : 'HELLO');
    } finally {
      clearTimeout(timer);
    }
  }

  private secure(tcp: net.Socket): Promise<tls.TLSSocket> {
    return new Promise<tls.TLSSocket>((resolve, reject) => {
      // The key is taken now: a closed socket no longer knows its peer's address.
      const key = keyOf(tcp);
      const peer = peerOf(tcp);
      this.waiting.set(key, { tcp, resolve, reject });
      tcp.once('close', () => {
        const w = this.waiting.get(key);
        if (w?.tcp !== tcp) return;
        this.waiting.delete(key);
        reject(new TransportError('TLS', peer, 'connection closed during the TLS handshake'));
      });
      this.tlsServer!.emit('connection', tcp);
    });
  }

  private take(secure: tls.TLSSocket): TlsWaiter | undefined {
    const k = keyOf(secure);
    const w = this.waiting.get(k);
    this.waiting.delete(k);
    return w;
  }
}

// A TLS socket reports its TCP socket's peer: the two are paired by remote address and port.
const keyOf = (s: net.Socket) => `${s.remoteAddress}|${s.remotePort}`;
export const peerOf = (s: net.Socket) => `${s.remoteAddress}:${s.remotePort}`;
