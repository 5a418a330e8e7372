// The listening side (the migration destination). One port takes every connection of every
// migration. Each connection first names its channel with a one-byte preface, before TLS (see
// docs/wire-format.md): a bulk connection is authenticated here (TLS, then HELLO naming its channel
// and session, answered with HELLO_ACK or REFUSE); an urgent one may instead be handed, as a raw
// socket, to the thread that will use it (`urgentHandoff`), which authenticates it itself and
// gives it back with deliver(). Accepted channels are handed out one by one (accept()) or matched
// into bulk+urgent pairs by session id (acceptSession()). Connections that fail before HELLO_ACK
// never reach the caller; they are reported on the 'rejected' event.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import type { MessageOf } from '../wire/messages.js';
import { CHANNEL_PREFACE, GO_AHEAD } from '../wire/limits.js';
import { dup } from '../../sys/fd.js';
import { TransportError, fromSocketError } from './errors.js';
import type { FramedChannel } from './framed-channel.js';
import { ChannelAcceptor, DEFAULT_HANDSHAKE_MS, peerOf, type AcceptOptions, type AcceptedChannel } from './accept-channel.js';

export type { AcceptedChannel } from './accept-channel.js';

export interface ListenOptions extends AcceptOptions {
  host: string;
  /** 0 picks a free port (read it back from `port`). */
  port: number;
  /**
   * Urgent connections go, right after their preface, to this callback as a raw socket descriptor
   * (a dup: the listener's own socket is closed) instead of being authenticated here. Whoever takes
   * it sends GO_AHEAD, authenticates it and gives it back with deliver().
   */
  urgentHandoff?: (fd: number, peer: string) => void;
}

/** A channel held by another thread: the listener pairs it, its owner uses it. */
export interface RemoteChannel {
  readonly remote: true;
  readonly peer: string;
  destroy(err?: Error): void;
}

export interface SessionChannels {
  sessionHex: string;
  bulk: FramedChannel;
  /** A RemoteChannel when the listener hands urgent connections off (urgentHandoff). */
  urgent: FramedChannel | RemoteChannel;
}

/** A session as acceptBulk() hands it over: its urgent channel only if that arrived first. */
export interface BulkFirst extends Omit<SessionChannels, 'urgent'> {
  urgent: SessionChannels['urgent'] | null;
}

type Delivered = { channel: FramedChannel | RemoteChannel; hello: MessageOf<'HELLO'> };

export interface MigrationListener extends EventEmitter {
  readonly host: string;
  readonly port: number;
  /** Next authenticated channel, in arrival order (never a handed-off one: use acceptSession()). */
  accept(): Promise<AcceptedChannel>;
  /** Next session whose bulk and urgent channels have both arrived. Do not mix with accept(). */
  acceptSession(): Promise<SessionChannels>;
  /**
   * Next session whose bulk channel has arrived, with its urgent channel if that came first (else
   * null: take it with acceptUrgent()). The stream can start while the urgent one is on its way.
   */
  acceptBulk(): Promise<BulkFirst>;
  /** The urgent channel of a session, when it arrives (at once if it already has). */
  acceptUrgent(sessionHex: string): Promise<FramedChannel | RemoteChannel>;
  /** A handed-off connection, authenticated by its new owner, back for pairing. */
  deliver(c: { channel: RemoteChannel; hello: MessageOf<'HELLO'> }): void;
  /** Reports a connection that failed before HELLO_ACK (the 'rejected' event). */
  reject(err: unknown, peer: string, phase: string): void;
  /** Stops listening; channels already accepted stay open. */
  close(): Promise<void>;
  on(event: 'rejected', listener: (err: TransportError) => void): this;
}

class Listener extends EventEmitter implements MigrationListener {
  private readonly ready: Delivered[] = [];
  private readonly waiters: Array<{ resolve: (c: Delivered) => void; reject: (e: Error) => void }> = [];
  private readonly partial = new Map<string, SessionEntry>();
  private closedError: Error | null = null;
  private readonly acceptor: ChannelAcceptor;
  port = 0;

  constructor(
    private readonly server: net.Server,
    readonly host: string,
    private readonly opts: ListenOptions,
  ) {
    super();
    this.acceptor = new ChannelAcceptor(opts);
  }

  accept(): Promise<AcceptedChannel> {
    return this.next() as Promise<AcceptedChannel>;
  }

