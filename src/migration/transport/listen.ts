// The listening side (the migration destination). One port takes every connection of every
// migration. Each connection first names its channel with a one-byte preface, before TLS (see
// docs/wire-format.md): a bulk connection is authenticated here (TLS, then HELLO naming its channel
// and session, answered with HELLO_ACK or REFUSE); an urgent one may instead be handed, as a raw
// socket, to the thread that will use it (`urgentHandoff`), which authenticates it itself and
// gives it back with deliver(). Accepted channels are handed out one by one (accept()) or matched
// into bulk+urgent pairs by session id (acceptSession()). Connections that fail before HELLO_ACK
// never reach the caller; they are reported on the 'rejected' event, and the listener goes on.
// What a peer that is not a Ferry source can cost is bounded: one deadline per connection from
// its arrival to HELLO_ACK (`handshakeTimeoutMs`), and at most `maxUnauthenticated` connections
// in that state at once (more are closed as they arrive). Once the caller has taken a session it
// may restrict the listener to it (restrictTo()): other sessions are then refused at HELLO.
import { EventEmitter } from 'node:events';
import net from 'node:net';
import type { MessageOf } from '../wire/messages.js';
import { CHANNEL_PREFACE, DATAPLANE_PREFACE, GO_AHEAD } from '../wire/limits.js';
import { close, dup, write } from '../../sys/fd.js';
import { TransportError, fromSocketError } from './errors.js';
import type { FramedChannel } from './framed-channel.js';
import { ChannelAcceptor, DEFAULT_HANDSHAKE_MS, peerOf, type AcceptOptions, type AcceptedChannel } from './accept-channel.js';
import { DEFAULT_MAX_UNAUTHENTICATED } from './handshake-limits.js';

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
  urgentHandoff?: (fd: number, peer: string, timeoutMs: number) => void;
  /**
   * Native data plane connections (DATAPLANE_PREFACE) go, right after their preface, to this
   * callback as a raw socket descriptor (a dup). Its owner's native thread authenticates it (the
   * data plane's FINISHED frames, keyed from the session's TLS exporter). Without it, that preface
   * is refused like any unknown one.
   */
  dataplaneHandoff?: (fd: number, peer: string) => void;
  /** Connections still before HELLO_ACK at once (default DEFAULT_MAX_UNAUTHENTICATED); more are closed on arrival. */
  maxUnauthenticated?: number;
}

export { DEFAULT_MAX_UNAUTHENTICATED };
/** Sessions with an urgent channel but no bulk one yet, kept at most (the oldest goes first). */
const MAX_PARTIAL_SESSIONS = 16;

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
  /**
   * From now on only `sessionHex` is admitted (null: any session again). Channels of other sessions
   * are refused at HELLO ("busy with another migration"), and those already waiting are closed.
   */
  restrictTo(sessionHex: string | null): void;
  /** Closes the waiting channels of one session (e.g. one refused at SETUP). */
  forget(sessionHex: string): void;
  /** Connections now between their arrival and HELLO_ACK (or their refusal). */
  readonly unauthenticated: number;
  /** Stops listening; channels already accepted stay open. */
  close(): Promise<void>;
  on(event: 'rejected', listener: (err: TransportError, phase: string) => void): this;
}

class Listener extends EventEmitter implements MigrationListener {
  private readonly ready: Delivered[] = [];
  private readonly waiters: Array<{ resolve: (c: Delivered) => void; reject: (e: Error) => void }> = [];
  private readonly partial = new Map<string, SessionEntry>();
  private closedError: Error | null = null;
  private readonly acceptor: ChannelAcceptor;
  /** restrictTo(): the one session admitted, or null for any. */
  private only: string | null = null;
  /** Connections on this thread before HELLO_ACK, and urgent ones handed off and not yet back. */
  private pendingHere = 0;
  private pendingHandedOff = 0;
  port = 0;

  constructor(
    private readonly server: net.Server,
    readonly host: string,
    private readonly opts: ListenOptions,
  ) {
    super();
    const check = opts.checkHello;
    this.acceptor = new ChannelAcceptor({ ...opts, checkHello: (hello) => this.busyWith(hello.sessionId.toString('hex')) ?? check?.(hello) ?? null });
  }

  get unauthenticated(): number {
    return this.pendingHere + this.pendingHandedOff;
  }

  private busyWith(sessionHex: string): string | null {
    return this.only !== null && sessionHex !== this.only ? 'this destination is busy with another migration' : null;
  }

  restrictTo(sessionHex: string | null): void {
    this.only = sessionHex;
    if (sessionHex === null) return;
    for (const c of this.ready.splice(0)) {
      if (c.hello.sessionId.toString('hex') === sessionHex) this.ready.push(c);
      else this.refuseBusy(c.channel);
    }
    for (const key of [...this.partial.keys()]) if (key !== sessionHex) this.forget(key, true);
  }

  forget(sessionHex: string, busy = false): void {
    const entry = this.partial.get(sessionHex);
    if (!entry) return;
    this.partial.delete(sessionHex);
    for (const c of [entry.bulk, entry.urgent]) if (c) busy ? this.refuseBusy(c) : c.destroy();
  }

