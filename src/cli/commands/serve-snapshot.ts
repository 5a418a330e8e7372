// `ferry serve-snapshot DIR --to HOST:PORT [TLS flags] [--json]`: sends a snapshot to a
// `ferry run --incoming` destination as a live postcopy source would; exits 0 once every page is placed.
import { Command } from 'commander';
import type { CliContext } from '../context.js';
import { EXIT } from '../exit-codes.js';
import { parsePositiveNumber } from '../options.js';
import { DEFAULT_RECOVER_TIMEOUT_S } from '../../migration/session/defaults.js';
import { addTlsOptions, parseHostPortFlag, readTlsFlags, securityOf, type TlsFlags } from '../tls-options.js';

interface ServeFlags extends TlsFlags {
  to: string;
  recoverTimeout: string;
  json?: boolean;
}

export function registerServeSnapshot(program: Command, ctx: CliContext): void {
  const cmd = program
    .command('serve-snapshot')
    .description('Start a snapshot on another host: feed a `ferry run --incoming` destination (postcopy from the file).')
    .argument('<snapshot>', 'snapshot directory')
    .requiredOption('--to <HOST:PORT>', 'the destination (ferry run --incoming HOST:PORT)')
    .option('--recover-timeout <S>', 'after the commit, how long postcopy keeps reconnecting a lost destination', String(DEFAULT_RECOVER_TIMEOUT_S))
    .option('--json', 'print the report as JSON');
  addTlsOptions(cmd).action(async (dir: string, opts: ServeFlags) => {
    const { host, port } = parseHostPortFlag(opts.to, '--to');
    const security = securityOf(readTlsFlags(opts));
    const recoverTimeoutS = parsePositiveNumber(opts.recoverTimeout, '--recover-timeout');
    // Loaded here, not at start-up: the control commands never need them.
    const [{ serveSnapshot }, { SnapshotError }] = await Promise.all([import('../../snapshot/serve.js'), import('../../snapshot/format.js')]);
    try {
      const report = await serveSnapshot(dir, {
        host,
        port,
        security,
        recoverTimeoutS,
        onPhase: (p) => { if (!opts.json) process.stderr.write(`ferry serve-snapshot: ${p}\n`); },
      });
      if (opts.json) process.stdout.write(JSON.stringify(report) + '\n');
      else {
        process.stdout.write(
          `snapshot served: ${report.pages} pages (${report.pagesBeforeCommit} with the state, ${report.pagesRequested} on request, ${report.pagesPushed} pushed) in ${report.totalMs} ms${report.outages > 0 ? `, ${report.outages} connection(s) lost and recovered` : ''}, digest ${report.verified ? 'verified' : 'MISMATCH'}\n`,
        );
      }
    } catch (err) {
      const refused = err instanceof SnapshotError ? 'snapshot refused: ' : '';
      process.stderr.write(`ferry serve-snapshot: ${refused}${(err as Error).message}\n`);
      ctx.setExit(EXIT.migrationFailed);
    }
  });
}
