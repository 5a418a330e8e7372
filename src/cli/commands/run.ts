// `ferry run`: run a WASI program as a guest in the foreground, optionally with a control socket.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { Command } from 'commander';
import type { CliContext } from '../main.js';
import { EXIT, UsageError } from '../exit-codes.js';
import { collect, openStdio, parseDirs, parseEnv, parseSize } from '../options.js';
import { Guest, type GuestExit } from '../../guest/guest.js';
import { serveGuestApi } from '../../api/guest-controller.js';

export function registerRun(program: Command, ctx: CliContext): void {
  program
    .command('run')
    .description('Run a WASI preview1 program as a guest (arguments after -- go to the guest).')
    .argument('<module>', 'the .wasm module to run')
    .option('--dir <HOST[:GUEST]>', 'preopen a host directory (repeatable)', collect, [])
    .option('--env <K=V>', 'set an environment variable for the guest (repeatable)', collect, [])
    .option('--stdin <FILE>', 'guest stdin from FILE (default: the terminal)')
    .option('--stdout <FILE>', 'guest stdout to FILE (default: the terminal)')
    .option('--stderr <FILE>', 'guest stderr to FILE (default: the terminal)')
    .option('--max-memory <SIZE>', 'cap on the guest memory maximum, e.g. 512M, 4G', '4G')
    .option('--api-sock <PATH>', 'serve the control API on this unix socket (mode 0600)')
    .addHelpText(
      'after',
      `
Examples:
  ferry run guests/build/memtouch.wasm -- --mib 64 --seconds 2
  ferry run app.wasm --dir ./data:/data --api-sock /tmp/app.sock -- --verbose

The module is instrumented once (safepoints and stack unwinding) and cached by content hash
under $FERRY_CACHE_DIR (default ~/.cache/ferry).`,
    )
    .action(async (modulePath: string, opts: RunFlags) => {
      ctx.setExit(await runCommand(modulePath, opts, ctx.guestArgs));
    });
}

interface RunFlags {
  dir: string[];
  env: string[];
  stdin?: string;
  stdout?: string;
  stderr?: string;
  maxMemory: string;
  apiSock?: string;
}

async function runCommand(modulePath: string, opts: RunFlags, guestArgs: string[]): Promise<number> {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(modulePath);
  } catch (err) {
    throw new UsageError(`cannot read module ${modulePath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const maxMemoryBytes = parseSize(opts.maxMemory, '--max-memory');
  if (maxMemoryBytes > 4 * 1024 ** 3) throw new UsageError(`--max-memory ${opts.maxMemory}: at most 4G (wasm32)`);
  const guest = await Guest.start({
    module: bytes,
    modulePath,
    args: [basename(modulePath), ...guestArgs],
    env: parseEnv(opts.env),
    preopens: parseDirs(opts.dir),
    stdio: openStdio(opts),
    maxMemoryBytes,
  });
  const api = opts.apiSock ? await serveGuestApi(guest, opts.apiSock) : null;
  const onSignal = () => void guest.stop();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  const result = await guest.exited;
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
  await api?.close();
  return exitCodeOf(result);
}

export function exitCodeOf(result: GuestExit): number {
  switch (result.reason) {
    case 'exit':
      return result.code ?? EXIT.failure;
    case 'trap':
      process.stderr.write(`ferry: guest trapped: ${result.message}${result.func ? ` (in guest function ${result.func})` : ''}\n`);
      return EXIT.trap;
    case 'stopped':
      return EXIT.stopped;
    case 'error':
      process.stderr.write(`ferry: guest failed: ${result.message}\n`);
      return EXIT.failure;
  }
}
