// `ferry status|pause|resume|stop --api-sock PATH`: the control API from the command line.
import { Command } from 'commander';
import type { CliContext } from '../context.js';
import { CONTROL_VERBS, controlAction, type ControlVerb } from '../control-actions.js';

export function registerControl(program: Command, ctx: CliContext): void {
  for (const [name, description] of Object.entries(CONTROL_VERBS) as [ControlVerb, string][]) {
    program
      .command(name)
      .description(description)
      .requiredOption('--api-sock <PATH>', "the guest's control socket (ferry run --api-sock)")
      .option('--json', 'print the result as JSON')
      .addHelpText('after', `
Example:
  ferry ${name} --api-sock /tmp/app.sock${name === 'status' ? ' --json' : ''}

Exit code 1 when no guest answers on the socket or the guest refuses (e.g. resume when not paused).`)
      .action(async (opts: { apiSock: string; json?: boolean }) => ctx.setExit(await controlAction(name, opts)));
  }
}
