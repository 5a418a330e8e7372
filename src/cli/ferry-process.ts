// A `ferry` child process whose output is collected as it comes: what `ferry demo` and the
// end-to-end tests drive (a source, a destination, a migrate command).
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const FERRY_BIN = fileURLToPath(new URL('../../../bin/ferry.js', import.meta.url));

/** A ferry child process whose output is collected as it comes. */
export class FerryProcess {
  out = '';
  err = '';
  readonly exited: Promise<number>;
  readonly child: ChildProcess;

  constructor(
    readonly name: string,
    args: string[],
  ) {
    this.child = spawn(process.execPath, [FERRY_BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
    this.child.stdout!.setEncoding('utf8').on('data', (d: string) => (this.out += d));
    this.child.stderr!.setEncoding('utf8').on('data', (d: string) => (this.err += d));
    this.exited = new Promise((resolve) => this.child.on('exit', (code, sig) => resolve(code ?? (sig ? 128 + 9 : 1))));
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  async waitFor(re: RegExp, what: string, timeoutMs: number, stream: 'out' | 'err' = 'out'): Promise<RegExpExecArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = re.exec(stream === 'out' ? this.out : this.err);
      if (m) return m;
      if (!this.running) throw new Error(`${this.name} exited (${this.child.exitCode}) while waiting for ${what}:\n${this.err.slice(-3000)}`);
      if (Date.now() > deadline) throw new Error(`${this.name}: timed out waiting for ${what}\n--- stderr ---\n${this.err.slice(-3000)}\n--- stdout tail ---\n${this.out.slice(-500)}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  /** Exit code, or a clear failure if the process does not end within timeoutMs. */
  async exitWithin(timeoutMs: number): Promise<number> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${this.name} still running after ${timeoutMs} ms:\n${this.err.slice(-2000)}`)), timeoutMs);
    });
    try {
      return await Promise.race([this.exited, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  kill(): void {
    if (this.running) this.child.kill('SIGKILL');
  }

  /** SEQ numbers printed so far. */
  seqs(): number[] {
    return [...this.out.matchAll(/^SEQ (\d+) /gm)].map((m) => Number(m[1]));
  }
}

