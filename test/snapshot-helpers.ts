// Helpers shared by the snapshot tests: spawning the ferry CLI, waiting for lines in a file.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export const FERRY = fileURLToPath(new URL('../../bin/ferry.js', import.meta.url));
export const MEMTOUCH = fileURLToPath(new URL('../../guests/build/memtouch.wasm', import.meta.url));
export const COMPUTE = fileURLToPath(new URL('../../guests/build/compute.wasm', import.meta.url));

export interface Proc {
  child: ChildProcess;
  stderr: () => string;
  stdout: () => string;
  exit: Promise<number | null>;
}

export function ferry(args: string[]): Proc {
  const child = spawn(process.execPath, [FERRY, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (err += d.toString()));
  const exit = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return { child, stderr: () => err, stdout: () => out, exit };
}

/** Runs ferry to completion. */
export async function ferryDone(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const p = ferry(args);
  const code = await p.exit;
  return { code, stdout: p.stdout(), stderr: p.stderr() };
}

/** Polls until `test` holds (no timing assertion: a deadline only to fail instead of hanging). */
export async function until(what: string, test: () => boolean, deadlineMs = 60_000): Promise<void> {
  const end = Date.now() + deadlineMs;
  while (!test()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export function seqNumbers(path: string): number[] {
  if (!existsSync(path)) return [];
  return [...readFileSync(path, 'utf8').matchAll(/^SEQ (\d+) /gm)].map((m) => Number(m[1]));
}

export function fileText(path: string): string {
  return existsSync(path) ? readFileSync(path, 'utf8') : '';
}
