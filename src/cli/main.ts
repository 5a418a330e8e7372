// Entry point of the `ferry` CLI: one commander program, one module per subcommand.
import { Command, CommanderError } from 'commander';
import { EXIT, EXIT_CODES_HELP, UsageError } from './exit-codes.js';
import { packageVersion } from '../version.js';
import { registerRun } from './commands/run.js';
import { registerControl } from './commands/control.js';
import { registerMigrate } from './commands/migrate.js';
import { registerDemo } from './commands/demo.js';
import { registerSnapshot } from './commands/snapshot.js';
import { registerRestore } from './commands/restore.js';
import { registerServeSnapshot } from './commands/serve-snapshot.js';
import { registerPrepare } from './commands/prepare.js';

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
  registerRun(program, ctx);
  registerPrepare(program, ctx);
  registerMigrate(program, ctx);
  registerDemo(program, ctx);
  registerControl(program, ctx);
  registerSnapshot(program, ctx);
  registerRestore(program, ctx);
  registerServeSnapshot(program, ctx);
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

export type { CliContext } from './context.js';

