// `ferry migrate`: ask a running guest's host (through its control socket) to migrate it live.
import { Command, Option } from 'commander';
import type { CliContext } from '../context.js';
import { EXIT, UsageError } from '../exit-codes.js';
import { collect, parsePositiveNumber, parseServiceAddresses, parseSize } from '../options.js';
import { addTlsOptions, parseHostPortFlag, readTlsFlags, type TlsFlags } from '../tls-options.js';
import { ApiClient, ApiError } from '../../api/client.js';
import type { MigrateRequest } from '../../api/types.js';
import { cancelMigrationAction } from '../control-actions.js';
import { SOURCE_DEFAULTS } from '../../migration/session/defaults.js';

interface MigrateFlags extends TlsFlags {
  apiSock: string;
  to?: string;
  mode: 'auto' | 'precopy' | 'postcopy';
  maxBandwidth?: string;
  downtimeTarget: string;
  precopyTimeout: string;
  verify?: boolean;
  json?: boolean;
  cancel?: boolean;
  resume?: boolean;
  abandon?: boolean;
  recoverTimeout: string;
  serviceAddress: string[];
  onRelease?: string;
}

export function registerMigrate(program: Command, ctx: CliContext): void {
  const cmd = program
    .command('migrate')
    .description('Migrate a running guest live to a destination started with `ferry run --incoming`.')
    .requiredOption('--api-sock <PATH>', "the source guest's control socket (ferry run --api-sock)")
    .option('--to <HOST:PORT>', "the destination's --incoming address")
    .addOption(new Option('--mode <MODE>', 'precopy, postcopy (after one precopy pass, cut short when the guest rewrites what it sends faster than it goes), or auto (precopy while it converges)').choices(['auto', 'precopy', 'postcopy']).default(SOURCE_DEFAULTS.mode))
    .option('--max-bandwidth <RATE>', 'cap on bytes/s for the background stream, e.g. 100M')
    .option('--downtime-target <MS>', 'stop-and-copy when the rest fits in this downtime', String(SOURCE_DEFAULTS.downtimeTargetMs))
    .option('--precopy-timeout <S>', 'give up precopy after S seconds (auto mode switches to postcopy earlier)', String(SOURCE_DEFAULTS.precopyTimeoutS))
    .option('--verify', 'compare a digest of all guest memory on both sides')
    .option('--json', 'print one JSON object with the result, no progress bar')
    .option('--recover-timeout <S>', 'after the switchover, how long postcopy keeps reconnecting a lost destination', String(SOURCE_DEFAULTS.recoverTimeoutS))
    .option('--cancel', 'abort the migration in progress (before switchover only)')
    .option('--resume', 'postcopy-paused: reconnect now (with --to, to a new address)')
    .option('--abandon', 'give up a migration that failed after its switchover and free the guest here')
    .option('--service-address <ADDR/PREFIX@IFACE>', "the guest's service address: removed from IFACE here right after the pause, before its TCP connections are frozen and moved (the destination takes it with its own --service-address; repeatable)", collect, [] as string[])
    .option('--on-release <CMD>', 'shell command run here right after the service address is given up, inside the downtime (FERRY_SERVICE_ADDRESS, FERRY_SERVICE_EVENT=release in its environment; a failure aborts and the guest stays here)');
  addTlsOptions(cmd).addHelpText(
    'after',
    `
Examples:
  ferry run --incoming 0.0.0.0:7700 --tls-psk key.hex          # on the destination
  ferry migrate --api-sock /tmp/app.sock --to dst:7700 --tls-psk key.hex --verify

The source process exits 0 once the guest runs on the destination. Exit code 3: precopy did not
converge (the guest keeps running here); 6: the migration failed.`,
  );
  cmd.action(async (opts: MigrateFlags) => ctx.setExit(await migrateCommand(opts)));
}

async function migrateCommand(opts: MigrateFlags): Promise<number> {
  const client = new ApiClient(opts.apiSock);
  const actions = [opts.cancel, opts.resume, opts.abandon].filter(Boolean).length;
  if (actions > 1) throw new UsageError('--cancel, --resume and --abandon exclude each other');
  if (opts.cancel) return cancelMigrationAction(opts.apiSock);
  if (opts.abandon) {
    await client.abandonMigration();
    process.stderr.write('ferry migrate: abandoned; the guest was freed on the source\n');
    return EXIT.ok;
  }
  if (opts.resume) {
    if (opts.to) parseHostPortFlag(opts.to, '--to');
    const hasTls = Boolean(opts.insecure || opts.tlsPsk || opts.tlsCert);
    await client.resumeMigration({ ...(opts.to ? { to: opts.to } : {}), ...(hasTls ? { tls: readTlsFlags(opts) } : {}) });
    process.stderr.write('ferry migrate: reconnecting\n');
    return EXIT.ok;
  }
  if (!opts.to) throw new UsageError('--to HOST:PORT is required');
  parseHostPortFlag(opts.to, '--to');
  const tls = readTlsFlags(opts);
  const req: MigrateRequest = {
    to: opts.to,
    mode: opts.mode,
    downtimeTargetMs: parsePositiveNumber(opts.downtimeTarget, '--downtime-target'),
    precopyTimeoutS: parsePositiveNumber(opts.precopyTimeout, '--precopy-timeout'),
    verify: Boolean(opts.verify),
    recoverTimeoutS: parsePositiveNumber(opts.recoverTimeout, '--recover-timeout'),
    tls,
  };
  if (opts.maxBandwidth) req.maxBandwidth = parseSize(opts.maxBandwidth, '--max-bandwidth');
  parseServiceAddresses(opts.serviceAddress); // refused here, before the request is sent
  if (opts.serviceAddress.length > 0) req.serviceAddresses = opts.serviceAddress;
  if (opts.onRelease !== undefined) req.onRelease = opts.onRelease;
  return runMigration(client, req, { json: Boolean(opts.json) });
}

