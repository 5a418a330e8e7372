// Parsing helpers for CLI option values shared by several subcommands.
import { existsSync, statSync, openSync } from 'node:fs';
import { resolve } from 'node:path';
import { UsageError } from './exit-codes.js';
import { parseServiceAddress, type ServiceAddress } from '../net/service-address.js';
import type { Preopen } from '../wasi/wasi.js';

export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

/** `--dir HOST[:GUEST]`: the guest path defaults to the host path as given. */
export function parseDirs(specs: string[]): Preopen[] {
  return specs.map((spec) => {
    const i = spec.indexOf(':');
    const host = i >= 0 ? spec.slice(0, i) : spec;
    const guest = i >= 0 ? spec.slice(i + 1) : spec;
    if (!host || !guest) throw new UsageError(`--dir ${spec}: expected HOST[:GUEST]`);
    const hostPath = resolve(host);
    if (!existsSync(hostPath) || !statSync(hostPath).isDirectory()) throw new UsageError(`--dir ${spec}: ${hostPath} is not a directory`);
    return { hostPath, guestPath: guest };
  });
}

export function parseEnv(specs: string[]): Record<string, string> {
  const env: Record<string, string> = {};
  for (const s of specs) {
    const i = s.indexOf('=');
    if (i <= 0) throw new UsageError(`--env ${s}: expected K=V`);
    env[s.slice(0, i)] = s.slice(i + 1);
  }
  return env;
}

/** Parses sizes and rates like 4G, 512M, 100K, 1048576 (binary multiples). */
export function parseSize(value: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?[bB])?(\/s)?$/.exec(value.trim());
  if (!m) throw new UsageError(`${flag} ${value}: expected a number with an optional K, M or G suffix`);
  const mult = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 }[m[2]!.toLowerCase()]!;
  const n = Math.round(parseFloat(m[1]!) * mult);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`${flag} ${value}: must be positive`);
  return n;
}

export function parsePositiveNumber(value: string, flag: string): number {
  const n = Number(value);
  if (!Number.isFinite(n) || n <= 0) throw new UsageError(`${flag} ${value}: expected a positive number`);
  return n;
}

export interface StdioFlags {
  stdin?: string;
  stdout?: string;
  stderr?: string;
}

/** Opens --stdin/--stdout/--stderr files; the terminal (fds 0–2) otherwise. */
export function openStdio(flags: StdioFlags, append = false): { stdin: number; stdout: number; stderr: number } {
  const open = (p: string, mode: string, flag: string) => {
    try {
      return openSync(p, mode);
    } catch (err) {
      throw new UsageError(`${flag} ${p}: ${(err as Error).message}`);
    }
  };
  return {
    stdin: flags.stdin ? open(flags.stdin, 'r', '--stdin') : 0,
    stdout: flags.stdout ? open(flags.stdout, append ? 'a' : 'w', '--stdout') : 1,
    stderr: flags.stderr ? open(flags.stderr, append ? 'a' : 'w', '--stderr') : 2,
  };
}

/** `--service-address` values, parsed (a malformed one is a usage error naming the flag). */
export function parseServiceAddresses(values: string[]): ServiceAddress[] {
  return values.map((a) => {
    try {
      return parseServiceAddress(a);
    } catch (err) {
      throw new UsageError(`--service-address: ${(err as Error).message}`);
    }
  });
}
