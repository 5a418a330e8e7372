// The unix socket file of the control API: clear a stale one, never clobber a live one.
import { lstatSync, unlinkSync } from 'node:fs';
import { connect } from 'node:net';

/** Resolves true if something accepts connections on the unix socket at path. */
export function probeSocket(path: string, timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const sock = connect({ path });
    const done = (live: boolean): void => {
      clearTimeout(timer);
      sock.destroy();
      resolve(live);
    };
    // A listener that accepts but never answers still counts as live: it owns the path.
    const timer = setTimeout(() => done(true), timeoutMs);
    sock.once('connect', () => done(true));
    sock.once('error', () => done(false));
  });
}

/**
 * Makes path free for a new listening socket: removes a socket file nobody listens on, and
 * throws if a live server holds it or if it is not a socket at all (never deletes other files).
 */
export async function clearStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err;
  }
  if (!isSocket) throw new Error(`${path} exists and is not a socket; refusing to replace it`);
  if (await probeSocket(path)) throw new Error(`a Ferry guest is already listening on ${path}`);
  try {
    unlinkSync(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}
