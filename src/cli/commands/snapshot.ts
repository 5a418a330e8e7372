// `ferry snapshot --api-sock PATH --to DIR [--diff-from DIR] [--resume] [--json]`: asks a running
// guest's host (ferry run/restore --api-sock) to write a snapshot. Paths are made absolute here:
// the host process may run in another directory.
import { resolve } from 'node:path';
import { Command } from 'commander';
import type { CliContext } from '../main.js';
import { EXIT } from '../exit-codes.js';
import { ApiClient, ApiError } from '../../api/client.js';

interface SnapshotFlags {
  apiSock: string;
  to: string;
  diffFrom?: string;
  resume?: boolean;
  json?: boolean;
}

export function registerSnapshot(program: Command, ctx: CliContext): void {
  program
    .command('snapshot')
    .description('Save a running guest to a snapshot directory (state + sparse memory), then stop it or --resume it.')
    .requiredOption('--api-sock <PATH>', "the guest's control socket (ferry run/restore --api-sock)")
    .requiredOption('--to <DIR>', 'new snapshot directory (must not exist or be empty)')
    .option('--diff-from <DIR>', 'write only the pages changed since this snapshot (the last one taken of this guest)')
    .option('--resume', 'let the guest run on afterwards (default: stop it)')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', `
Examples:
  ferry snapshot --api-sock /tmp/app.sock --to /var/snap/app-1 --resume
  ferry snapshot --api-sock /tmp/app.sock --to /var/snap/app-2 --diff-from /var/snap/app-1
  ferry restore /var/snap/app-2 --lazy`)
    .action(async (opts: SnapshotFlags) => {
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
      } catch (err) {
        if (!(err instanceof ApiError) && !(err instanceof Error)) throw err;
        process.stderr.write(`ferry snapshot: ${err.message}\n`);
        ctx.setExit(EXIT.migrationFailed);
      }
    });
}
