// A fault-injecting TCP proxy for migration tests. `ferry migrate --to 127.0.0.1:<proxy port>`
// talks to it; it forwards every connection to the real destination and, on request, breaks one
// connection in one direction: cut (destroy both sides), stall (stop forwarding for a while or for
// ever), delay (latency per chunk), corrupt (flip a byte). Triggers are a byte offset in that
// direction of that connection, a time, or "now".
//
// Connections are numbered in accept order. The channel preface (the first byte, in the clear
// even with TLS) names the channel: 'b' bulk, 'u' urgent, 'd' the native data plane connection
// (Feature.NATIVE_FAULTS). A fault aimed at a channel by name attaches only once that byte has
// arrived (and before it is forwarded, so `atByte: 0` still works): the order in which the
// source's connections arrive says nothing certain (the urgent channel opens concurrently with
// bulk, the data plane connection right after bulk's handshake). A connection whose first byte is
// no preface (the proxy's own tests) is named by accept order: one that arrives while the previous
// one is an open bulk channel is urgent, otherwise bulk.
import { createServer, connect as tcpConnect, type AddressInfo, type Server, type Socket } from 'node:net';
import { CHANNEL_PREFACE, DATAPLANE_PREFACE } from '../../src/migration/wire/index.js';

export type Direction = 'to-destination' | 'to-source';
export type FaultKind = 'cut' | 'stall' | 'delay' | 'corrupt';
export type ChannelName = 'bulk' | 'urgent' | 'dataplane';

/**
 * When a fault fires: at an absolute byte offset of the direction's stream, after N more bytes
 * from the moment the fault is added, after a time (from when the connection is open and the
 * fault added, whichever is later), or at once.
 */
export type Trigger = { atByte: number } | { afterBytes: number } | { afterMs: number } | 'now';

export interface FaultSpec {
  kind: FaultKind;
  /** Accept-order index (0-based), or the newest connection of a channel (the next one if none is open). */
  connection: number | ChannelName;
  direction: Direction;
  at?: Trigger;
  /** stall: how long; Infinity stalls until the connection is cut. */
  stallMs?: number;
  /** delay: latency added before forwarding each chunk from the trigger on. */
  delayMs?: number;
  /** corrupt: the byte is XORed with this (default 0xff). */
  xor?: number;
}

/** One thing the proxy did, for the test's summary. */
export interface InjectionRecord {
  kind: FaultKind;
  connection: number;
  channel: ChannelName;
  direction: Direction;
  /** Offset in the direction's stream where it took effect. */
  atByte: number;
  /** Milliseconds since the connection was accepted. */
  atMs: number;
  detail: string;
}

interface PendingFault {
  spec: FaultSpec;
  fired: boolean;
  /** Resolved absolute byte offset for byte triggers (set when attached to a connection). */
  atByte: number | null;
  attachedTo: number | null;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** One direction of one proxied connection: reads `from`, writes `to`, applying faults on the way. */
class Pump {
  /** Bytes forwarded (or consumed by a fault) so far: the offset of the next byte. */
  offset = 0;
  private readonly queue: Buffer[] = [];
  private running = false;
  delayMs = 0;
  /** A stall in force: forwarding waits on this. */
  private stall: Promise<void> | null = null;
  private releaseStall: (() => void) | null = null;
  readonly byteFaults: PendingFault[] = [];

  constructor(
    readonly conn: ProxiedConnection,
    readonly direction: Direction,
    private readonly from: Socket,
    private readonly to: Socket,
  ) {
    from.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      if (this.queue.length > 16) from.pause();
      void this.drain();
    });
    from.on('end', () => {
      this.queue.push(Buffer.alloc(0)); // end marker: half-close the other side after the data
      void this.drain();
    });
  }

  stallFor(ms: number): void {
    if (this.stall) return;
    this.stall = new Promise<void>((resolve) => (this.releaseStall = resolve));
    if (Number.isFinite(ms)) setTimeout(() => this.unstall(), ms).unref();
  }

  unstall(): void {
    this.releaseStall?.();
    this.stall = null;
    this.releaseStall = null;
  }

  private async drain(): Promise<void> {
    if (this.running) return;
    this.running = true;
    try {
      while (this.queue.length > 0 && !this.conn.closed) {
        if (this.stall) await Promise.race([this.stall, this.conn.closedPromise]);
        if (this.conn.closed) return;
        let chunk = this.queue.shift()!;
        if (this.queue.length < 4) this.from.resume();
        if (chunk.length === 0) {
          this.to.end();
          continue;
        }
        if (this.delayMs > 0) await Promise.race([sleep(this.delayMs), this.conn.closedPromise]);
        if (this.direction === 'to-destination' && this.offset === 0 && !this.conn.named) {
          this.conn.noteFirstBytes(chunk); // may attach (and fire) faults aimed at its channel
          if (this.conn.closed) return;
          if (this.stall) await Promise.race([this.stall, this.conn.closedPromise]);
          if (this.conn.closed) return;
        }
        // Byte-triggered faults inside this chunk, in offset order: forward up to the fault, apply it.
        for (;;) {
          const end = this.offset + chunk.length;
          const next = this.byteFaults.filter((f) => !f.fired && f.atByte !== null && f.atByte < end).sort((a, b) => a.atByte! - b.atByte!)[0];
          if (!next) break;
          const at = Math.max(next.atByte!, this.offset);
          const before = chunk.subarray(0, at - this.offset);
          if (before.length > 0) await this.write(before);
          this.offset = at;
          chunk = chunk.subarray(before.length);
          if (this.conn.closed) return;
          if (next.spec.kind === 'corrupt') {
            chunk = Buffer.from(chunk); // never alter the socket's own buffer
            chunk[0] = chunk[0]! ^ (next.spec.xor ?? 0xff);
          }
          this.conn.fire(next, this);
          if (this.conn.closed) return;
          if (this.stall) await Promise.race([this.stall, this.conn.closedPromise]);
          if (this.conn.closed) return;
        }
        await this.write(chunk);
        this.offset += chunk.length;
      }
    } finally {
      this.running = false;
    }
  }

  private async write(buf: Buffer): Promise<void> {
    if (buf.length === 0 || this.conn.closed) return;
    if (!this.to.write(buf)) {
      await Promise.race([new Promise<void>((r) => this.to.once('drain', () => r())), this.conn.closedPromise]);
    }
  }
}

