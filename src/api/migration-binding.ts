// The control API's view of an outgoing migration: turns a MigrateRequest into a MigrationSource,
// allows one at a time, exposes its progress, cancels it before switchover, and tells the host
// process when its guest has moved (the process then exits 0 without running guest code again).
import { parseServiceAddress, type ServiceAddress } from '../net/service-address.js';
import { ControllerError, type MigrateRequest, type MigrationStatus, type ResumeMigrationRequest } from './types.js';
import type { GuestExtensions } from './guest-controller.js';
import type { Guest } from '../guest/guest.js';
import { MigrationSource, SOURCE_DEFAULTS } from '../migration/send/source.js';
import { MigrationError } from '../migration/session/report.js';
import type { Security } from '../migration/transport/index.js';
import { parseHostPort } from '../migration/transport/host-port.js';

export interface MigrationBindingHooks {
  /** The guest now runs on the destination; it was stopped here. */
  onMigrated(report: Record<string, unknown>): void;
  /** The operator gave up a migration stuck after its commit point; the guest here was stopped. */
  onAbandoned?(): void;
}

export function migrationExtensions(guest: Guest, hooks: MigrationBindingHooks): GuestExtensions {
  let current: MigrationSource | null = null;
  let last: MigrationStatus | null = null;
  /** A migration that failed after its commit point: the guest stays paused here until abandoned. */
  let stuck = false;
  return {
    async migrate(req: MigrateRequest): Promise<Record<string, unknown>> {
      if (current) throw new ControllerError(409, 'migration-in-progress', 'a migration is already in progress');
      if (stuck) throw new ControllerError(409, 'after-commit', 'an earlier migration failed after its commit point; ferry migrate --abandon frees the guest');
      const { host, port } = parseTo(req.to);
      const source = new MigrationSource(guest, {
        host,
        port,
        security: securityOfRequest(req.tls),
        mode: req.mode ?? SOURCE_DEFAULTS.mode,
        maxBandwidth: req.maxBandwidth,
        downtimeTargetMs: req.downtimeTargetMs ?? SOURCE_DEFAULTS.downtimeTargetMs,
        precopyTimeoutS: req.precopyTimeoutS ?? SOURCE_DEFAULTS.precopyTimeoutS,
        verify: req.verify ?? false,
        recoverTimeoutS: req.recoverTimeoutS ?? SOURCE_DEFAULTS.recoverTimeoutS,
        serviceAddresses: parseServiceAddresses(req.serviceAddresses ?? []),
        ...(req.onRelease !== undefined ? { onRelease: req.onRelease } : {}),
      });
      current = source;
      try {
        const report = await source.run();
        await guest.stop(); // paused since the switchover: ends without running guest code
        hooks.onMigrated(report);
        return report;
      } catch (err) {
        if (err instanceof MigrationError) {
          if (err.code === 'after-commit') stuck = true;
          const status = err.code === 'not-converged' ? 422 : err.code === 'cancelled' ? 409 : err.code === 'not-movable' || err.code === 'guest' ? 409 : 502;
          throw new ControllerError(status, err.code, err.message);
        }
        throw err;
      } finally {
        last = source.progress();
        current = null;
      }
    },
    migration(): MigrationStatus | null {
      return current?.progress() ?? last;
    },
    async cancelMigration(): Promise<void> {
      if (!current) throw new ControllerError(404, 'no-migration', 'no migration in progress');
      if (!current.cancel()) throw new ControllerError(409, 'committed', 'the migration passed its commit point and cannot be cancelled');
    },
    async resumeMigration(req: ResumeMigrationRequest): Promise<void> {
      if (!current) throw new ControllerError(404, 'no-migration', 'no migration in progress');
      const to = req.to ? parseTo(req.to) : undefined;
      const security = req.tls ? securityOfRequest(req.tls) : undefined;
      if (!current.resumeNow(to ? { ...to, ...(security ? { security } : {}) } : undefined)) {
        throw new ControllerError(409, 'not-paused', 'the migration is not waiting for a connection (postcopy-paused)');
      }
    },
    async abandonMigration(): Promise<void> {
      if (current) {
        if (!current.abandon()) throw new ControllerError(409, 'not-committed', 'before its commit point a migration is cancelled (ferry migrate --cancel), not abandoned');
      } else if (!stuck) {
        throw new ControllerError(404, 'no-migration', 'no migration to abandon');
      }
      await guest.stop();
      hooks.onAbandoned?.();
    },
    state: () => (current ? 'migrating' : null),
  };
}

function parseTo(to: string): { host: string; port: number } {
  try {
    return parseHostPort(to);
  } catch (err) {
    throw new ControllerError(400, 'bad-request', `to: ${(err as Error).message}`);
  }
}

function securityOfRequest(tls: MigrateRequest['tls']): Security {
  if (!tls) throw new ControllerError(400, 'bad-request', 'tls: choose psk, cert/key/ca, or insecure');
  if (tls.insecure) return { kind: 'insecure' };
  if (tls.psk) {
    if (!/^([0-9a-f]{2}){16,}$/i.test(tls.psk)) throw new ControllerError(400, 'bad-request', 'tls.psk: expected at least 16 bytes of hex');
    return { kind: 'psk', key: Buffer.from(tls.psk, 'hex'), ...(tls.pskIdentity ? { identity: tls.pskIdentity } : {}) };
  }
  if (tls.cert && tls.key && tls.ca) return { kind: 'cert', cert: tls.cert, key: tls.key, ca: tls.ca };
  throw new ControllerError(400, 'bad-request', 'tls: choose psk, cert/key/ca, or insecure');
}

/** The request's service addresses, parsed (a bad one is the client's error: 400). */
function parseServiceAddresses(texts: string[]): ServiceAddress[] {
  try {
    return texts.map(parseServiceAddress);
  } catch (err) {
    throw new ControllerError(400, 'bad-request', (err as Error).message);
  }
}
