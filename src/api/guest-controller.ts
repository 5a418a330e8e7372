// Binds a Guest to the control API: the HTTP handlers call these methods, and the CLI's
// `status|pause|resume|stop` and the migration/snapshot commands reach them through ApiClient.
// A destination has no guest until the migration commits, so the guest is looked up each time.
import { ApiServer } from './server.js';
import { ControllerError, type GuestController, type GuestInfo, type MigrateRequest, type MigrationStatus, type ResumeMigrationRequest, type SnapshotRequest } from './types.js';
import type { Guest } from '../guest/guest.js';
import { GuestMemory, WASM_PAGE_SIZE } from '../memory/guest-memory.js';
import { scanResidency } from '../memory/residency.js';
import { GuestMetrics } from './metrics.js';
import { packageVersion } from '../version.js';

/** Capabilities a host process adds (migration source or destination, snapshots). */
export type GuestExtensions = Partial<
  Pick<GuestController, 'migrate' | 'migration' | 'cancelMigration' | 'resumeMigration' | 'abandonMigration' | 'snapshot'>
> & {
  /** Overrides the reported run state (e.g. 'migrating'). */
  state?(): GuestInfo['state'] | null;
  /** Postcopy fault latencies (µs) measured by this host (a destination), for GET /metrics. */
  faultLatenciesUs?(): readonly number[] | null;
};

export class LocalGuestController implements GuestController {
  readonly counters = new GuestMetrics();
  private readonly lookUp: () => Guest | null;

  constructor(
    guestOf: () => Guest | null,
    private readonly ext: GuestExtensions = {},
  ) {
    // Every guest this controller sees has its pauses counted (a destination's appears at the commit).
    this.lookUp = guestOf;
    this.guestOf();
  }

  private guestOf(): Guest | null {
    const g = this.lookUp();
    if (g) this.counters.track(g);
    return g;
  }

  info(): GuestInfo {
    const g = this.guestOf();
    const override = this.ext.state?.() ?? null;
    if (!g) {
      return {
        state: override ?? 'starting',
        module: { path: null, hash: '' },
        memoryBytes: 0,
        maxMemoryBytes: 0,
        uptimeMs: 0,
        exitCode: null,
        pid: process.pid,
      };
    }
    const exit = g.exitResult;
    return {
      state: override ?? g.status,
      module: { path: g.modulePath, hash: g.moduleHash },
      memoryBytes: g.memory.buffer.byteLength,
      maxMemoryBytes: g.maxMemoryBytes,
      uptimeMs: g.uptimeMs,
      exitCode: exit?.code ?? null,
      pid: process.pid,
    };
  }

  async pause(): Promise<void> {
    await this.live('pause').pause();
  }

  async resume(): Promise<void> {
    const g = this.live('resume');
    if (g.status !== 'paused') throw new ControllerError(409, 'not-paused', `the guest is ${g.status}, not paused`);
    g.resume();
  }

  async stop(): Promise<void> {
    await this.guestOf()?.stop();
  }

  async migrate(req: MigrateRequest): Promise<Record<string, unknown>> {
    if (!this.ext.migrate) throw new ControllerError(501, 'unsupported', 'this guest host cannot migrate its guest');
    this.live('migrate');
    if (this.ext.state?.() === 'migrating') return this.ext.migrate(req); // refused: one at a time
    this.counters.migrationStarted();
    try {
      const report = await this.ext.migrate(req);
      this.counters.migrationEnded('completed', this.migration(), report);
      return report;
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      this.counters.migrationEnded(code === 'cancelled' ? 'cancelled' : 'failed', this.migration(), null);
      throw err;
    }
  }

  migration(): MigrationStatus | null {
    return this.ext.migration?.() ?? null;
  }

  async cancelMigration(): Promise<void> {
    if (!this.ext.cancelMigration) throw new ControllerError(404, 'no-migration', 'no migration in progress');
    await this.ext.cancelMigration();
  }

  async resumeMigration(req: ResumeMigrationRequest): Promise<void> {
    if (!this.ext.resumeMigration) throw new ControllerError(404, 'no-migration', 'no migration in progress');
    await this.ext.resumeMigration(req);
  }

  async abandonMigration(): Promise<void> {
    if (!this.ext.abandonMigration) throw new ControllerError(404, 'no-migration', 'no migration in progress');
    await this.ext.abandonMigration();
  }

  async snapshot(req: SnapshotRequest): Promise<Record<string, unknown>> {
    if (!this.ext.snapshot) throw new ControllerError(501, 'unsupported', 'this guest host cannot take snapshots');
    this.live('snapshot');
    try {
      const r = await this.ext.snapshot(req);
      this.counters.snapshotTaken(String(r['kind']));
      return r;
    } catch (err) {
      this.counters.snapshotFailed();
      throw err;
    }
  }

  metrics(): string {
    const g = this.guestOf();
    return this.counters.render(
      {
        info: this.info(),
        residentPages: g ? residentPages(g) : null,
        migration: this.migration(),
        faultLatenciesUs: this.ext.faultLatenciesUs?.() ?? null,
      },
      packageVersion(),
    );
  }

  private live(op: string): Guest {
    const g = this.guestOf();
    if (!g) throw new ControllerError(409, 'no-guest', `cannot ${op}: no guest runs here yet`);
    if (g.exitResult) throw new ControllerError(409, 'guest-ended', `cannot ${op}: the guest has ${g.status}`);
    return g;
  }
}

/** Host pages of the guest's memory present in RAM (PAGEMAP_SCAN: no page is read), or null. */
function residentPages(g: Guest): number | null {
  try {
    return scanResidency(new GuestMemory(g.memory, g.maxMemoryBytes / WASM_PAGE_SIZE)).present.count();
  } catch {
    return null;
  }
}

export async function serveGuestApi(guestOf: () => Guest | null, socketPath: string, ext: GuestExtensions = {}): Promise<ApiServer> {
  const server = new ApiServer(new LocalGuestController(guestOf, ext));
  await server.listen(socketPath);
  return server;
}