class ProxiedConnection {
  closed = false;
  /** True once the first byte to the destination has named the channel (faults by channel attach then). */
  named = false;
  readonly closedPromise: Promise<void>;
  private markClosed!: () => void;
  readonly acceptedAt = performance.now();
  readonly pumps: Record<Direction, Pump>;

  constructor(
    readonly index: number,
    public channel: ChannelName,
    private readonly client: Socket,
    private readonly server: Socket,
    private readonly proxy: FaultProxy,
  ) {
    this.closedPromise = new Promise<void>((r) => (this.markClosed = r));
    this.pumps = {
      'to-destination': new Pump(this, 'to-destination', client, server),
      'to-source': new Pump(this, 'to-source', server, client),
    };
    const onGone = () => this.close();
    for (const s of [client, server]) {
      s.on('error', onGone);
      s.on('close', onGone);
    }
  }

  /** The channel preface: one byte before anything else, TLS or not; otherwise the accept-order guess stays. */
  noteFirstBytes(chunk: Buffer): void {
    if (chunk[0] === CHANNEL_PREFACE.urgent) this.channel = 'urgent';
    else if (chunk[0] === CHANNEL_PREFACE.bulk) this.channel = 'bulk';
    else if (chunk[0] === DATAPLANE_PREFACE) this.channel = 'dataplane';
    this.named = true;
    this.proxy.attachByChannel(this);
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client.destroy();
    this.server.destroy();
    this.markClosed();
  }

  /**
   * A cut: nothing more is forwarded from now on, but what was already forwarded (the bytes
   * before the cut's offset) still reaches the peer before both sides are destroyed.
   */
  cut(): void {
    if (this.closed) return;
    this.closed = true;
    this.markClosed();
    for (const s of [this.client, this.server]) {
      if (s.writableLength === 0) s.destroy();
      else {
        s.once('drain', () => s.destroy());
        setTimeout(() => s.destroy(), 1000).unref();
      }
    }
  }

  /** Applies a fault now, at the pump's current offset. */
  fire(f: PendingFault, pump: Pump): void {
    if (f.fired) return;
    f.fired = true;
    const { spec } = f;
    const atMs = Math.round(performance.now() - this.acceptedAt);
    let detail = '';
    switch (spec.kind) {
      case 'cut':
        detail = 'both sides destroyed';
        this.cut();
        break;
      case 'stall': {
        const ms = spec.stallMs ?? Infinity;
        detail = Number.isFinite(ms) ? `forwarding stopped for ${ms} ms` : 'forwarding stopped for ever';
        pump.stallFor(ms);
        break;
      }
      case 'delay':
        pump.delayMs = spec.delayMs ?? 0;
        detail = `${pump.delayMs} ms added per chunk`;
        break;
      case 'corrupt':
        detail = `byte XOR 0x${(spec.xor ?? 0xff).toString(16)}`;
        break;
    }
    this.proxy.record({ kind: spec.kind, connection: this.index, channel: this.channel, direction: pump.direction, atByte: pump.offset, atMs, detail });
  }
}

export class FaultProxy {
  private readonly server: Server;
  private readonly conns: ProxiedConnection[] = [];
  private readonly faults: PendingFault[] = [];
  private readonly log: InjectionRecord[] = [];
  private target: { host: string; port: number };

  private constructor(server: Server, target: { host: string; port: number }) {
    this.server = server;
    this.target = target;
  }

  /** Listens on 127.0.0.1 (a free port) and forwards every connection to host:port. */
  static async start(targetHost: string, targetPort: number): Promise<FaultProxy> {
    if (!Number.isInteger(targetPort) || targetPort <= 0 || targetPort > 65535) throw new RangeError(`bad target port ${targetPort}`);
    const server = createServer();
    const proxy = new FaultProxy(server, { host: targetHost, port: targetPort });
    server.on('connection', (s) => proxy.accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    return proxy;
  }

  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }

