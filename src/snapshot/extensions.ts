// Binds snapshots to the control API (PUT /guest/snapshot): a SnapshotSession per hosted guest, with
// SnapshotError mapped to HTTP answers. The host process learns when a snapshot stopped its guest.
import { ControllerError, type SnapshotRequest } from '../api/types.js';
import type { GuestExtensions } from '../api/guest-controller.js';
import type { Guest } from '../guest/guest.js';
import { SnapshotError } from './format.js';
import { SnapshotSession } from './session.js';

export interface SnapshotBindingHooks {
  /** A snapshot without resume stopped the guest on purpose. */
  onStoppedBySnapshot?(): void;
  /** Resolves when the guest's memory is fully in place (lazy restore). */
  ready?: Promise<unknown>;
}

export function snapshotExtensions(guest: Guest, hooks: SnapshotBindingHooks = {}): Required<Pick<GuestExtensions, 'snapshot'>> & { session: SnapshotSession } {
  const session = new SnapshotSession(guest, hooks.ready ?? Promise.resolve());
  return {
    session,
    async snapshot(req: SnapshotRequest): Promise<Record<string, unknown>> {
      try {
        const r = await session.take(req);
        if (r.guestAfter === 'stopped') hooks.onStoppedBySnapshot?.();
        return { ...r };
      } catch (err) {
        if (err instanceof SnapshotError) {
          // A host failure (disk full, I/O error, read-only) is the server's side: 500.
          const status = err.code === 'exists' || err.code === 'parent' ? 409 : err.code === 'io' ? 500 : 400;
          throw new ControllerError(status, `snapshot-${err.code}`, err.message);
        }
        throw err;
      }
    },
  };
}
