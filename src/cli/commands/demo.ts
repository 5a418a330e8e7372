// `ferry demo`: the quick start. Starts a destination and a source on loopback (two processes,
// TLS with a throwaway pre-shared key), runs memtouch busy on the source, migrates it live, lets
// the guest verify every page on the destination, checks that its output sequence continues
// without a gap or a repeat, and prints the summary.
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Command, Option } from 'commander';
import type { CliContext } from '../context.js';
import { EXIT } from '../exit-codes.js';
import { parsePositiveNumber } from '../options.js';
import { migrateWithProgress, printReport } from './migrate.js';
import { ApiClient } from '../../api/client.js';
import { FerryProcess } from '../ferry-process.js';

const MEMTOUCH = fileURLToPath(new URL('../../../../guests/build/memtouch.wasm', import.meta.url));

interface DemoFlags {
  mib: string;
  rate: string;
  mode: 'auto' | 'precopy' | 'postcopy';
  json?: boolean;
  keep?: boolean;
}

export function registerDemo(program: Command, ctx: CliContext): void {
  program
    .command('demo')
    .description('Migrate a busy guest live between two local hosts (loopback, TLS with a throwaway key) and check it.')
    .option('--mib <N>', 'memory the guest fills and keeps rewriting', '1024')
    .option('--rate <PAGES_PER_SEC>', 'page rewrites per second (0 = as fast as it can)', '0')
    .addOption(new Option('--mode <MODE>', 'migration mode').choices(['auto', 'precopy', 'postcopy']).default('auto'))
    .option('--json', 'print one JSON object with the result')
    .option('--keep', 'keep the temporary directory (logs, key)')
    .action(async (opts: DemoFlags) => ctx.setExit(await demo(opts)));
}

/** SEQ numbers across both hosts must run 1, 2, 3, ... with nothing missing or repeated. */
export function checkSequence(sourceOut: string, destOut: string): { ok: boolean; source: [number, number]; destination: [number, number]; problem?: string } {
  const nums = (s: string) => [...s.matchAll(/^SEQ (\d+) /gm)].map((m) => Number(m[1]));
  const a = nums(sourceOut);
  const b = nums(destOut);
  const all = [...a, ...b];
  for (let i = 0; i < all.length; i++) {
    if (all[i] !== i + 1) return { ok: false, source: span(a), destination: span(b), problem: `expected SEQ ${i + 1}, found SEQ ${all[i]}` };
  }
  return { ok: a.length > 0 && b.length > 0, source: span(a), destination: span(b), ...(b.length === 0 ? { problem: 'no SEQ line from the destination' } : {}) };
}

function span(xs: number[]): [number, number] {
  return xs.length ? [xs[0]!, xs[xs.length - 1]!] : [0, 0];
}

async function demo(opts: DemoFlags): Promise<number> {
  const mibs = Math.round(parsePositiveNumber(opts.mib, '--mib'));
  const dir = mkdtempSync(join(tmpdir(), 'ferry-demo-'));
  const work = join(dir, 'work');
  mkdirSync(work);
  const keyHex = randomBytes(32).toString('hex');
  const keyFile = join(dir, 'psk.hex');
  writeFileSync(keyFile, keyHex, { mode: 0o600 });
  const sock = join(dir, 'source.sock');
  const say = (s: string) => {
    if (!opts.json) process.stderr.write(`demo: ${s}\n`);
  };
  const maxMemory = `${Math.ceil((mibs + 64) / 256) * 256}M`;
  let src: FerryProcess | null = null;
  let dst: FerryProcess | null = null;
  try {
    dst = new FerryProcess('destination', ['run', '--incoming', '127.0.0.1:0', '--tls-psk', keyFile, '--dir', `${work}:/work`]);
    const [, port] = await dst.waitFor(/waiting for a migration on \S*:(\d+)\n/, 'the destination to listen', 30_000, 'err');
    say(`destination listening on 127.0.0.1:${port}`);
    src = new FerryProcess('source', [
      'run', MEMTOUCH, '--api-sock', sock, '--dir', `${work}:/work`, '--max-memory', maxMemory, '--',
      '--mib', String(mibs), '--rate', opts.rate, '--report-ms', '100', '--verify-file', '/work/verify',
    ]);
    say(`source: memtouch fills ${mibs} MiB and rewrites it ${opts.rate === '0' ? 'as fast as it can' : `at ${opts.rate} pages/s`} (the first run instruments the module)`);
    await src.waitFor(/^SEQ 3 /m, 'memtouch to fill its memory', 300_000);
    say(`migrating live to the destination (${opts.mode}, TLS 1.3 PSK, --verify) ...`);
    const report = await migrateWithProgress(new ApiClient(sock), { to: `127.0.0.1:${port}`, mode: opts.mode, verify: true, tls: { psk: keyHex } }, !opts.json && process.stderr.isTTY === true);
    const sourceExit = await src.exited;
    say('the guest runs on the destination; asking it to verify every page ...');
    writeFileSync(join(work, 'verify'), '');
    const [verifyLine] = await dst.waitFor(/^VERIFY (OK|FAIL) \d+$/m, 'the guest to verify its memory', 300_000);
    const destExit = await dst.exited;
    const seq = checkSequence(src.out, dst.out);
    const ok = report['verified'] === true && verifyLine!.startsWith('VERIFY OK') && seq.ok && sourceExit === 0 && destExit === 0;
    const summary = { ok, report, guest: { verify: verifyLine, sequence: seq }, sourceExit, destinationExit: destExit };
    if (opts.json) process.stdout.write(JSON.stringify(summary) + '\n');
    else {
      printReport(report);
      process.stdout.write(
        `guest output    SEQ ${seq.source[0]}..${seq.source[1]} on the source, ${seq.destination[0]}..${seq.destination[1]} on the destination: ${seq.ok ? 'continuous, no gap, no repeat' : `BROKEN (${seq.problem})`}\n` +
          `guest check     ${verifyLine} (on the destination)\n` +
          `result          ${ok ? 'OK' : 'FAILED'}\n`,
      );
    }
    return ok ? EXIT.ok : EXIT.migrationFailed;
  } catch (err) {
    process.stderr.write(`demo: ${(err as Error).message}\n`);
    if (dst) process.stderr.write(`--- destination stderr ---\n${dst.err.slice(-3000)}\n`);
    if (src) process.stderr.write(`--- source stderr ---\n${src.err.slice(-3000)}\n`);
    return EXIT.migrationFailed;
  } finally {
    src?.child.kill('SIGKILL');
    dst?.child.kill('SIGKILL');
    // Kept: both hosts' stderr too (with FERRY_TRACE=phases, where the total time went).
    if (opts.keep) {
      if (src) writeFileSync(join(dir, 'source.err'), src.err);
      if (dst) writeFileSync(join(dir, 'destination.err'), dst.err);
      say(`kept ${dir}`);
    }
    else rmSync(dir, { recursive: true, force: true });
  }
}
