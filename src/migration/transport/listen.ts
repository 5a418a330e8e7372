// The listening side (the migration destination). One port takes every connection of every
// migration: each connection authenticates (TLS), sends HELLO naming its channel and session, and
// is answered with HELLO_ACK (or REFUSE). Accepted channels are handed out one by one (accept()) or
// matched into bulk+urgent pairs by session id (acceptSession()). Connections that fail before
// HELLO_ACK never reach the caller; they are reported on the 'rejected' event.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import { ALL_FEATURES, type MessageOf } from '../wire/messages.js';
import { WIRE_VERSION } from '../wire/limits.js';
import { TransportError, fromSocketError } from './errors.js';
import { FramedChannel } from './framed-channel.js';
import { serverTlsOptions, validateSecurity, type Security } from './security.js';

const DEFAULT_HANDSHAKE_MS = 10_000;

export interface ListenOptions {
  host: string;
  /** 0 picks a free port (read it back from `port`). */
  port: number;
  security: Security;
  /** Feature bits this side accepts (default: all this build knows). */
  features?: number;
  /** Limit on TLS handshake + HELLO for one connection (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Return a reason to refuse a HELLO (sent back as REFUSE), or null to accept. */
  checkHello?: (hello: MessageOf<'HELLO'>) => string | null;
}

export interface AcceptedChannel {
  channel: FramedChannel;
  hello: MessageOf<'HELLO'>;
}

export interface SessionChannels {
  sessionHex: string;
  bulk: FramedChannel;
  urgent: FramedChannel;
}

export interface MigrationListener extends EventEmitter {
  readonly host: string;
  readonly port: number;
  /** Next authenticated channel, in arrival order. */
  accept(): Promise<AcceptedChannel>;
  /** Next session whose bulk and urgent channels have both arrived. Do not mix with accept(). */
  acceptSession(): Promise<SessionChannels>;
  /** Stops listening; channels already accepted stay open. */
  close(): Promise<void>;
  on(event: 'rejected', listener: (err: TransportError) => void): this;
}

class Listener extends EventEmitter implements MigrationListener {
  private readonly ready: AcceptedChannel[] = [];
  private readonly waiters: Array<{ resolve: (c: AcceptedChannel) => void; reject: (e: Error) => void }> = [];
  private readonly partial = new Map<string, Partial<Record<'bulk' | 'urgent', FramedChannel>>>();
  private closedError: Error | null = null;
  port = 0;

  constructor(
    private readonly server: net.Server,
    readonly host: string,
    private readonly opts: ListenOptions,
  ) {
    super();
  }

  accept(): Promise<AcceptedChannel> {
    const c = this.ready.shift();
    if (c) return Promise.resolve(c);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  async acceptSession(): Promise<SessionChannels> {
    for (;;) {
      const { channel, hello } = await this.accept();
      const key = hello.sessionId.toString('hex');
      const entry = this.partial.get(key) ?? {};
      entry[hello.channel]?.destroy(new TransportError('PROTOCOL', channel.peer, `replaced by a newer ${hello.channel} channel of session ${key}`));
      entry[hello.channel] = channel;
      if (entry.bulk && entry.urgent) {
        this.partial.delete(key);
        return { sessionHex: key, bulk: entry.bulk, urgent: entry.urgent };
      }
      this.partial.set(key, entry);
    }
  }

  close(): Promise<void> {
    this.closedError = new Error(`listener on ${this.host}:${this.port} is closed`);
    for (const w of this.waiters.splice(0)) w.reject(this.closedError);
    for (const entry of this.partial.values()) for (const c of Object.values(entry)) c?.destroy();
    this.partial.clear();
    for (const c of this.ready.splice(0)) c.channel.destroy();
    // net.Server.close() waits for every open connection before its callback; accepted channels
    // belong to the caller, so only wait for the listening socket itself to go away.
    this.server.close();
    return Promise.resolve();
  }

  /** A TCP connection arrived (insecure), or a TLS handshake completed over `tcp`. */
  async handshake(tcp: net.Socket, stream: Duplex): Promise<void> {
    const peer = `${tcp.remoteAddress}:${tcp.remotePort}`;
    const timeoutMs = this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS;
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new TransportError('TIMEOUT', peer, `HELLO did not arrive within ${timeoutMs} ms`)), timeoutMs);
    });
    tcp.on('error', () => undefined); // reported through the stream
    try {
      tcp.setKeepAlive(true, 10_000);
      const channel = new FramedChannel({ stream, tcp, peer, tls: stream !== tcp });
      const hello = await Promise.race([timeout, channel.expect('HELLO')]);
      let refusal: string | null = null;
      if (hello.version !== WIRE_VERSION) refusal = `protocol version ${hello.version} is not supported (this side speaks ${WIRE_VERSION})`;
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
      this.deliver({ channel, hello: { ...hello, sessionId: Buffer.from(hello.sessionId) } });
    } catch (err) {
      stream.destroy();
      tcp.destroy();
      this.reject(err, peer, 'HELLO');
    } finally {
      clearTimeout(timer);
    }
  }

  reject(err: unknown, peer: string, phase: string): void {
    this.emit('rejected', err instanceof TransportError ? err : fromSocketError(err, peer, phase));
  }

  private deliver(c: AcceptedChannel): void {
    if (this.closedError) {
      c.channel.destroy();
      return;
    }
    const w = this.waiters.shift();
    if (w) w.resolve(c);
    else this.ready.push(c);
  }
}

