// The listener's gate for native data plane connections (Feature.NATIVE_FAULTS): each must prove,
// at once, that it holds the data plane secret of a session whose bulk channel this listener
// authenticated (key confirmation, dataplane/confirm.ts), before its descriptor is handed on. A
// stray or hostile connection (wrong key, another session, garbage, silence) is refused here.
import type { MessageOf } from '../wire/messages.js';
import { Feature } from '../wire/message-types.js';
import { GO_AHEAD } from '../wire/limits.js';
import { write } from '../../sys/fd.js';
import { TransportError } from './errors.js';
import type { FramedChannel } from './framed-channel.js';
import { dataplaneSecret } from '../dataplane/keys.js';
import { CONFIRMATION_BYTES, accept, newChallenge, parseConfirmation } from '../dataplane/confirm.js';
import { readExactly } from '../dataplane/raw-read.js';

/** Data plane secrets of the newest bulk channels authenticated here, kept at most (the oldest goes first). */
const MAX_KEYS = 16;
/**
 * How long a confirmation may wait for its session's bulk channel to be filed: the source connects
 * once it has read HELLO_ACK, and the listener files the channel once that write is confirmed, so
 * the two can cross on a busy event loop.
 */
const KEY_WAIT_MS = 2000;

export class DataplaneGate {
  /** Session hex → the data plane secret of its newest bulk channel. */
  private readonly keys = new Map<string, Buffer>();
  /** Confirmations waiting for their session's key, by session hex. */
  private readonly waiting = new Map<string, Set<() => void>>();

  /** A bulk channel authenticated here: with NATIVE_FAULTS granted, its session's data plane connections may pass. */
  remember(channel: FramedChannel | { remote: true }, hello: MessageOf<'HELLO'>): void {
    if (hello.channel !== 'bulk' || 'remote' in channel) return;
    if (((channel.session?.features ?? 0) & Feature.NATIVE_FAULTS) === 0) return;
    const key = hello.sessionId.toString('hex');
    this.keys.delete(key); // re-inserted last: the map's order is the eviction order
    this.keys.set(key, dataplaneSecret(channel.tlsSocket, hello.sessionId));
    for (const old of this.keys.keys()) {
      if (this.keys.size <= MAX_KEYS) break;
      this.keys.delete(old);
    }
    for (const wake of this.waiting.get(key) ?? []) wake();
  }

  private async keyOf(sessionHex: string, timeoutMs: number): Promise<Buffer | undefined> {
    if (this.keys.has(sessionHex) || timeoutMs <= 0) return this.keys.get(sessionHex);
    let wake!: () => void;
    let timer: NodeJS.Timeout | undefined;
    const set = this.waiting.get(sessionHex) ?? new Set<() => void>();
    this.waiting.set(sessionHex, set);
    await new Promise<void>((resolve) => {
      wake = resolve;
      set.add(wake);
      timer = setTimeout(resolve, timeoutMs);
    });
    clearTimeout(timer);
    set.delete(wake);
    if (set.size === 0) this.waiting.delete(sessionHex);
    return this.keys.get(sessionHex);
  }

  /**
   * The key confirmation on a data plane connection's raw descriptor, its preface read: GO_AHEAD
   * and a challenge out, the source's proof in (nothing past it is read: the native hello that
   * follows at the commit stays in the kernel), the acceptance out. Resolves with the session;
   * rejects, leaving the descriptor to the caller to close, when the connection is refused.
   */
  async confirm(fd: number, peer: string, timeoutMs: number, busyWith: (sessionHex: string) => string | null): Promise<string> {
    const challenge = newChallenge();
    // Written on the descriptor itself: Node's socket is gone, and so is anything it queued.
    const ahead = Buffer.concat([Buffer.from([GO_AHEAD]), challenge]);
    if (write(fd, ahead) !== ahead.length) throw new TransportError('IO', peer, 'short write answering the data plane connection');
    const deadline = performance.now() + timeoutMs;
    let bytes: Buffer;
    try {
      bytes = await readExactly(fd, CONFIRMATION_BYTES, timeoutMs);
    } catch (err) {
      throw new TransportError('PROTOCOL', peer, `no data plane key confirmation: ${(err as Error).message}`);
    }
    const confirmation = parseConfirmation(bytes);
    const sessionHex = confirmation.sessionId.toString('hex');
    const busy = busyWith(sessionHex);
    if (busy) throw new TransportError('REFUSED', peer, `data plane connection of another session: ${busy}`);
    const secret = await this.keyOf(sessionHex, Math.min(KEY_WAIT_MS, deadline - performance.now()));
    if (!secret) throw new TransportError('PROTOCOL', peer, `data plane connection for session ${sessionHex.slice(0, 8)}…, which has no bulk channel here with the native fault path`);
    const acceptance = accept(secret, challenge, confirmation);
    if (!acceptance) throw new TransportError('PROTOCOL', peer, "the data plane key confirmation failed: the peer does not hold the session's keys");
    if (write(fd, acceptance) !== acceptance.length) throw new TransportError('IO', peer, 'short write of the data plane acceptance');
    return sessionHex;
  }
}