/** Runs a migration through the API with a live progress bar; resolves with the final report. */
export async function migrateWithProgress(client: ApiClient, req: MigrateRequest, showBar: boolean): Promise<Record<string, unknown>> {
  // cli-progress (and what the bar formats with) is loaded only when a migration runs.
  const { MigrationProgressBar } = await import('../progress.js');
  const bar = new MigrationProgressBar(showBar);
  const poll = setInterval(() => {
    client.migration().then(
      (s) => bar.update(s),
      () => undefined,
    );
  }, 200);
  try {
    return await client.migrate(req);
  } finally {
    clearInterval(poll);
    bar.stop();
  }
}

async function runMigration(client: ApiClient, req: MigrateRequest, out: { json: boolean }): Promise<number> {
  try {
    const report = await migrateWithProgress(client, req, !out.json && process.stderr.isTTY === true);
    if (out.json) process.stdout.write(JSON.stringify(report) + '\n');
    else printReport(report);
    return EXIT.ok;
  } catch (err: unknown) {
    if (!(err instanceof ApiError)) throw err;
    const code = err.code === 'not-converged' ? EXIT.notConverged : EXIT.migrationFailed;
    if (out.json) {
      const body: Record<string, unknown> = { error: { code: err.code, message: err.message } };
      if (err.code === 'not-converged') body['converged'] = false;
      process.stdout.write(JSON.stringify(body) + '\n');
    } else process.stderr.write(`ferry migrate: ${err.message}\n`);
    return code;
  }
}

export function printReport(r: Record<string, unknown>): void {
  const pc = r['postcopy'] as Record<string, unknown> | undefined;
  const lines = [
    `mode            ${r['mode']}${r['converged'] ? ' (converged)' : ''}`,
    `memory          ${mib(r['memoryBytes'])}`,
    `total           ${r['totalMs']} ms`,
    `downtime        ${r['downtimeMs']} ms${typeof r['switchoverSentMs'] === 'number' ? ` (pause → running on the destination; ${r['switchoverSentMs']} ms to the switchover sent, where QEMU stops counting)` : ''}`,
    `sent            ${mib(r['bytesSent'])} (${r['pagesSent']} pages; ${r['zeroPages']} zero, ${r['skippedNeverTouchedPages']} never touched)`,
    `throughput      ${(Number(r['bytesSent']) / Math.max(1, Number(r['totalMs'])) / 1000).toFixed(0)} MB/s`,
    `precopy passes  ${r['precopyPasses']}${precopyCutText(r['precopyCut'])}`,
    `verified        ${r['verified'] === null ? (r['closingLost'] ? 'unknown: the closing messages were lost' : 'not asked (--verify)') : r['verified'] ? 'yes: memory digests match' : 'NO: memory digests differ'}`,
  ];
  if (r['closingLost']) lines.push(`closing         ${r['closingLost']}`);
  if (pc) {
    const lat = pc['faultLatencyUs'] as Record<string, number>;
    lines.push(
      `postcopy        ${pc['pagesRequested']} pages on request, ${pc['pagesPushed']} pushed, ${pc['faults']} faults, fault latency p50 ${lat['p50']} µs p99 ${lat['p99']} µs, guest blocked ${pc['guestBlockedMs']} ms`,
    );
  }
  process.stdout.write(lines.join('\n') + '\n');
}

/** A futile pass 0 cut short (MigrationReport.precopyCut), as the report's line says it. */
function precopyCutText(cut: unknown): string {
  if (!cut || typeof cut !== 'object') return '';
  const c = cut as { atPage?: unknown; leftOutPages?: unknown };
  return ` (pass 0 cut at page ${c.atPage}: the guest rewrote what it sent; ${c.leftOutPages} pages went by postcopy only)`;
}

function mib(v: unknown): string {
  return `${(Number(v) / (1 << 20)).toFixed(1)} MiB`;
}