/** Starts listening; resolves once the port is bound. */
export async function listen(opts: ListenOptions): Promise<MigrationListener> {
  validateSecurity(opts.security);
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new RangeError(`listen: port must be 0..65535, got ${opts.port}`);
  const security = opts.security;
  let server: net.Server;
  let listener: Listener;
  if (security.kind === 'insecure') {
    server = net.createServer();
    listener = new Listener(server, opts.host, opts);
    server.on('connection', (tcp: net.Socket) => void listener.handshake(tcp, tcp));
  } else {
    // tls.Server (not a bare TLSSocket, which never sets `authorized`) verifies the client
    // certificate; we enforce the result ourselves in 'secureConnection' (rejectUnauthorized off
    // at the TLS layer) so that a refusal is reported with its reason instead of a bare reset.
    // Byte counts need the TCP socket under each TLS socket: tls.Server wraps it synchronously in
    // its own 'connection' listener, so ours (added later) sees it first; pair them by remote port.
    const { isServer: _unused, ...tlsOpts } = serverTlsOptions(security);
    const tlsServer = tls.createServer({ ...tlsOpts, rejectUnauthorized: false, handshakeTimeout: opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS });
    server = tlsServer;
    listener = new Listener(server, opts.host, opts);
    const tcpByPeer = new Map<string, net.Socket>();
    const key = (s: net.Socket) => `${s.remoteAddress}|${s.remotePort}`;
    tlsServer.on('connection', (tcp: net.Socket) => {
      const k = key(tcp);
      tcpByPeer.set(k, tcp);
      tcp.once('close', () => {
        if (tcpByPeer.get(k) === tcp) tcpByPeer.delete(k);
      });
    });
    tlsServer.on('secureConnection', (secure: tls.TLSSocket) => {
      const tcp = tcpByPeer.get(key(secure));
      tcpByPeer.delete(key(secure));
      if (security.kind === 'cert' && !secure.authorized) {
        secure.destroy();
        tcp?.destroy();
        const why = String(secure.authorizationError ?? 'no client certificate');
        listener.reject(new TransportError('TLS', key(secure).replace('|', ':'), `TLS handshake failed: client certificate not trusted (${why}; check the CA)`), '', 'TLS handshake');
        return;
      }
      if (!tcp) {
        secure.destroy();
        listener.reject(new Error('internal: TLS connection without its TCP socket'), key(secure), 'accept');
        return;
      }
      void listener.handshake(tcp, secure);
    });
    tlsServer.on('tlsClientError', (err: Error, secure: tls.TLSSocket) => {
      listener.reject(err, `${secure.remoteAddress ?? '?'}:${secure.remotePort ?? '?'}`, 'TLS handshake');
    });
  }
  server.on('error', (e) => listener.reject(e, `${opts.host}:${opts.port}`, 'accept'));
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(fromSocketError(e, `${opts.host}:${opts.port}`, 'listen')));
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.address();
  listener.port = typeof addr === 'object' && addr ? addr.port : opts.port;
  return listener;
}
