// Entry point of the `ferry` CLI: one commander program, one module per subcommand.
import { Command, CommanderError } from 'commander';
import { EXIT, EXIT_CODES_HELP, UsageError } from './exit-codes.js';
import { packageVersion } from '../version.js';
import type { CliContext } from './context.js';

type Register = (program: Command, ctx: CliContext) => void;

// Each subcommand's module, loaded only when needed: together they pull in node:crypto, node:net,
// node:child_process and the migration transport, which a `ferry run` would otherwise load for
// nothing (start-up time). The order is the one `ferry --help` lists them in.
const COMMANDS: [names: string[], load: () => Promise<Register>][] = [
  [['run'], async () => (await import('./commands/run.js')).registerRun],
  [['prepare'], async () => (await import('./commands/prepare.js')).registerPrepare],
  [['migrate'], async () => (await import('./commands/migrate.js')).registerMigrate],
  [['demo'], async () => (await import('./commands/demo.js')).registerDemo],
  [['status', 'pause', 'resume', 'stop'], async () => (await import('./commands/control.js')).registerControl],
  [['snapshot'], async () => (await import('./commands/snapshot.js')).registerSnapshot],
  [['restore'], async () => (await import('./commands/restore.js')).registerRestore],
  [['serve-snapshot'], async () => (await import('./commands/serve-snapshot.js')).registerServeSnapshot],
];

/**
 * The subcommands to register: only the named one when the first argument names one (its
 * options, help and errors are the same either way), every one otherwise (`ferry --help`, an
 * unknown command and its suggestions).
 */
async function commandsFor(first: string | undefined): Promise<Register[]> {
  const named = COMMANDS.find(([names]) => first !== undefined && names.includes(first));
  return Promise.all((named ? [named] : COMMANDS).map(([, load]) => load()));
}

export async function main(argv: string[]): Promise<number> {
  // Everything after `--` belongs to the guest, never to Ferry.
  const dd = argv.indexOf('--');
  const ferryArgs = dd >= 0 ? argv.slice(0, dd) : argv;
  const guestArgs = dd >= 0 ? argv.slice(dd + 1) : [];
  let exitCode: number = EXIT.ok;
  const program = new Command('ferry')
    .description('Live migration and instant restore for WebAssembly (WASI) guests.')
    .addHelpText('after', `\n${EXIT_CODES_HELP}\n\nRun \`ferry demo\` to watch a guest migrate live between two local hosts.`)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) })
    .showHelpAfterError('(run with --help for usage)')
    .version(packageVersion(), '-V, --version', 'print the package version');
  const ctx = { guestArgs, setExit: (c: number) => (exitCode = c) };
  for (const register of await commandsFor(ferryArgs[0])) register(program, ctx);
  try {
    await program.parseAsync(ferryArgs, { from: 'user' });
    return exitCode;
  } catch (err) {
    if (err instanceof CommanderError) {
      return err.exitCode === 0 ? EXIT.ok : EXIT.usage;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`ferry: ${err.message}\n(run with --help for usage)\n`);
      return EXIT.usage;
    }
    // By name, not instanceof: importing instrument.ts here would load it for every command.
    if (err instanceof Error && err.name === 'ModuleRejected') {
      process.stderr.write(`ferry: module refused: ${err.message}\n`);
      return EXIT.moduleRefused;
    }
    throw err;
  }
}

/**
 * Ends the process at once (_exit(2); bin/ferry.js says why) through this program's own copy of
 * the addon's module: in the bundle it is already loaded, where bin/ferry.js's import() of it
 * loaded the module and its imports again (≈ 10 ms after every guest's end).
 */
export async function exitNow(code: number): Promise<never> {
  return (await import('../sys/native.js')).native.exitNow(code);
}

export type { CliContext } from './context.js';