  /** Connections accepted so far (a reconnection after a fault shows as more of them). */
  get connectionCount(): number {
    return this.conns.length;
  }

  /** The channel each accepted connection carried, in accept order. */
  channels(): ChannelName[] {
    return this.conns.map((c) => c.channel);
  }

  /** Bytes forwarded so far in one direction of a connection. */
  bytes(connection: number, direction: Direction): number {
    const c = this.conns[connection];
    if (!c) throw new RangeError(`no connection #${connection} (${this.conns.length} accepted)`);
    return c.pumps[direction].offset;
  }

  /** What the proxy did, in order. */
  injections(): InjectionRecord[] {
    return [...this.log];
  }

  /** One line per injection, for a printed summary. */
  describe(): string[] {
    return this.log.map((r) => `${r.kind} ${r.direction} on connection #${r.connection} (${r.channel}) at byte ${r.atByte}, ${r.atMs} ms after accept: ${r.detail}`);
  }

  /**
   * Adds a fault. It attaches to the connection it names if that is open (or, for a channel
   * name, the newest open one of that channel), otherwise to the next matching connection.
   * Each fault fires at most once.
   */
  inject(spec: FaultSpec): void {
    if (spec.kind === 'stall' && spec.stallMs !== undefined && !(spec.stallMs > 0)) throw new RangeError('stallMs must be > 0');
    if (spec.kind === 'delay' && !(spec.delayMs !== undefined && spec.delayMs >= 0)) throw new RangeError('delay needs delayMs >= 0');
    const at = spec.at ?? 'now';
    if (typeof at === 'object' && 'atByte' in at && !(at.atByte >= 0)) throw new RangeError('atByte must be >= 0');
    if (typeof at === 'object' && 'afterBytes' in at && !(at.afterBytes >= 0)) throw new RangeError('afterBytes must be >= 0');
    const f: PendingFault = { spec: { ...spec, at }, fired: false, atByte: null, attachedTo: null };
    this.faults.push(f);
    const open = this.findOpen(spec.connection);
    if (open) this.attach(f, open);
  }

  /** Resolves once every fault added so far has fired (or rejects after timeoutMs). */
  async allFired(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (this.faults.some((f) => !f.fired)) {
      if (Date.now() > deadline) {
        const left = this.faults.filter((f) => !f.fired).map((f) => `${f.spec.kind} ${f.spec.direction} on ${f.spec.connection}`);
        throw new Error(`faults never fired within ${timeoutMs} ms: ${left.join(', ')} (connections: ${this.channels().join(',')})`);
      }
      await sleep(20);
    }
  }

  /** Cuts every open connection and stops listening. */
  async close(): Promise<void> {
    for (const c of this.conns) c.close();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  record(r: InjectionRecord): void {
    this.log.push(r);
  }

  /** A connection's channel is now known: faults waiting for a connection of that channel attach to it. */
  attachByChannel(c: ProxiedConnection): void {
    for (const f of this.faults) {
      if (f.attachedTo === null && f.spec.connection === c.channel && !c.closed) this.attach(f, c);
    }
  }

  private findOpen(which: number | ChannelName): ProxiedConnection | undefined {
    if (typeof which === 'number') {
      const c = this.conns[which];
      return c && !c.closed ? c : undefined;
    }
    for (let i = this.conns.length - 1; i >= 0; i--) {
      const c = this.conns[i]!;
      if (c.named && c.channel === which && !c.closed) return c;
    }
    return undefined;
  }

  private attach(f: PendingFault, c: ProxiedConnection): void {
    f.attachedTo = c.index;
    const pump = c.pumps[f.spec.direction];
    const at = f.spec.at!;
    if (at === 'now' && f.spec.kind === 'corrupt') {
      f.atByte = pump.offset; // the next byte to pass
      pump.byteFaults.push(f);
    } else if (at === 'now') {
      c.fire(f, pump);
    } else if ('afterMs' in at) {
      setTimeout(() => {
        if (c.closed) return;
        if (f.spec.kind === 'corrupt') {
          f.atByte = pump.offset; // the next byte to pass
          pump.byteFaults.push(f);
        } else c.fire(f, pump);
      }, at.afterMs).unref();
    } else {
      f.atByte = 'atByte' in at ? at.atByte : pump.offset + at.afterBytes;
      pump.byteFaults.push(f);
    }
  }

  private accept(client: Socket): void {
    const index = this.conns.length;
    const prev = this.conns[index - 1];
    // Only a guess until the first byte (see the header comment).
    const channel: ChannelName = prev && prev.channel === 'bulk' && !prev.closed ? 'urgent' : 'bulk';
    const server = tcpConnect(this.target.port, this.target.host);
    client.setNoDelay(true);
    server.setNoDelay(true);
    const conn = new ProxiedConnection(index, channel, client, server, this);
    this.conns.push(conn);
    for (const f of this.faults) {
      if (f.attachedTo === null && f.spec.connection === index) this.attach(f, conn);
    }
  }
}
