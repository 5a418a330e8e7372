// Taking snapshots of one live guest. The first snapshot starts a dirty tracker (uffd-wp async) and
// it stays on, so a later diff snapshot writes only the pages written since the previous snapshot
// this session took — which is the only snapshot a diff can name (tracking is relative to it).
// While tracking is on the memory is registered with userfaultfd for write protection, which
// excludes any other registration (a migration's own tracker): stopTracking() releases it, after
// which only full snapshots can be taken until the next one re-arms tracking.
import { existsSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Guest } from '../guest/guest.js';
import { DirtyTracker } from '../memory/dirty-tracker.js';
import { GuestMemory, WASM_PAGE_SIZE } from '../memory/guest-memory.js';
import type { PageBitmap } from '../memory/page-bitmap.js';
import { scanResidency } from '../memory/residency.js';
import { zeroContentPages } from '../memory/zero-pages.js';
import { RegistrationBusyError } from '../memory/uffd-registration.js';
import { MANIFEST_FILE, SnapshotError, sha256Hex } from './format.js';
import { writeSnapshot, type SnapshotWriteReport } from './writer.js';

export interface TakeSnapshotRequest {
  to: string;
  /** Diff against this snapshot (must be the last one this session took). */
  diffFrom?: string | undefined;
  /** Resume the guest afterwards (default: stop it). */
  resume?: boolean | undefined;
}

export interface TakeSnapshotResult extends SnapshotWriteReport {
  /** Milliseconds the guest was paused for the snapshot. */
  pausedMs: number;
  guestAfter: 'resumed' | 'stopped' | 'paused';
}

export class SnapshotSession {
  private tracker: DirtyTracker | null = null;
  private last: { dir: string; manifestSha256: string } | null = null;
  private busy = false;

  constructor(
    readonly guest: Guest,
    /** Resolves when the guest's memory is fully in place (a lazy restore still loading cannot be tracked). */
    private readonly ready: Promise<unknown> = Promise.resolve(),
  ) {}

  get tracking(): boolean {
    return this.tracker !== null;
  }

  async take(req: TakeSnapshotRequest): Promise<TakeSnapshotResult> {
    if (this.busy) throw new SnapshotError('exists', 'a snapshot is already being taken');
    this.busy = true;
    try {
      await this.ready;
      return await this.takeNow(req);
    } finally {
      this.busy = false;
    }
  }

  /** Ends dirty tracking (e.g. before a migration registers the memory itself). */
  stopTracking(): void {
    this.tracker?.stop();
    this.tracker = null;
    this.last = null;
  }

  private async takeNow(req: TakeSnapshotRequest): Promise<TakeSnapshotResult> {
    const guest = this.guest;
    const parentDir = req.diffFrom ? resolve(req.diffFrom) : null;
    if (parentDir) this.checkParent(parentDir);
    const wasPaused = guest.status === 'paused';
    const tPause = performance.now();
    await guest.pause();
    let report: SnapshotWriteReport;
    try {
      const mem = new GuestMemory(guest.memory, guest.maxMemoryBytes / WASM_PAGE_SIZE);
      const state = guest.capture();
      let pages: PageBitmap;
      if (parentDir) {
        pages = this.tracker!.collect();
      } else {
        this.armTracking(mem);
        const r = scanResidency(mem);
        // Never-touched pages, zero-page mappings and pages of zeros (a read-only page, on a kernel
        // that maps real pages for read faults) stay holes. A diff must keep its pages of zeros:
        // they may hide a parent's data.
        const present = r.present.clone().subtract(r.zero);
        pages = present.subtract(zeroContentPages(present, mem.view()));
      }
      report = await writeSnapshot({ dir: req.to, state, memory: mem, moduleSource: guest.moduleSource, pages, parentDir });
      this.last = this.tracker ? { dir: report.dir, manifestSha256: report.manifestSha256 } : null;
    } catch (err) {
      // A failed snapshot never ends the guest. With `resume` it runs on (unless it was paused
      // before); without, it stays paused — the snapshot was to end it — and can be resumed. The
      // dirty pages collected for this snapshot are gone: the next one must be full.
      this.last = null;
      let after: string;
      if ((guest.status as string) !== 'paused') after = `the guest is ${guest.status}`;
      else if (req.resume && !wasPaused) {
        guest.resume();
        after = 'the guest runs on';
      } else after = 'the guest is paused (ferry resume to let it run on)';
      if (err instanceof Error) err.message += `; ${after}`;
      throw err;
    }
    const pausedMs = Math.round((performance.now() - tPause) * 100) / 100;
    let guestAfter: TakeSnapshotResult['guestAfter'];
    if (req.resume) {
      guest.resume();
      guestAfter = 'resumed';
    } else {
      this.stopTracking();
      await guest.stop();
      guestAfter = 'stopped';
    }
    return { ...report, pausedMs, guestAfter };
  }

  /** Starts tracking, or clears what it collected: writes from now on belong to the next diff. */
  private armTracking(mem: GuestMemory): void {
    if (this.tracker) {
      this.tracker.collect();
      return;
    }
    const t = new DirtyTracker(mem);
    try {
      t.start();
      this.tracker = t;
    } catch (err) {
      // The memory is registered elsewhere (a lazy restore's fault server serves it until every
      // page is in): full snapshots still work, diffs are refused until a full one can track.
      if (!(err instanceof RegistrationBusyError)) throw err;
      this.tracker = null;
    }
  }

  private checkParent(parentDir: string): void {
    if (!this.tracker || !this.last) {
      throw new SnapshotError('parent', `cannot take a diff against ${parentDir}: no snapshot with dirty tracking was taken of this guest by this process yet (take a full snapshot with --resume first)`);
    }
    if (this.last.dir !== parentDir) {
      throw new SnapshotError('parent', `a diff can only be taken against the last snapshot of this guest (${this.last.dir}), not ${parentDir}`);
    }
    const m = join(parentDir, MANIFEST_FILE);
    if (!existsSync(m) || sha256Hex(readFileSync(m)) !== this.last.manifestSha256) {
      throw new SnapshotError('parent', `${m} changed or vanished since it was written; take a full snapshot`);
    }
  }
}
