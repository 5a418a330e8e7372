// The start-up fast path of the control commands. A script that pauses, snapshots and resumes
// many guests pays a command's start-up every time, so `ferry status|pause|resume|stop`,
// `ferry snapshot` and `ferry migrate --cancel` must start about as fast as bare Node (issue 17:
// ≤ 1.5× `node -e ''`, bench/cli.bench.ts). Node itself, its ES module loader and node:http are
// most of that budget, and commander alone is a tenth of it: so a command line of exactly these
// shapes is recognised here, without commander, and runs the same action as the full program
// (control-actions.ts). Anything else — --help, an unknown or repeated flag, a missing value, `--`
// — returns null and goes to the commander program (main.ts), which answers it as it always has.
import { packageVersion } from '../version.js';
import type { ControlVerb, SnapshotFlags } from './control-actions.js';

type FastCommand = () => Promise<number>;

const VERBS = new Set(['status', 'pause', 'resume', 'stop']);

/** The recognised command, ready to run, or null for the full program. */
export function fastPath(argv: readonly string[]): FastCommand | null {
  const [cmd, ...rest] = argv;
  if (cmd === undefined) return null;
  if (rest.length === 0 && (cmd === '--version' || cmd === '-V')) {
    return async () => (process.stdout.write(`${packageVersion()}\n`), 0);
  }
  const flags = parseFlags(rest, cmd === 'snapshot' ? SNAPSHOT_FLAGS : cmd === 'migrate' ? MIGRATE_FLAGS : CONTROL_FLAGS);
  if (!flags) return null;
  const apiSock = flags['api-sock'];
  if (typeof apiSock !== 'string') return null;
  const actions = () => import('./control-actions.js');
  if (VERBS.has(cmd)) {
    return async () => (await actions()).controlAction(cmd as ControlVerb, { apiSock, json: flags['json'] === true });
  }
  if (cmd === 'snapshot') {
    const to = flags['to'];
    if (typeof to !== 'string') return null;
    const opts: SnapshotFlags = { apiSock, to, resume: flags['resume'] === true, json: flags['json'] === true };
    if (typeof flags['diff-from'] === 'string') opts.diffFrom = flags['diff-from'];
    return async () => (await actions()).snapshotAction(opts);
  }
  if (cmd === 'migrate' && flags['cancel'] === true) {
    return async () => (await actions()).cancelMigrationAction(apiSock);
  }
  return null;
}

/** Flag name → takes a value. */
type FlagSpec = Record<string, boolean>;
const CONTROL_FLAGS: FlagSpec = { 'api-sock': true, json: false };
const SNAPSHOT_FLAGS: FlagSpec = { 'api-sock': true, to: true, 'diff-from': true, resume: false, json: false };
const MIGRATE_FLAGS: FlagSpec = { 'api-sock': true, cancel: false };

/** `--name VALUE`, `--name=VALUE` and `--switch`, each at most once; null for anything else. */
function parseFlags(args: readonly string[], spec: FlagSpec): Record<string, string | true> | null {
  const out: Record<string, string | true> = {};
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (!a.startsWith('--') || a === '--') return null;
    const eq = a.indexOf('=');
    const name = eq >= 0 ? a.slice(2, eq) : a.slice(2);
    if (!Object.hasOwn(spec, name) || Object.hasOwn(out, name)) return null;
    if (!spec[name]) {
      if (eq >= 0) return null;
      out[name] = true;
      continue;
    }
    const value = eq >= 0 ? a.slice(eq + 1) : args[++i];
    // A value that looks like a flag is left to commander, which decides what it means.
    if (value === undefined || value === '' || value.startsWith('-')) return null;
    out[name] = value;
  }
  return out;
}

