// Entry point of the `ferry` CLI. Each subcommand lives in its own module under src/cli/.
export async function main(argv: string[]): Promise<number> {
  process.stderr.write(`ferry: not built yet (${argv.join(' ')})\n`);
  return 2;
}
