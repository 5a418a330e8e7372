// The service address's moments on each side, as the migration sees them: the built-in mover
// (service-address.ts: `ip addr`, gratuitous ARP) and the user's hook commands, run at those
// same moments for deployments that move addresses another way (cloud APIs, BGP, keepalived).
// A hook gets the address in FERRY_SERVICE_ADDRESS (ADDR/PREFIX@IFACE, empty without one) and
// FERRY_SERVICE_EVENT (release | acquire); a non-zero exit is a failure of that step.
import { execFileSync } from 'node:child_process';
import { announceIpv4 } from './announce.js';
import { cannotTake, formatServiceAddress, releaseAddress, takeAddress, type ServiceAddress } from './service-address.js';

/** A hook runs at most this long (it is inside the guest's downtime). */
const HOOK_TIMEOUT_MS = 10_000;

export interface AddressMove {
  /** The addresses this side gives up (source) or takes (destination). */
  addresses: ServiceAddress[];
  /** Shell command run at the same moment (source: after release; destination: before take). */
  hook?: string | undefined;
}

function runHook(cmd: string, event: 'release' | 'acquire', addresses: ServiceAddress[]): void {
  try {
    execFileSync('/bin/sh', ['-c', cmd], {
      stdio: ['ignore', 'inherit', 'pipe'],
      timeout: HOOK_TIMEOUT_MS,
      env: { ...process.env, FERRY_SERVICE_EVENT: event, FERRY_SERVICE_ADDRESS: addresses.map(formatServiceAddress).join(' ') },
    });
  } catch (err) {
    const e = err as { stderr?: Buffer; status?: number | null; message: string };
    throw new Error(`the --on-${event} hook ${JSON.stringify(cmd)} failed (${e.status ?? 'killed'}): ${(e.stderr?.toString() ?? '').trim() || e.message}`);
  }
}

/** An undo that applies `step` to each address done so far (once), best effort: a rollback carries on past a failed step. */
function undoEach(done: ServiceAddress[], step: (a: ServiceAddress) => void): () => void {
  return () => {
    for (const a of done.splice(0)) {
      try {
        step(a);
      } catch {
        /* already as wanted, or beyond repair here: the rest of the rollback goes on */
      }
    }
  };
}

/** Why this host cannot take the addresses (checked at SETUP, before anything moves), or null. */
export function cannotAcquire(move: AddressMove): string | null {
  for (const a of move.addresses) {
    const why = cannotTake(a);
    if (why !== null) return `cannot take the service address ${formatServiceAddress(a)}: ${why}`;
  }
  return null;
}

/**
 * Destination, before its sockets are re-created: the hook, then each address added but not yet
 * announced (`announce` does that once the sockets exist: a client segment that reached this host
 * before its socket did would be answered with a reset). Returns an undo.
 */
export function acquire(move: AddressMove): () => void {
  if (move.hook !== undefined) runHook(move.hook, 'acquire', move.addresses);
  const taken: ServiceAddress[] = [];
  const undo = undoEach(taken, (a) => releaseAddress(a));
  try {
    for (const a of move.addresses) {
      takeAddress(a, 0);
      taken.push(a);
    }
  } catch (err) {
    undo();
    throw err;
  }
  return undo;
}

/** Destination, once its sockets exist: gratuitous ARPs, so clients' traffic comes here now. */
export function announce(move: AddressMove, count = 3): void {
  for (const a of move.addresses) announceIpv4(a.iface, a.address, count);
}

/** Source, right before COMMIT: each address removed, then the hook. Returns an undo (takes them back). */
export function release(move: AddressMove): () => void {
  const released: ServiceAddress[] = [];
  const undo = undoEach(released, (a) => takeAddress(a, 1));
  try {
    for (const a of move.addresses) {
      releaseAddress(a);
      released.push(a);
    }
    if (move.hook !== undefined) runHook(move.hook, 'release', move.addresses);
  } catch (err) {
    undo();
    throw err;
  }
  return undo;
}
