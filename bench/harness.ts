// Shared shape of a benchmark module: bench/<name>.bench.ts exports `title` and `run()`.
export interface BenchRow {
  name: string;          // what was measured, e.g. "fault-roundtrip"
  metric: string;        // which figure, e.g. "p50"
  value: number;
  unit: string;          // "us", "ms", "MB/s", "x"
  reference?: { name: string; value: number; unit?: string };
  target?: string;       // human-readable target, e.g. "<= 1.3x ref"
  met?: boolean;
  extra?: Record<string, unknown>;
}

export interface BenchModule {
  title: string;
  run(): Promise<BenchRow[]>;
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export function median(values: number[]): number {
  const s = [...values].sort((a, b) => a - b);
  return percentile(s, 50);
}
