// Shared pieces of the fault-injection suite: real ferry processes (source, destination, migrate)
// with a FaultProxy between source and destination, either TLS-PSK or --insecure, and a tally of
// injections tried/survived printed once per test file.
import { after } from 'node:test';
import { ApiClient } from '../../src/api/client.js';
import type { MigrationStatus } from '../../src/api/types.js';
import { FerryProc, startDestination, type Sandbox } from '../fixtures/migration/ferry-procs.js';
import type { FaultKind } from './proxy.js';

export type Security = 'tls-psk' | 'insecure';
export const SECURITIES: Security[] = ['tls-psk', 'insecure'];

export function securityFlags(sb: Sandbox, sec: Security): string[] {
  return sec === 'insecure' ? ['--insecure'] : ['--tls-psk', sb.keyFile];
}

/** `ferry run --incoming 127.0.0.1:0` with the given security; resolves once it listens. */
export function startDestinationWith(sb: Sandbox, sec: Security): Promise<{ proc: FerryProc; port: number }> {
  return startDestination(sb, securityFlags(sb, sec));
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
