// The control API's view of snapshots (PUT /guest/snapshot): a SnapshotSession per hosted guest,
// with SnapshotError mapped to HTTP answers here, in the API layer (src/snapshot knows nothing of
// HTTP). The host process learns when a snapshot stopped its guest.
import { ControllerError, type SnapshotRequest } from './types.js';
import type { GuestExtensions } from './guest-controller.js';
import type { Guest } from '../guest/guest.js';
import { SnapshotError } from '../snapshot/format.js';
import { SnapshotSession } from '../snapshot/session.js';

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
        if (err instanceof SnapshotError) throw new ControllerError(httpStatusOf(err), `snapshot-${err.code}`, err.message);
        throw err;
      }
    },
  };
}

/** A snapshot that exists or names the wrong parent is a conflict; a host failure (disk full, I/O error, read-only) the server's side; the rest a bad request. */
export function httpStatusOf(err: SnapshotError): 409 | 500 | 400 {
  return err.code === 'exists' || err.code === 'parent' ? 409 : err.code === 'io' ? 500 : 400;
}
