// `ferry snapshot --api-sock PATH --to DIR [--diff-from DIR] [--resume] [--json]`: asks a running
// guest's host (ferry run/restore --api-sock) to write a snapshot. Paths are made absolute here:
// the host process may run in another directory.
import { Command } from 'commander';
import type { CliContext } from '../context.js';
import { snapshotAction, type SnapshotFlags } from '../control-actions.js';

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
    .action(async (opts: SnapshotFlags) => ctx.setExit(await snapshotAction(opts)));
}
