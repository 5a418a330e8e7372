// Shared pieces of the fault-injection suite: real ferry processes (source, destination, migrate)
// with a FaultProxy between source and destination, either TLS-PSK or --insecure, and a tally of
// injections tried/survived printed once per test file.
import { strict as assert } from 'node:assert';
import { after } from 'node:test';
import { checkSequence } from '../../src/cli/commands/demo.js';
import { ApiClient } from '../../src/api/client.js';
import type { MigrationStatus } from '../../src/api/types.js';
import { FerryProc, startDestination, startSource, verifyGuest, type Sandbox } from '../fixtures/migration/ferry-procs.js';
import { FaultProxy, type ChannelName, type FaultKind } from './proxy.js';
import { nativeFaultsEnabled } from '../../src/migration/dataplane/connect.js';

export type Security = 'tls-psk' | 'insecure';

/**
 * The connection that carries postcopy's page requests and their answers: the native data plane
 * connection where this host runs the fault path natively (then the urgent TLS channel carries
 * none), the urgent channel otherwise. Faults meant for "the urgent path" are aimed here.
 */
export const URGENT_PATH: ChannelName = nativeFaultsEnabled() ? 'dataplane' : 'urgent';

export const SECURITIES: Security[] = ['tls-psk', 'insecure'];

export function securityFlags(sb: Sandbox, sec: Security): string[] {
  return sec === 'insecure' ? ['--insecure'] : ['--tls-psk', sb.keyFile];
}

/** `ferry run --incoming 127.0.0.1:0` with the given security; resolves once it listens. */
export function startDestinationWith(sb: Sandbox, sec: Security): Promise<{ proc: FerryProc; port: number }> {
  return startDestination(sb, securityFlags(sb, sec));
}

/**
 * A memtouch source (512 MiB max) and a destination with a FaultProxy between them; both
 * processes are added to `procs` so the file's `after` kills them whatever happens.
 */
export async function proxiedPair(sb: Sandbox, sec: Security, guestArgs: string[], procs: FerryProc[]): Promise<{ src: FerryProc; dst: FerryProc; proxy: FaultProxy }> {
  const src = await startSource(sb, 'memtouch.wasm', guestArgs, '512M', 3);
  procs.push(src);
  const { proc: dst, port } = await startDestinationWith(sb, sec);
  procs.push(dst);
  return { src, dst, proxy: await FaultProxy.start('127.0.0.1', port) };
}

/**
 * The guest moved and carries on: the source exits 0, the destination prints SEQ lines, verifies
 * all `pages` and exits 0, and the two outputs form one sequence without a gap or a repeat.
 */
export async function assertGuestMoved(sb: Sandbox, src: FerryProc, dst: FerryProc, pages: number): Promise<void> {
  assert.equal(await src.exitWithin(30_000), 0, 'the source process exits 0 once the guest moved');
  await dst.waitFor(/^SEQ \d+ /m, 'a SEQ line from the destination', 60_000);
  assert.equal(await verifyGuest(dst, sb.dstWork, 120_000), `VERIFY OK ${pages}`);
  assert.equal(await dst.exitWithin(60_000), 0);
  const seq = checkSequence(src.out, dst.out);
  assert.ok(seq.ok, `${seq.problem} (source ${seq.source}, destination ${seq.destination})`);
}

/** A `ferry migrate --json` process, still running: the test watches the source while it works. */
export function startMigrate(sb: Sandbox, port: number, sec: Security, args: string[]): FerryProc {
  return new FerryProc('migrate', ['migrate', '--api-sock', sb.sock, '--to', `127.0.0.1:${port}`, ...securityFlags(sb, sec), '--json', ...args]);
}

export interface MigrateOutcome {
  code: number;
  json: Record<string, unknown>;
  stderr: string;
}

export async function migrateOutcome(proc: FerryProc, timeoutMs = 120_000): Promise<MigrateOutcome> {
  const code = await proc.exitWithin(timeoutMs);
  const line = proc.out.trim().split('\n').pop() ?? '';
  try {
    return { code, json: JSON.parse(line) as Record<string, unknown>, stderr: proc.err };
  } catch {
    throw new Error(`ferry migrate (exit ${code}) printed no JSON: ${JSON.stringify(proc.out.slice(-500))}\n${proc.err.slice(-2000)}`);
  }
}

/** Polls the source's GET /guest/migration until `pred` holds; returns that status. */
export async function waitForMigration(sock: string, pred: (s: MigrationStatus) => boolean, what: string, timeoutMs = 60_000): Promise<MigrationStatus> {
  const client = new ApiClient(sock);
  const deadline = Date.now() + timeoutMs;
  let last: MigrationStatus | null = null;
  let unreachable = 0;
  for (;;) {
    try {
      last = await client.migration();
      unreachable = 0;
    } catch (err) {
      // The source process is gone (or never listened): waiting longer cannot help.
      if (++unreachable >= 40) throw new Error(`waiting for ${what}: the source's API stopped answering (${(err as Error).message}); last status ${JSON.stringify(last)}`);
    }
    if (last && pred(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last status ${JSON.stringify(last)}`);
    await new Promise((r) => setTimeout(r, 15));
  }
}

/** What was injected: a proxy fault, or a host process killed. */
export type InjectionKind = FaultKind | 'kill';

/** Counts injections per kind; prints one line per kind when the test file ends. */
export class InjectionTally {
  private readonly rows = new Map<InjectionKind, { tried: number; survived: number }>();

  constructor(readonly title: string) {
    after(() => {
      for (const line of this.lines()) console.log(line);
    });
  }

  tried(kind: InjectionKind): void {
    this.row(kind).tried++;
  }

  survived(kind: InjectionKind): void {
    this.row(kind).survived++;
  }

  lines(): string[] {
    return [...this.rows].map(([kind, r]) => `${this.title}: ${kind.padEnd(7)} ${r.tried} injections tried, ${r.survived} survived`);
  }

  private row(kind: InjectionKind): { tried: number; survived: number } {
    let r = this.rows.get(kind);
    if (!r) this.rows.set(kind, (r = { tried: 0, survived: 0 }));
    return r;
  }
}
