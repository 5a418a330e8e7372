// Binds a Guest to the control API: the HTTP handlers call these methods, and the CLI's
// `status|pause|resume|stop` and the migration/snapshot commands reach them through ApiClient.
import { ApiServer } from './server.js';
import { ControllerError, type GuestController, type GuestInfo, type MigrateRequest, type MigrationStatus, type SnapshotRequest } from './types.js';
import type { Guest } from '../guest/guest.js';

/** Optional capabilities a host process adds (migration source, snapshots). */
export interface GuestExtensions {
  migrate?(req: MigrateRequest): Promise<Record<string, unknown>>;
  migration?(): MigrationStatus | null;
  cancelMigration?(): Promise<void>;
  snapshot?(req: SnapshotRequest): Promise<Record<string, unknown>>;
  /** Overrides the reported run state (e.g. 'migrating'). */
  state?(): GuestInfo['state'] | null;
}

export class LocalGuestController implements GuestController {
  constructor(
    private readonly guest: Guest,
    private readonly ext: GuestExtensions = {},
  ) {}

  info(): GuestInfo {
    const g = this.guest;
    const exit = g.exitResult;
    const override = this.ext.state?.() ?? null;
    return {
      state: override ?? (g.status === 'failed' ? 'failed' : g.status),
      module: { path: g.modulePath, hash: g.moduleHash },
      memoryBytes: g.memory.buffer.byteLength,
      maxMemoryBytes: g.maxMemoryBytes,
      uptimeMs: g.uptimeMs,
      exitCode: exit?.code ?? null,
      pid: process.pid,
    };
  }

  async pause(): Promise<void> {
    this.requireLive('pause');
    await this.guest.pause();
  }

  async resume(): Promise<void> {
    this.requireLive('resume');
    if (this.guest.status !== 'paused') throw new ControllerError(409, 'not-paused', `the guest is ${this.guest.status}, not paused`);
    this.guest.resume();
  }

  async stop(): Promise<void> {
    await this.guest.stop();
  }

  migrate(req: MigrateRequest): Promise<Record<string, unknown>> {
    if (!this.ext.migrate) throw new ControllerError(501, 'unsupported', 'this guest host cannot migrate');
    this.requireLive('migrate');
    return this.ext.migrate(req);
  }

  migration(): MigrationStatus | null {
    return this.ext.migration?.() ?? null;
  }

  async cancelMigration(): Promise<void> {
    if (!this.ext.cancelMigration) throw new ControllerError(404, 'no-migration', 'no migration in progress');
    await this.ext.cancelMigration();
  }

  snapshot(req: SnapshotRequest): Promise<Record<string, unknown>> {
    if (!this.ext.snapshot) throw new ControllerError(501, 'unsupported', 'this guest host cannot take snapshots');
    this.requireLive('snapshot');
    return this.ext.snapshot(req);
  }

  private requireLive(op: string): void {
    if (this.guest.exitResult) throw new ControllerError(409, 'guest-ended', `cannot ${op}: the guest has ${this.guest.status}`);
  }
}

export async function serveGuestApi(guest: Guest, socketPath: string, ext: GuestExtensions = {}): Promise<ApiServer> {
  const server = new ApiServer(new LocalGuestController(guest, ext));
  await server.listen(socketPath);
  return server;
}