  private next(): Promise<Delivered> {
    const c = this.ready.shift();
    if (c) return Promise.resolve(c);
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  async acceptSession(): Promise<SessionChannels> {
    for (;;) {
      const entry = this.file(await this.next());
      if (entry.bulk && entry.urgent) {
        this.partial.delete(entry.key);
        return { sessionHex: entry.key, bulk: bulkOf(entry.bulk), urgent: entry.urgent };
      }
    }
  }

  async acceptBulk(): Promise<BulkFirst> {
    for (;;) {
      const delivered = await this.next();
      const entry = this.file(delivered);
      if (delivered.hello.channel === 'bulk') {
        this.partial.delete(entry.key);
        return { sessionHex: entry.key, bulk: bulkOf(entry.bulk!), urgent: entry.urgent ?? null };
      }
    }
  }

  async acceptUrgent(sessionHex: string): Promise<FramedChannel | RemoteChannel> {
    for (;;) {
      const entry = this.partial.get(sessionHex);
      if (entry?.urgent) {
        const urgent = entry.urgent;
        delete entry.urgent;
        if (!entry.bulk) this.partial.delete(sessionHex);
        return urgent;
      }
      this.file(await this.next());
    }
  }

  /** Files a channel under its session; a second channel of the same kind replaces the first. */
  private file({ channel, hello }: Delivered): SessionEntry {
    const key = hello.sessionId.toString('hex');
    const entry = this.partial.get(key) ?? { key };
    entry[hello.channel]?.destroy(new TransportError('PROTOCOL', channel.peer, `replaced by a newer ${hello.channel} channel of session ${key}`));
    entry[hello.channel] = channel;
    this.partial.set(key, entry);
    return entry;
  }

  close(): Promise<void> {
    this.closedError = new Error(`listener on ${this.host}:${this.port} is closed`);
    for (const w of this.waiters.splice(0)) w.reject(this.closedError);
    for (const entry of this.partial.values()) for (const c of [entry.bulk, entry.urgent]) c?.destroy();
    this.partial.clear();
    for (const c of this.ready.splice(0)) c.channel.destroy();
    // net.Server.close() waits for every open connection before its callback; accepted channels
    // belong to the caller, so only wait for the listening socket itself to go away.
    this.server.close();
    return Promise.resolve();
  }

  /** A TCP connection arrived: its first byte says which channel it carries. */
  onConnection(tcp: net.Socket): void {
    const peer = peerOf(tcp);
    tcp.on('error', () => undefined); // reported below or through the channel
    const timeoutMs = this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS;
    const timer = setTimeout(() => fail(new TransportError('TIMEOUT', peer, `no channel preface within ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      tcp.off('close', onClose); // one report per connection, not a second one for the close
      tcp.destroy();
      this.reject(err, peer, 'preface');
    };
    const onClose = () => fail(new TransportError('CLOSED', peer, 'connection closed before its channel preface'));
    tcp.once('close', onClose);
    tcp.once('data', (chunk: Buffer) => {
      clearTimeout(timer);
      tcp.off('close', onClose);
      // The peer sends nothing more before GO_AHEAD: exactly one byte, or this is not a Ferry source.
      const channel = chunk.length === 1 ? (chunk[0] === CHANNEL_PREFACE.bulk ? 'bulk' : chunk[0] === CHANNEL_PREFACE.urgent ? 'urgent' : null) : null;
      if (!channel) return fail(new TransportError('PROTOCOL', peer, `no channel preface: the connection began with ${describeStart(chunk)} (is the peer a Ferry source of wire version 2 or later?)`));
      if (channel === 'urgent' && this.opts.urgentHandoff) {
        const fd = (tcp as unknown as { _handle?: { fd?: number } })._handle?.fd;
        if (fd === undefined || fd < 0) return fail(new Error('internal: no descriptor under an accepted socket'));
        let copy: number;
        try {
          copy = dup(fd);
        } catch (err) {
          return fail(err as Error);
        }
        tcp.destroy(); // closes our descriptor only: the copy keeps the connection
        this.opts.urgentHandoff(copy, peer);
        return;
      }
      tcp.write(Buffer.from([GO_AHEAD]));
      this.acceptor.accept(tcp, channel).then(
        (c) => this.deliver(c),
        (err: unknown) => this.reject(err, peer, 'HELLO'),
      );
    });
  }

  reject(err: unknown, peer: string, phase: string): void {
    this.emit('rejected', err instanceof TransportError ? err : fromSocketError(err, peer, phase));
  }

  deliver(c: Delivered): void {
    if (this.closedError) {
      c.channel.destroy();
      return;
    }
    const w = this.waiters.shift();
    if (w) w.resolve(c);
    else this.ready.push(c);
  }
}

/** The channels of one session that have arrived and are not yet taken. */
type SessionEntry = { key: string } & Partial<Record<'bulk' | 'urgent', FramedChannel | RemoteChannel>>;

function bulkOf(c: FramedChannel | RemoteChannel): FramedChannel {
  if ('remote' in c) throw new Error('internal: a bulk channel held by another thread');
  return c;
}

function describeStart(chunk: Buffer): string {
  const hex = chunk.subarray(0, 8).toString('hex');
  return chunk[0] === 0x16 ? `a TLS handshake (${hex}…)` : `${chunk.length} byte(s) ${hex}${chunk.length > 8 ? '…' : ''}`;
}

/** Starts listening; resolves once the port is bound. */
export async function listen(opts: ListenOptions): Promise<MigrationListener> {
  if (!Number.isInteger(opts.port) || opts.port < 0 || opts.port > 65535) throw new RangeError(`listen: port must be 0..65535, got ${opts.port}`);
  // Plain TCP whatever the security: TLS starts after the preface (ChannelAcceptor).
  const server = net.createServer();
  const listener = new Listener(server, opts.host, opts);
  server.on('connection', (tcp: net.Socket) => listener.onConnection(tcp));
  server.on('error', (e) => listener.reject(e, `${opts.host}:${opts.port}`, 'accept'));
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(fromSocketError(e, `${opts.host}:${opts.port}`, 'listen')));
    server.listen(opts.port, opts.host, () => resolve());
  });
  const addr = server.address();
  listener.port = typeof addr === 'object' && addr ? addr.port : opts.port;
  return listener;
}
