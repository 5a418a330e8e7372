// What the control commands do once their flags are parsed: `status|pause|resume|stop`,
// `snapshot` and `migrate --cancel`. Shared by the commander program (src/cli/commands/) and the
// start-up fast path (fast-path.ts), so both print and exit alike. This module and what it imports
// stay light (the API client and node:http only): see fast-path.ts on why.
import { resolve } from 'node:path';
import { EXIT } from './exit-codes.js';
import { ApiClient, ApiError } from '../api/client.js';

export type ControlVerb = 'status' | 'pause' | 'resume' | 'stop';

export const CONTROL_VERBS: Record<ControlVerb, string> = {
  status: "Show a guest's state, module, memory size and uptime.",
  pause: 'Pause a guest at its next safepoint.',
  resume: 'Resume a paused guest.',
  stop: 'Stop a guest without running any more guest code.',
};

export async function controlAction(verb: ControlVerb, opts: { apiSock: string; json?: boolean }): Promise<number> {
  const client = new ApiClient(opts.apiSock);
  try {
    const result = verb === 'status' ? await client.info() : await client[verb]();
    if (opts.json) process.stdout.write(JSON.stringify(result ?? { ok: true }) + '\n');
    else if (result && typeof result === 'object') printInfo(result as unknown as Record<string, unknown>);
    else process.stdout.write(`${verb}: ok\n`);
    return EXIT.ok;
  } catch (err) {
    if (!(err instanceof Error)) throw err;
    process.stderr.write(`ferry ${verb}: ${err.message}\n`);
    return EXIT.failure;
  }
}

function printInfo(info: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(info)) {
    process.stdout.write(`${k.padEnd(16)}${typeof v === 'object' ? JSON.stringify(v) : String(v)}\n`);
  }
}

export interface SnapshotFlags {
  apiSock: string;
  to: string;
  diffFrom?: string;
  resume?: boolean;
  json?: boolean;
}

/** `ferry snapshot`: paths are made absolute here, since the guest's host may run elsewhere. */
export async function snapshotAction(opts: SnapshotFlags): Promise<number> {
  try {
    const result = await new ApiClient(opts.apiSock).snapshot({
      to: resolve(opts.to),
      ...(opts.diffFrom ? { diffFrom: resolve(opts.diffFrom) } : {}),
      resume: opts.resume === true,
    });
    if (opts.json) {
      process.stdout.write(JSON.stringify(result) + '\n');
    } else {
      const mib = (Number(result['bytesWritten']) / 1048576).toFixed(1);
      process.stdout.write(
        `snapshot ${String(result['kind'])} written to ${String(result['dir'])}: ${String(result['pagesWritten'])} pages (${mib} MiB) in ${String(result['writeMs'])} ms, guest paused ${String(result['pausedMs'])} ms, now ${String(result['guestAfter'])}\n`,
      );
    }
    return EXIT.ok;
  } catch (err) {
    if (!(err instanceof ApiError) && !(err instanceof Error)) throw err;
    process.stderr.write(`ferry snapshot: ${err.message}\n`);
    return EXIT.migrationFailed;
  }
}

/** `ferry migrate --cancel`: a failure (no guest, no migration) is thrown, as for the other migrate actions. */
export async function cancelMigrationAction(apiSock: string): Promise<number> {
  await new ApiClient(apiSock).cancelMigration();
  process.stderr.write('ferry migrate: cancelled; the guest keeps running on the source\n');
  return EXIT.ok;
}
