// `ferry prepare MODULE.wasm [--json]`: instrument a module ahead of time into the module cache,
// so that neither `ferry run` nor a destination that receives this module spends that time later.
import { readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { Command } from 'commander';
import type { CliContext } from '../context.js';
import { EXIT, UsageError } from '../exit-codes.js';

export function registerPrepare(program: Command, ctx: CliContext): void {
  program
    .command('prepare')
    .description('Instrument a module ahead of time into the module cache, and print where it went.')
    .argument('<module>', 'the .wasm module (WASI preview1 command)')
    .option('--json', 'print one JSON object: module, hash, entry, sizes, time, fromCache')
    .addHelpText('after', `
Examples:
  ferry prepare app.wasm
  FERRY_CACHE_DIR=/srv/ferry-cache ferry prepare app.wasm --json

Instrumenting (safepoints and stack unwinding) happens once per module content; the result is
cached under $FERRY_CACHE_DIR (default ~/.cache/ferry) in modules/<sha256>/. \`ferry run\` and a
destination (\`ferry run --incoming\`) then start from the cache. Run it on the destination host
as well, with the same module, so that a migration's destination has nothing to instrument.
A progress bar shows on a terminal. Exit 4: the module cannot be run by Ferry (the reason is printed).`)
    .action(async (modulePath: string, opts: { json?: boolean }) => ctx.setExit(await prepare(modulePath, opts)));
}

async function prepare(modulePath: string, opts: { json?: boolean }): Promise<number> {
  let bytes: Uint8Array;
  try {
    bytes = readFileSync(modulePath);
  } catch (err) {
    throw new UsageError(`cannot read module ${modulePath}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  const [{ ModuleCache }, { InstrumentProgressBar }] = await Promise.all([import('../../guest/module-cache.js'), import('../instrument-progress.js')]);
  const cache = new ModuleCache();
  const bar = new InstrumentProgressBar(basename(modulePath), !opts.json && process.stderr.isTTY === true);
  const t0 = performance.now();
  let m;
  try {
    m = await cache.load(bytes, { onProgress: bar.onProgress });
  } finally {
    bar.stop();
  }
  const result = {
    module: modulePath,
    hash: m.meta.sourceHash,
    cacheDir: cache.dir,
    entry: m.entryDir,
    instrumented: join(m.entryDir, 'instrumented.wasm'),
    sourceBytes: m.source.length,
    instrumentedBytes: m.binary.length,
    dataImageBytes: m.dataImage.length,
    fromCache: m.fromCache,
    instrumentMs: Math.round(m.instrumentMs),
    totalMs: Math.round(performance.now() - t0),
  };
  if (opts.json) {
    process.stdout.write(JSON.stringify(result) + '\n');
  } else {
    const kib = (n: number) => `${(n / 1024).toFixed(1)} KiB`;
    const how = m.fromCache ? 'already prepared' : `instrumented in ${(m.instrumentMs / 1000).toFixed(2)} s`;
    process.stdout.write(`${modulePath}: ${how} (${kib(result.sourceBytes)} -> ${kib(result.instrumentedBytes)})\n${result.entry}\n`);
  }
  return EXIT.ok;
}
