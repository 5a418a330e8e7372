// `ferry run`: run a WASI program as a guest in the foreground — started from its module, or
// received from a migration source (`--incoming`) — optionally with a control socket.
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { Command } from 'commander';
import type { CliContext } from '../context.js';
import { EXIT, UsageError } from '../exit-codes.js';
import { collect, openStdio, parseDirs, parseEnv, parsePositiveNumber, parseServiceAddresses, parseSize } from '../options.js';
import { addTlsOptions, parseHostPortFlag, readTlsFlags, securityOf, type TlsFlags } from '../tls-options.js';
import type { Guest, GuestExit } from '../../guest/guest.js';
import type { GuestExtensions } from '../../api/guest-controller.js';
import { ControllerError, type MigrateRequest } from '../../api/types.js';
import type { MigrationDestination } from '../../migration/receive/destination.js';
import { DEFAULT_RECOVER_TIMEOUT_S } from '../../migration/session/defaults.js';
import { DEFAULT_HANDSHAKE_MS, DEFAULT_MAX_UNAUTHENTICATED } from '../../migration/transport/handshake-limits.js';
// The guest runtime, the migration engine and the snapshot layer are loaded with import() in the
// actions below, so that `ferry --help` and the control commands never load them (start-up time).

export function registerRun(program: Command, ctx: CliContext): void {
  const cmd = program
    .command('run')
    .description('Run a WASI preview1 program as a guest, or receive one (--incoming). Arguments after -- go to the guest.')
    .argument('[module]', 'the .wasm module to run (not with --incoming: the module comes with the guest)')
    .option('--dir <HOST[:GUEST]>', 'preopen a host directory (repeatable)', collect, [])
    .option('--listen <HOST:PORT>', 'preopen a listening TCP socket for the guest, after the directories (repeatable; port 0 picks one)', collect, [])
    .option('--env <K=V>', 'set an environment variable for the guest (repeatable; not with --incoming)', collect, [])
    .option('--stdin <FILE>', 'guest stdin from FILE (default: the terminal)')
    .option('--stdout <FILE>', 'guest stdout to FILE (default: the terminal)')
    .option('--stderr <FILE>', 'guest stderr to FILE (default: the terminal)')
    .option('--max-memory <SIZE>', 'cap on the guest memory maximum, e.g. 512M, 4G', '4G')
    .option('--api-sock <PATH>', 'serve the control API on this unix socket (mode 0600); with --incoming, the received guest can migrate on from there')
    .option('--incoming <HOST:PORT>', 'wait for a guest migrated from another host, then run it')
    .option('--recover-timeout <S>', 'with --incoming: how long a postcopy destination waits for a lost source to reconnect', String(DEFAULT_RECOVER_TIMEOUT_S))
    .option('--handshake-timeout <S>', 'with --incoming: how long a connection may take to authenticate (preface, TLS, HELLO, SETUP) before it is refused', String(DEFAULT_HANDSHAKE_MS / 1000))
    .option('--max-unauthenticated <N>', 'with --incoming: connections authenticating at once; more are closed on arrival', String(DEFAULT_MAX_UNAUTHENTICATED))
    .option('--service-address <ADDR/PREFIX@IFACE>', "with --incoming: the guest's service address, added to IFACE here and announced (gratuitous ARP) when its TCP connections arrive; a source is refused at SETUP if this host cannot take it (repeatable)", collect, [])
    .option('--on-acquire <CMD>', 'with --incoming: shell command run right before the service address is taken, inside the downtime (FERRY_SERVICE_ADDRESS, FERRY_SERVICE_EVENT=acquire; a failure aborts before the commit and the guest stays on the source)')
    .option('--max-refused <N>', 'with --incoming: give up (exit 6) after N refused peers while waiting (default: keep waiting)');
  addTlsOptions(cmd).addHelpText(
    'after',
    `
Examples:
  ferry run guests/build/memtouch.wasm -- --mib 64 --seconds 2
  ferry run app.wasm --dir ./data:/data --api-sock /tmp/app.sock -- --verbose
  ferry run --incoming 0.0.0.0:7700 --tls-psk key.hex --dir /srv/data:/data
  ferry run guests/build/kvserver.wasm --listen 127.0.0.1:6379 --api-sock /tmp/kv.sock

The module is instrumented once (safepoints and stack unwinding) and cached by content hash
under $FERRY_CACHE_DIR (default ~/.cache/ferry); a progress bar shows meanwhile on a terminal.
\`ferry prepare MODULE.wasm\` does it ahead of time. A destination instruments a module it has
not seen while the pages stream in, and lets the source pause only once that is done. With --incoming, the destination's streams
come from its own --stdin/--stdout/--stderr, and every guest directory must be mapped with --dir.

Sockets: each --listen is a listening socket the guest finds at the guest fds after its --dir
preopens (as with wasmtime --tcplisten), and accepts on with sock_accept; "ferry: guest listens on
ADDR:PORT (fd N)" is printed for each. A snapshot keeps the listeners, and a restore listens again
at the same addresses. Established connections cannot be kept: stopping the guest (also after
ferry snapshot --stop) resets them, so their peers see a connection reset, and in a restored guest
each of them fails with ECONNRESET on its next use. Live migration (ferry migrate) moves the
listeners and the connections with TCP_REPAIR, and --service-address moves the address with them.

A received guest (--incoming with --api-sock) can move on — ferry migrate --api-sock, back to where
it came from or elsewhere — or be snapshotted, as a started one, once its incoming migration has
completed (before that both are refused: migration-in-progress). Its process then exits 0.`,
  );
  cmd.action(async (modulePath: string | undefined, opts: RunFlags) => {
    ctx.setExit(opts.incoming ? await runIncoming(modulePath, opts, ctx.guestArgs) : await runModule(modulePath, opts, ctx.guestArgs));
  });
}

