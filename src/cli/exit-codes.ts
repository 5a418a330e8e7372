// Exit codes of the `ferry` command. A guest's own exit code passes through unchanged when the
// guest exits; the codes below are Ferry's own and are listed in `ferry --help` and docs/cli.md.
export const EXIT = {
  ok: 0,
  /** Generic failure of Ferry itself (I/O error, internal error). */
  failure: 1,
  /** Bad command line: unknown flag, bad value, missing argument. */
  usage: 2,
  /** Precopy did not converge within its budget; the source guest keeps running. */
  notConverged: 3,
  /** The module was refused before it started (invalid, unsupported import, memory too large). */
  moduleRefused: 4,
  /** The guest trapped; the trap and the guest function are printed. */
  trap: 5,
  /** A migration or snapshot failed (the source guest keeps running when it failed before switchover). */
  migrationFailed: 6,
  /** The guest was stopped by a signal or by `ferry stop`. */
  stopped: 130,
} as const;

export const EXIT_CODES_HELP = `Exit codes:
  N    the guest's own exit code, when the guest exits
  1    Ferry failed (I/O or internal error)
  2    bad command line
  3    precopy did not converge (the source guest keeps running)
  4    module refused before it started
  5    the guest trapped (the trap and guest function are printed)
  6    migration or snapshot failed
  130  the guest was stopped (signal, ferry stop)`;

export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'UsageError';
  }
}
