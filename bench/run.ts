// The benchmark harness: runs every bench/*.bench.js module, prints one table, and writes
// every figure beside its reference to bench-results.json (or the path given by --out).
import { readdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import type { BenchModule, BenchRow } from './harness.js';

const here = dirname(fileURLToPath(import.meta.url));

async function run(): Promise<void> {
  const args = process.argv.slice(2);
  const outIdx = args.indexOf('--out');
  const out = resolve(outIdx >= 0 && args[outIdx + 1] ? args[outIdx + 1]! : 'bench-results.json');
  const only = args.filter((a, i) => !a.startsWith('--') && args[i - 1] !== '--out');
  const files = readdirSync(here).filter((f) => f.endsWith('.bench.js')).sort();
  const results: Record<string, BenchRow[]> = {};
  for (const file of files) {
    const name = file.replace(/\.bench\.js$/, '');
    if (only.length > 0 && !only.includes(name)) continue;
    const mod = (await import(pathToFileURL(join(here, file)).href)) as BenchModule;
    process.stderr.write(`== ${name}: ${mod.title}\n`);
    const rows = await mod.run();
    results[name] = rows;
    printTable(name, rows);
  }
  writeFileSync(out, JSON.stringify({ date: new Date().toISOString(), results }, null, 2) + '\n');
  process.stderr.write(`wrote ${out}\n`);
}

function printTable(name: string, rows: BenchRow[]): void {
  const header = ['benchmark', 'figure', 'value', 'reference', 'ref value', 'ratio', 'target', 'met'];
  const body = rows.map((r) => [
    `${name}/${r.name}`,
    r.metric,
    fmt(r.value, r.unit),
    r.reference?.name ?? '',
    r.reference ? fmt(r.reference.value, r.reference.unit ?? r.unit) : '',
    r.reference && r.reference.value !== 0 ? (r.value / r.reference.value).toFixed(2) + '×' : '',
    r.target ?? '',
    r.met === undefined ? '' : r.met ? 'yes' : 'NO',
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...body.map((b) => b[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(widths[i]!)).join('  ');
  console.log(line(header));
  console.log(widths.map((w) => '-'.repeat(w)).join('  '));
  for (const b of body) console.log(line(b));
  console.log('');
}

function fmt(v: number, unit: string): string {
  const s = Math.abs(v) >= 100 ? v.toFixed(0) : Math.abs(v) >= 1 ? v.toFixed(2) : v.toPrecision(3);
  return `${s} ${unit}`;
}

run().catch((err) => {
  console.error(err);
  process.exitCode = 1;
});
