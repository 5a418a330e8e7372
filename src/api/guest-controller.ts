// Binds a Guest to the control API: the HTTP handlers call these methods, and the CLI's
// `status|pause|resume|stop` and the migration/snapshot commands reach them through ApiClient.
// A destination has no guest until the migration commits, so the guest is looked up each time.
import { ApiServer } from './server.js';
import { ControllerError, type GuestController, type GuestInfo, type MigrateRequest, type MigrationStatus, type ResumeMigrationRequest, type SnapshotRequest } from './types.js';
import type { Guest } from '../guest/guest.js';

/** Capabilities a host process adds (migration source or destination, snapshots). */
export type GuestExtensions = Partial<
  Pick<GuestController, 'migrate' | 'migration' | 'cancelMigration' | 'resumeMigration' | 'abandonMigration' | 'snapshot'>
> & {
  /** Overrides the reported run state (e.g. 'migrating'). */
  state?(): GuestInfo['state'] | null;
};

export class LocalGuestController implements GuestController {
  constructor(
    private readonly guestOf: () => Guest | null,
    private readonly ext: GuestExtensions = {},
  ) {}

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

  migrate(req: MigrateRequest): Promise<Record<string, unknown>> {
    if (!this.ext.migrate) throw new ControllerError(501, 'unsupported', 'this guest host cannot migrate its guest');
    this.live('migrate');
    return this.ext.migrate(req);
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

  snapshot(req: SnapshotRequest): Promise<Record<string, unknown>> {
    if (!this.ext.snapshot) throw new ControllerError(501, 'unsupported', 'this guest host cannot take snapshots');
    this.live('snapshot');
    return this.ext.snapshot(req);
  }

  private live(op: string): Guest {
    const g = this.guestOf();
    if (!g) throw new ControllerError(409, 'no-guest', `cannot ${op}: no guest runs here yet`);
    if (g.exitResult) throw new ControllerError(409, 'guest-ended', `cannot ${op}: the guest has ${g.status}`);
    return g;
  }
}

export async function serveGuestApi(guestOf: () => Guest | null, socketPath: string, ext: GuestExtensions = {}): Promise<ApiServer> {
  const server = new ApiServer(new LocalGuestController(guestOf, ext));
  await server.listen(socketPath);
  return server;
}
