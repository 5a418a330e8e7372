// Main-thread handle of the destination's urgent thread (receive/urgent/request-thread.ts). The listener hands
// it urgent connections; the connections it authenticates come back as RemoteChannels for the
// listener to pair with their bulk channel. After the commit it reports the pages it placed, and a
// lost connection as a failure of the session (postcopy then waits for the source to reconnect).
import { Worker } from 'node:worker_threads';
import type { MessageOf } from '../../wire/index.js';
import { TransportError, URGENT_HANDOFF_PHASE, type MigrationListener, type RemoteChannel, type Security, type TransportErrorCode } from '../../transport/index.js';
import type { UrgentRequesterCommand, UrgentRequesterData, UrgentRequesterEvent } from './request-thread.js';
import { UrgentChannelError } from '../../session/failures.js';

type Setup = Extract<UrgentRequesterCommand, { type: 'setup' }>;

/** An urgent connection held by the urgent thread. */
class UrgentConnection implements RemoteChannel {
  readonly remote = true;
  constructor(
    private readonly owner: UrgentRequests,
    readonly conn: number,
    readonly peer: string,
  ) {}
  destroy(): void {
    this.owner.drop(this.conn);
  }
}

export class UrgentRequests {
  /** Pages placed by the urgent thread, with the latencies of the faults they ended. */
  onPlaced: (pages: number, latenciesUs: number[]) => void = () => undefined;
  private readonly counters = new Float64Array(new SharedArrayBuffer(16));
  private readonly worker: Worker;
  private current: UrgentConnection | null = null;
  private lost: ((err: Error) => void) | null = null;
  private failure: Error | null = null;
  private readonly exited: Promise<void>;

  constructor(security: Security, private readonly listener: MigrationListener) {
    const data: UrgentRequesterData = { security, counters: this.counters.buffer as SharedArrayBuffer };
    this.worker = new Worker(new URL('./request-thread.js', import.meta.url), { workerData: data });
    this.exited = new Promise((resolve) => this.worker.once('exit', () => resolve()));
    this.worker.on('message', (e: UrgentRequesterEvent) => this.onEvent(e));
    this.worker.on('error', (err) => this.fail(new Error(`urgent thread failed: ${err.message}`)));
    this.worker.once('exit', () => this.fail(new UrgentChannelError('its thread exited')));
    this.worker.unref();
  }

  /** The listener's urgentHandoff. */
  handoff = (fd: number, peer: string, timeoutMs: number): void => {
    this.send({ type: 'socket', fd, peer, timeoutMs });
  };

  /** Where the thread finds the memory, the page states and the fault worker's requests. */
  setup(s: Omit<Setup, 'type'>): void {
    this.send({ type: 'setup', ...s });
  }

  /** The session's urgent connection (as paired by the listener): requests go on it from now on. */
  use(channel: RemoteChannel): void {
    if (!(channel instanceof UrgentConnection)) throw new Error('internal: an urgent channel the urgent thread does not hold');
    this.current = channel;
    this.failure = null;
    this.send({ type: 'use', conn: channel.conn });
  }

  /** At the commit: the memory's size then; requests are served from now on. */
  activate(pageCount: number): void {
    this.send({ type: 'activate', pageCount });
  }

  drop(conn: number): void {
    if (this.current?.conn === conn) this.current = null;
    this.send({ type: 'drop', conn });
  }

  /** Rejects when the session's urgent connection is lost (or the thread dies). */
  whenLost(): Promise<never> {
    return new Promise<never>((_, reject) => {
      if (this.failure) return reject(this.failure);
      this.lost = reject;
    });
  }

  get bytesSent(): number {
    return this.counters[0]!;
  }
  get bytesReceived(): number {
    return this.counters[1]!;
  }

  /** Closes every connection gracefully and ends the thread. */
  async close(): Promise<void> {
    this.send({ type: 'close' });
    const timer = setTimeout(() => void this.worker.terminate(), 5000);
    await this.exited;
    clearTimeout(timer);
  }

  /** Ends the thread now (its connections close with it). */
  async terminate(): Promise<void> {
    await this.worker.terminate();
  }

  private send(c: UrgentRequesterCommand): void {
    this.worker.postMessage(c);
  }

  private fail(err: Error): void {
    this.failure ??= err;
    this.lost?.(err);
    this.lost = null;
  }

  private onEvent(e: UrgentRequesterEvent): void {
    switch (e.type) {
      case 'hello': {
        const hello: MessageOf<'HELLO'> = { ...e.hello, sessionId: Buffer.from(e.hello.sessionId) };
        this.listener.deliver({ channel: new UrgentConnection(this, e.conn, e.peer), hello });
        break;
      }
      case 'rejected':
        this.listener.reject(new TransportError(e.code as TransportErrorCode, e.peer, e.message), e.peer, URGENT_HANDOFF_PHASE);
        break;
      case 'placed':
        this.onPlaced(e.pages, e.latenciesUs);
        break;
      case 'lost':
        if (this.current?.conn === e.conn) {
          this.current = null;
          this.fail(new UrgentChannelError(e.message));
        }
        break;
    }
  }
}
