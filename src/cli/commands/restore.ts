// `ferry restore DIR [--lazy] [--api-sock PATH] [--dir ...] [--stdin/--stdout/--stderr FILE]`: runs a
// snapshot's guest in the foreground and exits with its exit code. Eager restore reads and checks
// every page first; --lazy starts the guest at once and loads pages on demand (userfaultfd) while a
// background loader fills in the rest.
import { Command } from 'commander';
import type { CliContext } from '../context.js';
import { EXIT, UsageError } from '../exit-codes.js';
import { collect, openStdio, parseDirs } from '../options.js';
import { exitCodeOf, untilExit } from './run.js';
import type { Guest } from '../../guest/guest.js';

interface RestoreFlags {
  lazy?: boolean;
  apiSock?: string;
  dir: string[];
  env: string[];
  stdin?: string;
  stdout?: string;
  stderr?: string;
}

export function registerRestore(program: Command, ctx: CliContext): void {
  program
    .command('restore')
    .description('Run a guest from a snapshot directory in the foreground, exiting with its exit code.')
    .argument('<snapshot>', 'snapshot directory (a diff snapshot brings its parents along)')
    .option('--lazy', 'start the guest at once and load memory on demand (userfaultfd)')
    .option('--api-sock <PATH>', 'serve the control API on this unix socket (mode 0600)')
    .option('--dir <HOST[:GUEST]>', 'map a guest directory to a host directory (every one the guest had)', collect, [])
    .option('--env <K=V>', 'refused: the environment is part of the snapshot', collect, [])
    .option('--stdin <FILE>', 'guest stdin from FILE (default: the terminal)')
    .option('--stdout <FILE>', 'guest stdout to FILE, appended (default: the terminal)')
    .option('--stderr <FILE>', 'guest stderr to FILE, appended (default: the terminal)')
    .addHelpText('after', `
Examples:
  ferry restore /var/snap/app-1 --dir /srv/data:/data
  ferry restore /var/snap/app-2 --lazy --api-sock /tmp/app.sock`)
    .action(async (dir: string, opts: RestoreFlags) => {
      ctx.setExit(await runRestore(dir, opts, ctx.guestArgs));
    });
}

async function runRestore(dir: string, opts: RestoreFlags, guestArgs: string[]): Promise<number> {
  if (opts.env.length > 0) throw new UsageError('--env is refused with restore: the environment is part of the snapshot');
  if (guestArgs.length > 0) throw new UsageError('guest arguments are refused with restore: they are part of the snapshot');
  const preopens = parseDirs(opts.dir);
  // Loaded here, not at start-up: the control commands never need them. The control API's
  // modules (HTTP server, schemas) only with --api-sock, and after the guest runs: loaded first,
  // they held a restore's first line back by 20-35 ms.
  const [{ restoreSnapshot }, { SnapshotError }] = await Promise.all([import('../../snapshot/restore.js'), import('../../snapshot/format.js')]);
  let restored;
  try {
    restored = await restoreSnapshot(dir, { lazy: opts.lazy === true, preopens, stdio: openStdio(opts, true) });
  } catch (err) {
    if (err instanceof SnapshotError) {
      process.stderr.write(`ferry restore: snapshot refused: ${err.message}\n`);
      return EXIT.migrationFailed;
    }
    throw err;
  }
  const { guest, loaded } = restored;
  let loadFailed = false;
  loaded.catch((err: Error) => {
    loadFailed = true;
    process.stderr.write(`ferry restore: ${err.message}; the guest was stopped\n`);
  });
  let stoppedBySnapshot = false;
  const api = opts.apiSock ? await serveRestoredGuest(guest, opts.apiSock, loaded, () => (stoppedBySnapshot = true)) : null;
  const result = await untilExit(guest);
  await loaded.catch(() => undefined); // the fault server stops (and releases the memory) first
  await api?.close();
  if (loadFailed) return EXIT.migrationFailed;
  return stoppedBySnapshot ? EXIT.ok : exitCodeOf(result);
}

/** The control API for a restored guest, its snapshot endpoints ready once its memory is (`loaded`). */
async function serveRestoredGuest(guest: Guest, apiSock: string, loaded: Promise<unknown>, onStoppedBySnapshot: () => void) {
  const [{ serveGuestApi }, { snapshotExtensions }] = await Promise.all([import('../../api/guest-controller.js'), import('../../api/snapshot-binding.js')]);
  return serveGuestApi(() => guest, apiSock, snapshotExtensions(guest, { ready: loaded, onStoppedBySnapshot }));
}
