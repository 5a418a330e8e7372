// `ferry status|pause|resume|stop --api-sock PATH`: the control API from the command line.
import { Command } from 'commander';
import type { CliContext } from '../main.js';
import { EXIT } from '../exit-codes.js';
import { ApiClient, ApiError } from '../../api/client.js';

export function registerControl(program: Command, ctx: CliContext): void {
  const actions: [string, string, (c: ApiClient) => Promise<unknown>][] = [
    ['status', "Show a guest's state, module, memory size and uptime.", (c) => c.info()],
    ['pause', 'Pause a guest at its next safepoint.', (c) => c.pause()],
    ['resume', 'Resume a paused guest.', (c) => c.resume()],
    ['stop', 'Stop a guest without running any more guest code.', (c) => c.stop()],
  ];
  for (const [name, description, call] of actions) {
    program
      .command(name)
      .description(description)
      .requiredOption('--api-sock <PATH>', "the guest's control socket (ferry run --api-sock)")
      .option('--json', 'print the result as JSON')
      .action(async (opts: { apiSock: string; json?: boolean }) => {
        try {
          const result = await call(new ApiClient(opts.apiSock));
          if (opts.json) process.stdout.write(JSON.stringify(result ?? { ok: true }) + '\n');
          else if (result && typeof result === 'object') printInfo(result as Record<string, unknown>);
          else process.stdout.write(`${name}: ok\n`);
        } catch (err) {
          if (!(err instanceof ApiError) && !(err instanceof Error)) throw err;
          process.stderr.write(`ferry ${name}: ${err.message}\n`);
          ctx.setExit(EXIT.failure);
        }
      });
  }
}

function printInfo(info: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(info)) {
    process.stdout.write(`${k.padEnd(16)}${typeof v === 'object' ? JSON.stringify(v) : String(v)}\n`);
  }
}
