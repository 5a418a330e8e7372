// Main-thread handle of the source's urgent channel thread (send/urgent/answer-thread.ts).
import { Worker } from 'node:worker_threads';
import type { PageBitmap } from '../../../memory/page-bitmap.js';
import type { Security } from '../../transport/index.js';
import type { PageReaderSpec } from '../page-provider.js';
import { PageClaims } from './page-claims.js';
import { URGENT_STAT_SLOTS, UrgentStat } from './stats.js';
import type { UrgentServerData, UrgentServerMessage } from './answer-thread.js';
import { UrgentChannelError } from '../../session/failures.js';

export class UrgentChannel {
  readonly claims: PageClaims;
  private readonly stats: Float64Array;
  private readonly pending: SharedArrayBuffer;
  private failure: Error | null = null;
  private readonly closed: Promise<void>;

  private constructor(
    private readonly worker: Worker,
    maxPages: number,
    pending: SharedArrayBuffer,
    claims: SharedArrayBuffer,
    stats: SharedArrayBuffer,
  ) {
    this.claims = new PageClaims(maxPages, claims);
    this.stats = new Float64Array(stats);
    this.pending = pending;
    this.closed = new Promise((resolve) => worker.once('exit', () => resolve()));
    // The thread never exits on its own while the channel is in use: if it does, the channel is gone.
    worker.once('exit', () => (this.failure ??= new UrgentChannelError('its thread exited')));
    worker.on('message', (m: UrgentServerMessage) => {
      if (m.type === 'error') this.failure ??= new UrgentChannelError(m.message);
    });
    worker.on('error', (e) => (this.failure ??= e));
  }

  /** Spawns the thread and waits until its connection is authenticated. */
  static async open(opts: { host: string; port: number; security: Security; sessionId: Buffer; pages: PageReaderSpec; maxPages: number }): Promise<UrgentChannel> {
    const bitmapBytes = Math.ceil(opts.maxPages / 32) * 4;
    const data: UrgentServerData = {
      host: opts.host,
      port: opts.port,
      security: opts.security,
      sessionId: new Uint8Array(opts.sessionId),
      pages: opts.pages,
      pending: new SharedArrayBuffer(bitmapBytes),
      claims: new SharedArrayBuffer(bitmapBytes),
      stats: new SharedArrayBuffer(URGENT_STAT_SLOTS * 8),
      maxPages: opts.maxPages,
    };
    const worker = new Worker(new URL('./answer-thread.js', import.meta.url), { workerData: data });
    await new Promise<void>((resolve, reject) => {
      worker.once('message', (m: UrgentServerMessage) => (m.type === 'connected' ? resolve() : reject(new Error(m.type === 'error' ? m.message : 'urgent channel closed'))));
      worker.once('error', reject);
      worker.once('exit', () => reject(new Error('urgent channel thread exited before connecting')));
    });
    return new UrgentChannel(worker, opts.maxPages, data.pending, data.claims, data.stats);
  }

  /** At the commit: publish the pages the destination lacks; requests are served from now on. */
  activate(pending: PageBitmap, pageCount: number): void {
    new Uint32Array(this.pending).set(pending.words);
    // An atomic store orders the bitmap's writes before the flag below, which the thread reads first.
    Atomics.store(new Int32Array(this.pending), 0, new Int32Array(this.pending)[0]!);
    this.stats[UrgentStat.ACTIVE_PAGES] = pageCount;
    this.worker.postMessage({ type: 'activate' });
  }

  /** The pages the destination lacks, as activate() published them (for the native answer thread). */
  get pendingWords(): Uint32Array {
    return new Uint32Array(this.pending);
  }

  get error(): Error | null {
    return this.failure;
  }
  get cursor(): number {
    return this.stats[UrgentStat.CURSOR]!;
  }
  get pagesSent(): number {
    return this.stats[UrgentStat.PAGES_SENT]!;
  }
  get requests(): number {
    return this.stats[UrgentStat.REQUESTS]!;
  }
  get bytesSent(): number {
    return this.stats[UrgentStat.BYTES_SENT]!;
  }
  get bytesReceived(): number {
    return this.stats[UrgentStat.BYTES_RECEIVED]!;
  }

  async close(): Promise<void> {
    this.worker.postMessage({ type: 'close' });
    const timer = setTimeout(() => void this.worker.terminate(), 2000);
    await this.closed;
    clearTimeout(timer);
  }

  destroy(): void {
    void this.worker.terminate();
  }
}