  /** An authenticated channel of another session while one is under way: REFUSE (bulk), close, report. */
  private refuseBusy(c: FramedChannel | RemoteChannel): void {
    const reason = 'this destination is busy with another migration';
    if ('remote' in c) c.destroy();
    else void c.sendMessage({ type: 'REFUSE', reason }).catch(() => undefined).finally(() => c.destroy());
    this.reject(new TransportError('REFUSED', c.peer, `refused: ${reason}`), c.peer, 'HELLO');
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
    this.partial.delete(key); // re-inserted last: the map's order is the eviction order
    this.partial.set(key, entry);
    // Authenticated peers only get here, but a session whose other channel never comes must not
    // hold its channel for ever: beyond MAX_PARTIAL_SESSIONS the oldest goes.
    for (const old of this.partial.keys()) {
      if (this.partial.size <= MAX_PARTIAL_SESSIONS) break;
      if (old !== key) this.forget(old);
    }
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
    const max = this.opts.maxUnauthenticated ?? DEFAULT_MAX_UNAUTHENTICATED;
    if (this.unauthenticated >= max) {
      tcp.destroy();
      this.reject(new TransportError('REFUSED', peer, `closed on arrival: ${max} connections are already authenticating`), peer, 'arrival');
      return;
    }
    this.pendingHere++;
    let counted = true;
    const settle = () => {
      if (counted) this.pendingHere--;
      counted = false;
    };
    const timeoutMs = this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_MS;
    const deadline = performance.now() + timeoutMs;
    const timer = setTimeout(() => fail(new TransportError('TIMEOUT', peer, `no channel preface within ${timeoutMs} ms`)), timeoutMs);
    const fail = (err: Error) => {
      clearTimeout(timer);
      tcp.off('close', onClose); // one report per connection, not a second one for the close
      tcp.destroy();
      settle();
      this.reject(err, peer, 'preface');
    };
    const onClose = () => fail(new TransportError('CLOSED', peer, 'connection closed before its channel preface'));
    tcp.once('close', onClose);
    tcp.once('data', (chunk: Buffer) => {
      clearTimeout(timer);
      tcp.off('close', onClose);
      if (chunk.length === 1 && chunk[0] === DATAPLANE_PREFACE && this.opts.dataplaneHandoff) {
        let copy: number;
        try {
          copy = takeFd(tcp);
        } catch (err) {
          return fail(err as Error);
        }
        settle();
        try {
          // Written on the descriptor itself: Node's socket is gone, and so is anything it queued.
          if (write(copy, Buffer.from([GO_AHEAD])) !== 1) throw new Error('short write');
        } catch (err) {
          close(copy);
          this.reject(new TransportError('IO', peer, `could not answer the data plane connection: ${(err as Error).message}`), peer, 'preface');
          return;
        }
        this.opts.dataplaneHandoff(copy, peer);
        return;
      }
      // The peer sends nothing more before GO_AHEAD: exactly one byte, or this is not a Ferry source.
      const channel = chunk.length === 1 ? (chunk[0] === CHANNEL_PREFACE.bulk ? 'bulk' : chunk[0] === CHANNEL_PREFACE.urgent ? 'urgent' : null) : null;
      if (!channel) return fail(new TransportError('PROTOCOL', peer, `no channel preface: the connection began with ${describeStart(chunk)} (is the peer a Ferry source of wire version 2 or later?)`));
      const left = Math.max(1, deadline - performance.now());
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
        settle();
        // Counted until its owner gives it back (deliver) or reports it refused (reject).
        this.pendingHandedOff++;
        this.opts.urgentHandoff(copy, peer, left);
        return;
      }
      tcp.write(Buffer.from([GO_AHEAD]));
      this.acceptor.accept(tcp, channel, left).then(
        (c) => {
          settle();
          this.deliver(c);
        },
        (err: unknown) => {
          settle();
          this.reject(err, peer, channel === 'bulk' ? 'TLS/HELLO' : 'urgent TLS/HELLO');
        },
      );
    });
  }

  reject(err: unknown, peer: string, phase: string): void {
    if (phase === URGENT_HANDOFF_PHASE && this.pendingHandedOff > 0) this.pendingHandedOff--;
    this.emit('rejected', err instanceof TransportError ? err : fromSocketError(err, peer, phase), phase);
  }

  deliver(c: Delivered): void {
    if ('remote' in c.channel && this.pendingHandedOff > 0) this.pendingHandedOff--;
    if (this.closedError) {
      c.channel.destroy();
      return;
    }
    if (this.busyWith(c.hello.sessionId.toString('hex'))) return this.refuseBusy(c.channel);
    const w = this.waiters.shift();
    if (w) w.resolve(c);
    else this.ready.push(c);
  }
}

/** The phase a handed-off urgent connection's owner names when it reports a refusal (reject()). */
export const URGENT_HANDOFF_PHASE = 'urgent handshake';

/** The channels of one session that have arrived and are not yet taken. */
type SessionEntry = { key: string } & Partial<Record<'bulk' | 'urgent', FramedChannel | RemoteChannel>>;

function bulkOf(c: FramedChannel | RemoteChannel): FramedChannel {
  if ('remote' in c) throw new Error('internal: a bulk channel held by another thread');
  return c;
}

/** A duplicate of the accepted socket's descriptor; the socket itself is destroyed (no FIN: the copy keeps the connection). */
function takeFd(tcp: net.Socket): number {
  const fd = (tcp as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (fd === undefined || fd < 0) throw new Error('internal: no descriptor under an accepted socket');
  const copy = dup(fd);
  tcp.destroy();
  return copy;
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
