// What every subcommand is handed by the CLI's entry point (main.ts), in a module of its own so
// that the commands main.ts registers do not import main.ts back.
export interface CliContext {
  /** Arguments after `--`, for the guest. */
  guestArgs: string[];
  setExit(code: number): void;
}