interface RunFlags extends TlsFlags {
  dir: string[];
  listen: string[];
  serviceAddress: string[];
  onAcquire?: string;
  env: string[];
  stdin?: string;
  stdout?: string;
  stderr?: string;
  maxMemory: string;
  apiSock?: string;
  incoming?: string;
  recoverTimeout: string;
  handshakeTimeout: string;
  maxUnauthenticated: string;
  maxRefused?: string;
}

async function runModule(modulePath: string | undefined, opts: RunFlags, guestArgs: string[]): Promise<number> {
  if (!modulePath) throw new UsageError('missing MODULE (or use --incoming HOST:PORT to receive a guest)');
  if (opts.insecure || opts.tlsPsk || opts.tlsCert) throw new UsageError('TLS flags belong to --incoming (and to ferry migrate)');
  // The guest's thread boots while this one loads the runtime and reads the module cache.
  (await import('../../guest/spare-worker.js')).startSpareWorker();
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(modulePath);
  } catch (err) {
    throw new UsageError(`cannot read module ${modulePath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const maxMemoryBytes = parseSize(opts.maxMemory, '--max-memory');
  if (maxMemoryBytes > 4 * 1024 ** 3) throw new UsageError(`--max-memory ${opts.maxMemory}: at most 4G (wasm32)`);
  const preopens = parseDirs(opts.dir);
  const env = parseEnv(opts.env);
  const [{ Guest }, { ModuleCache }, { InstrumentProgressBar }] = await Promise.all([
    import('../../guest/guest.js'),
    import('../../guest/module-cache.js'),
    import('../instrument-progress.js'),
  ]);
  // Instrument first (a progress bar on a terminal when the module is not cached yet), then start.
  const listen = opts.listen.map((l) => parseHostPortFlag(l, '--listen', true));
  const cache = new ModuleCache();
  const bar = new InstrumentProgressBar(basename(modulePath));
  try {
    await cache.load(bytes, { onProgress: bar.onProgress });
  } finally {
    bar.stop();
  }
  const guest = await Guest.start({
    cache,
    listen,
    module: bytes,
    modulePath,
    args: [basename(modulePath), ...guestArgs],
    env,
    preopens,
    stdio: openStdio(opts),
    maxMemoryBytes,
  });
  guest.listening.forEach((a, i) => {
    process.stderr.write(`ferry: guest listens on ${a.family === 6 ? `[${a.address}]` : a.address}:${a.port} (fd ${3 + preopens.length + i})\n`);
  });
  let migrated = false;
  let snapshotted = false;
  // The control API (HTTP server, migration engine, snapshots) is loaded only when asked for: a
  // plain run should not pay for it at start-up.
  const api = opts.apiSock ? await serveWithControl(guest, opts.apiSock, () => (migrated = true), () => (snapshotted = true)) : null;
  const result = await untilExit(guest);
  await api?.close();
  // A guest that moved to another host, or was saved to a snapshot and stopped, ended here on purpose: success.
  return migrated || snapshotted ? EXIT.ok : exitCodeOf(result);
}

async function runIncoming(modulePath: string | undefined, opts: RunFlags, guestArgs: string[]): Promise<number> {
  if (modulePath) throw new UsageError('--incoming takes no MODULE: the module travels with the guest');
  if (opts.env.length > 0) throw new UsageError('--env is refused with --incoming: the environment is part of the guest state');
  if (guestArgs.length > 0) throw new UsageError('guest arguments are refused with --incoming: they are part of the guest state');
  if (opts.listen.length > 0) throw new UsageError('--listen is refused with --incoming: listeners are part of the guest state');
  const { host, port } = parseHostPortFlag(opts.incoming!, '--incoming', true);
  const security = securityOf(readTlsFlags(opts));
  const maxRefused = opts.maxRefused === undefined ? undefined : parseCount(opts.maxRefused, '--max-refused');
  const [{ MigrationDestination }, { serveGuestApi }, { InstrumentProgressBar }] = await Promise.all([
    import('../../migration/receive/destination.js'),
    import('../../api/guest-controller.js'),
    import('../instrument-progress.js'),
  ]);
  const bar = new InstrumentProgressBar('the incoming module');
  const dest = new MigrationDestination({
    onInstrumentProgress: bar.onProgress,
    host,
    port,
    security,
    preopens: parseDirs(opts.dir),
    stdio: openStdio(opts),
    recoverTimeoutS: parsePositiveNumber(opts.recoverTimeout, '--recover-timeout'),
    handshakeTimeoutMs: parsePositiveNumber(opts.handshakeTimeout, '--handshake-timeout') * 1000,
    maxUnauthenticated: parseCount(opts.maxUnauthenticated, '--max-unauthenticated'),
    ...(maxRefused !== undefined ? { maxRefused } : {}),
    serviceAddresses: parseServiceAddresses(opts.serviceAddress),
    ...(opts.onAcquire !== undefined ? { onAcquire: opts.onAcquire } : {}),
    // One line per refused peer; the destination goes on waiting (or, past --max-refused, gives up).
    onRefused: (r) => process.stderr.write(`ferry: refused ${r.peer} (${r.phase}): ${r.reason} [${r.count} refused]\n`),
  });
  let guest: Guest | null = null;
  let completion: Promise<unknown> | null = null;
  // Once its migration has completed, the received guest can move on (B → A), snapshot included,
  // exactly like a guest started here: the same extensions, bound when they can work.
  let onward: GuestExtensions | null = null;
  let migrated = false;
  let snapshotted = false;
  const api = opts.apiSock
    ? await serveGuestApi(() => guest, opts.apiSock, incomingExtensions(dest, () => guest, () => onward))
    : null;
  const bound = await dest.listen();
  process.stderr.write(`ferry: waiting for a migration on ${host}:${bound}\n`);
  try {
    const incoming = await dest.receive().finally(() => bar.stop());
    const received = (guest = incoming.guest);
    completion = incoming.completion;
    incoming.completion.then(
      async (summary) => {
        if (summary.closingLost) process.stderr.write(`ferry: migration completed; ${summary.closingLost}\n`);
        // Every page is here and the source is done: a migration out (or a snapshot) can start.
        if (api && received.exitResult === null) onward = await onwardExtensions(received, () => (migrated = true), () => (snapshotted = true));
      },
      (err: Error) => process.stderr.write(`ferry: migration did not complete: ${err.message}\n`),
    );
  } catch (err) {
    await api?.close();
    process.stderr.write(`ferry: incoming migration failed: ${(err as Error).message}\n`);
    return EXIT.migrationFailed;
  }
  const result = await untilExit(guest);
  // A guest can end before its migration does (a short program finishes during postcopy, faster
  // still with the native data plane): the closing messages (FAULT_STATS, DIGEST, DONE) must still
  // reach the source, or it reconnects to a port that is gone until its recovery timeout.
  if (completion) await settleWithin(completion, COMPLETION_AFTER_EXIT_MS);
  await api?.close();
  // A guest that moved on to another host, or was saved and stopped, ended here on purpose.
  return migrated || snapshotted ? EXIT.ok : exitCodeOf(result);
}

/**
 * The control API of a destination: while the guest arrives, the incoming migration's progress;
 * once it has completed, what `onward()` binds (migrate, snapshot), as for a started guest. A
 * migration asked for before then is refused: the guest's pages are not all here yet.
 */
function incomingExtensions(dest: MigrationDestination, guestOf: () => Guest | null, onward: () => GuestExtensions | null): GuestExtensions {
  const notYet = (op: string) => new ControllerError(409, 'migration-in-progress', `cannot ${op}: the incoming migration has not completed yet`);
  return {
    migrate: async (req) => {
      const o = onward();
      if (!o?.migrate) throw notYet('migrate');
      return o.migrate(req);
    },
    snapshot: async (req) => {
      const o = onward();
      if (!o?.snapshot) throw notYet('snapshot');
      return o.snapshot(req);
    },
    // The outgoing migration's status once one has started; the incoming one's until then.
    migration: () => onward()?.migration?.() ?? dest.progress(),
    cancelMigration: () => delegate(onward()?.cancelMigration),
    resumeMigration: (req) => delegate(onward()?.resumeMigration, req),
    abandonMigration: () => delegate(onward()?.abandonMigration),
    state: () => (guestOf() ? (onward()?.state?.() ?? null) : 'migrating'),
    faultLatenciesUs: () => dest.faultLatenciesUs(),
  };
}

async function delegate<A extends unknown[]>(f: ((...a: A) => Promise<void>) | undefined, ...args: A): Promise<void> {
  if (!f) throw new ControllerError(404, 'no-migration', 'no migration in progress');
  return f(...args);
}

/** A received guest's migration and snapshot extensions (loaded only when its API is served). */
async function onwardExtensions(guest: Guest, onMigrated: () => void, onSnapshotted: () => void): Promise<GuestExtensions> {
  const { migrationExtensions } = await import('../../api/migration-binding.js');
  return withSnapshots(guest, migrationExtensions(guest, { onMigrated }), onSnapshotted);
}

/** How long a destination whose guest has ended still waits for its migration to complete. */
const COMPLETION_AFTER_EXIT_MS = 30_000;

function settleWithin(p: Promise<unknown>, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<void>((resolve) => {
    timer = setTimeout(() => {
      process.stderr.write(`ferry: the guest ended; the migration did not complete within ${ms / 1000} s after, exiting anyway\n`);
      resolve();
    }, ms);
  });
  return Promise.race([p.then(() => undefined, () => undefined), late]).finally(() => clearTimeout(timer));
}

function parseCount(value: string, flag: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value.trim()) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`${flag} ${value}: expected a whole number of at least 1`);
  return n;
}

/** Waits for the guest to end; SIGINT/SIGTERM stop it without running more guest code. */
export async function untilExit(guest: Guest): Promise<GuestExit> {
  const onSignal = () => void guest.stop();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  try {
    return await guest.exited;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
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

/** Serves the control API of a guest started by `ferry run MODULE`, with migration and snapshots. */
async function serveWithControl(guest: Guest, apiSock: string, onMigrated: () => void, onSnapshotted: () => void): Promise<{ close(): Promise<void> }> {
  const [{ serveGuestApi }, { migrationExtensions }] = await Promise.all([import('../../api/guest-controller.js'), import('../../api/migration-binding.js')]);
  return serveGuestApi(() => guest, apiSock, await withSnapshots(guest, migrationExtensions(guest, { onMigrated }), onSnapshotted));
}

/**
 * Adds PUT /guest/snapshot (src/snapshot) to a host's extensions. Snapshot dirty tracking holds the
 * memory's userfaultfd write-protect registration, so a migration releases it before it starts.
 */
async function withSnapshots(guest: Guest, ext: GuestExtensions, onStoppedBySnapshot: () => void): Promise<GuestExtensions> {
  const { snapshotExtensions } = await import('../../api/snapshot-binding.js');
  const snap = snapshotExtensions(guest, { onStoppedBySnapshot });
  const migrate = ext.migrate;
  return {
    ...ext,
    snapshot: snap.snapshot,
    ...(migrate ? { migrate: (req: MigrateRequest) => (snap.session.stopTracking(), migrate(req)) } : {}),
  };
}
