// Who may migrate into this host: the first source that passes authentication (the listener's
// TLS and HELLO) and whose SETUP this host can take. Every other peer — stray, hostile, wrong key,
// a second source, a SETUP this host cannot serve — is refused, counted and reported, and the wait
// goes on, bounded only by maxRefused when given.
import { cannotAcquire } from '../../net/address-hooks.js';
import type { ServiceAddress } from '../../net/service-address.js';
import type { BulkFirst, MigrationListener } from '../transport/index.js';
import type { MessageOf } from '../wire/index.js';
import type { Preopen } from '../../wasi/wasi.js';
import type { PhaseLog } from '../session/phases.js';
import { MigrationError } from '../session/report.js';

/** A peer refused before any page moved: it failed the preface, TLS, HELLO or SETUP, or came while busy. */
export interface Refusal {
  peer: string;
  /** Where it failed: arrival, preface, TLS/HELLO, urgent TLS/HELLO, urgent handshake, SETUP. */
  phase: string;
  reason: string;
  /** Peers refused so far, this one included. */
  count: number;
}

export interface AdmissionOptions {
  /** This host's preopens: every guest path the source's guest has must be mapped here. */
  preopens: Preopen[];
  /** Each authenticated source's limit to send SETUP. */
  handshakeMs: number;
  /** While waiting for a source: give up after this many refused peers (default: never). */
  maxRefused?: number | undefined;
  /** Called once for every peer refused. */
  onRefused?: ((r: Refusal) => void) | undefined;
  /** The service addresses this host must be able to take (refused at SETUP otherwise: nothing moved). */
  serviceAddresses: ServiceAddress[];
}

export class SourceAdmission {
  /** Peers refused so far. */
  count = 0;
  last: Refusal | null = null;
  /** True until a source has passed SETUP: refusals count towards maxRefused only then. */
  private waiting = true;
  /** Rejects when maxRefused is reached while waiting. */
  private readonly gaveUp: Promise<never>;
  private giveUp!: (e: Error) => void;
  private hasGivenUp = false;

  constructor(private readonly opts: AdmissionOptions) {
    this.gaveUp = new Promise<never>((_, reject) => (this.giveUp = reject));
    this.gaveUp.catch(() => undefined);
  }

  /** Counts and reports one refused peer; the wait ends (accept() rejects) at maxRefused. */
  refuse(peer: string, phase: string, err: unknown): void {
    const message = err instanceof Error ? err.message : String(err);
    // TransportError messages start with the peer; say it once.
    let reason = message;
    while (reason.startsWith(`${peer}: `)) reason = reason.slice(peer.length + 2);
    reason = reason.replace(/\s*\n\s*/g, ' ');
    const r: Refusal = { peer, phase, reason, count: ++this.count };
    this.last = r;
    this.opts.onRefused?.(r);
    const max = this.opts.maxRefused;
    if (this.waiting && max !== undefined && this.count >= max && !this.hasGivenUp) {
      this.hasGivenUp = true;
      this.giveUp(new MigrationError('refused', `gave up after ${this.count} refused peer(s) (--max-refused ${max}); the last, ${peer}, during ${phase}: ${reason}`));
    }
  }

  /**
   * The first session whose source is authenticated and whose SETUP this host can take. While it
   * sends its SETUP every other session is refused at HELLO; a session refused at SETUP (or
   * silent, or sending something else) is closed, counted, and the wait goes on.
   */
  async accept(listener: MigrationListener, phases: PhaseLog): Promise<{ session: BulkFirst; setup: MessageOf<'SETUP'> }> {
    for (;;) {
      const session = await Promise.race([listener.acceptBulk(), this.gaveUp]);
      listener.restrictTo(session.sessionHex);
      const bulk = session.bulk;
      // No Nagle on the bulk channel either: its small control frames (PONG, RUNNING, DIGEST) would
      // otherwise wait for the peer's delayed ACK — 40 ms on Linux — inside the downtime.
      bulk.setNoDelay(true);
      phases.enter('handshake');
      try {
        const setup = await Promise.race([bulk.expect('SETUP', this.opts.handshakeMs), this.gaveUp]);
        const refusal = this.checkSetup(setup);
        if (refusal) {
          await bulk.sendMessage({ type: 'REFUSE', reason: refusal }).catch(() => undefined);
          throw new MigrationError('refused', `migration refused: ${refusal}`);
        }
        this.waiting = false;
        return { session, setup };
      } catch (err) {
        bulk.destroy();
        session.urgent?.destroy();
        listener.forget(session.sessionHex);
        listener.restrictTo(null);
        phases.enter('connecting');
        if (this.hasGivenUp) throw await this.gaveUp.catch((e: unknown) => e);
        this.refuse(bulk.peer, 'SETUP', err);
        // refuse() may just have reached maxRefused: the next race ends at once.
      }
    }
  }

  /** Why this host cannot take a source's SETUP, or null when it can. */
  private checkSetup(setup: MessageOf<'SETUP'>): string | null {
    const mapped = new Set(this.opts.preopens.map((p) => p.guestPath));
    const missing = setup.preopens.filter((g) => !mapped.has(g));
    if (missing.length > 0) {
      return `the guest needs preopened ${missing.map((m) => JSON.stringify(m)).join(', ')}, not mapped on this host (ferry run --incoming ... --dir HOST:${missing[0]})`;
    }
    if (setup.memory.maxBytes > 4 * 1024 ** 3) return 'memory maximum above 4 GiB';
    const address = cannotAcquire({ addresses: this.opts.serviceAddresses });
    if (address !== null) return address;
    return null;
  }
}
