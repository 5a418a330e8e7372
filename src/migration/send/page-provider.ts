// Where a migration source's pages come from: a live guest's memory (live-memory.ts) or a snapshot
// chain (snapshot/page-provider.ts). The sender — pass 0, the runtime's pages at the switchover,
// the postcopy push and the urgent answers — reads through this interface and nothing else, so the
// live source and `serve-snapshot` are one sender with two providers. Another thread (the urgent
// channel's) opens its own reader of the same pages from `readerSpec`, which crosses threads.
import { HOST_PAGE_SIZE as PAGE } from '../../memory/guest-memory.js';
import type { PageBitmap } from '../../memory/page-bitmap.js';
import type { ExecState } from '../../state/exec-state.js';

/** Reads page bytes. */
export interface PageReader {
  /** Copies pages [first, first + count) into `into` at byte `at`. */
  readPages(first: number, count: number, into: Uint8Array, at?: number): void;
  close(): void;
}

/**
 * How another thread opens a reader of a provider's pages: the guest's shared memory itself, or a
 * module whose `exportName(options)` returns a PageReader (a snapshot's layer files).
 */
export type PageReaderSpec =
  | { kind: 'memory'; memory: WebAssembly.Memory }
  | { kind: 'module'; module: string; exportName: string; options: unknown };

export interface PageProvider extends PageReader {
  /** Host pages of memory now (a live guest's memory may grow until it is paused). */
  readonly pageCount: number;
  /** Host pages the memory can grow to. */
  readonly maxPages: number;
  /** Pages that hold something (every other page was never touched) and, among them, those known to be zero. */
  residency(): { present: PageBitmap; zero: PageBitmap };
  /** The pages the runtime reads first to resume from `exec` (safepoint flags, the unwound stack). */
  runtimeRuns(exec: ExecState): Array<[number, number]>;
  readonly readerSpec: PageReaderSpec;
}

/** Opens, on the calling thread, a reader of the pages `spec` describes. */
export async function openPageReader(spec: PageReaderSpec): Promise<PageReader> {
  if (spec.kind === 'memory') return new MemoryPageReader(spec.memory);
  const mod = (await import(spec.module)) as Record<string, unknown>;
  const factory = mod[spec.exportName];
  if (typeof factory !== 'function') throw new TypeError(`page reader module ${spec.module} has no function ${spec.exportName}`);
  return (factory as (o: unknown) => PageReader)(spec.options);
}

/** Pages straight from a (shared) WebAssembly memory: page p at byte p * HOST_PAGE_SIZE. */
export class MemoryPageReader implements PageReader {
  constructor(private readonly memory: WebAssembly.Memory) {}

  readPages(first: number, count: number, into: Uint8Array, at = 0): void {
    // A new view each time: the buffer of a memory that grew is a new one.
    into.set(new Uint8Array(this.memory.buffer, first * PAGE, count * PAGE), at);
  }

  close(): void {}
}
