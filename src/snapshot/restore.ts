// Restores a snapshot (chain) into a new guest, eagerly or lazily.
//  - eager: every page is read into a fresh memory and its chunk checksum checked before the guest
//    starts; any damage is an error before a guest instruction runs.
//  - lazy: the memory starts as holes registered with userfaultfd; pages the chain holds are pending,
//    every other page known-zero (served locally, never read). The unwound stack is placed first (the
//    runtime reads it before anything else), then the guest starts at once, faults are served from
//    the files by a native thread of the data plane (or the fault worker's ChainPageSource where
//    that is off), and a background loader on this thread reads
//    every chunk, checks its checksum and places the pages still pending. When all are placed the
//    fault server stops. A damaged chunk found by the loader stops the guest.
import { closeSync, openSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { fileURLToPath } from 'node:url';
import { Guest, type PreparedGuest } from '../guest/guest.js';
import { takeSpareWorker } from '../guest/spare-worker.js';
import type { ModuleCache } from '../guest/module-cache.js';
import { FaultServer } from '../memory/fault-server.js';
import { GuestMemory, WASM_PAGE_SIZE } from '../memory/guest-memory.js';
import { PageState, PageStateTable } from '../memory/page-state.js';
import { CHUNK_CHECK_BYTES, chunkCheckOf, dataplaneAddon, dataplaneLoadFailure, type LoadOptions } from '../sys/dataplane.js';
import type { Preopen, StdioBinding } from '../wasi/wasi.js';
import { CHUNK_PAGES, PAGE_SIZE, SnapshotError, type MemoryChunk } from './format.js';
import { checksumMismatch, truncatedAt } from './layer-reader.js';
import { chainReader, loadSnapshot, type SnapshotChain } from './chain.js';
import { SnapshotPageProvider } from './page-provider.js';

export interface RestoreSnapshotOptions {
  /** Start the guest at once and load pages on demand (default: eager). */
  lazy?: boolean;
  /** This host's preopens: every guest path the snapshot's guest had must be mapped. */
  preopens?: Preopen[];
  stdio?: Partial<StdioBinding>;
  cache?: ModuleCache;
  /** Keep the guest paused after it is restored (resume() to run it). */
  startPaused?: boolean;
  /** Lazy: pages requested per fault (the faulting page and following pending ones; default 16). */
  faultAround?: number;
}

export interface SnapshotLoadReport {
  mode: 'eager' | 'lazy';
  /** Pages the chain holds (the rest are zero). */
  pages: number;
  /** Milliseconds from start until every page was in memory (eager: before the guest ran). */
  loadMs: number;
  /** Lazy: faults served from the file, pages placed by the loader. */
  faults?: number;
  pagesPlacedByLoader?: number;
}

export interface RestoredSnapshot {
  guest: Guest;
  memory: GuestMemory;
  chain: SnapshotChain;
  /** Milliseconds from restoreSnapshot() (or PreparedRestore.start()) until the guest was running. */
  restoreMs: number;
  /** Resolves when every page is in memory; rejects (after stopping the guest) if a chunk is damaged. */
  loaded: Promise<SnapshotLoadReport>;
}

/** A restore with everything started that does not depend on the pages: call start() to run the guest. */
export interface PreparedRestore {
  chain: SnapshotChain;
  memory: GuestMemory;
  /** Eager: reads every page, then runs the guest. Lazy: arms the fault server and runs the guest at once. */
  start(): Promise<RestoredSnapshot>;
  /** Gives up a restore that was never started. */
  dispose(): Promise<void>;
}

export async function restoreSnapshot(source: string | SnapshotChain, opts: RestoreSnapshotOptions = {}): Promise<RestoredSnapshot> {
  const t0 = performance.now();
  // Nothing waits between the two steps here, so an eager load need not wait for the guest's thread.
  const prepared = await prepareRestore(source, opts, { startAtOnce: true });
  const r = await prepared.start();
  return { ...r, restoreMs: round(performance.now() - t0) };
}

/**
 * Loads and checks the chain, creates the memory, starts the guest's worker (module compiled,
 * waiting for its state) and, for lazy restores, the fault server — all without reading a page.
 * A host that keeps one prepared restore ready runs it with start() in a few milliseconds.
 * `how.startAtOnce`: start() follows at once (restoreSnapshot): the eager load begins now, beside
 * the thread's boot, and the worker skips its rehearsal of the WASI restore, which start() would
 * only wait for.
 */
export async function prepareRestore(source: string | SnapshotChain, opts: RestoreSnapshotOptions = {}, how: { startAtOnce?: boolean } = {}): Promise<PreparedRestore> {
  const chain = typeof source === 'string' ? loadSnapshot(source) : source;
  checkPreopens(chain, opts.preopens ?? []);
  const mem = GuestMemory.create(chain.memory.bytes / WASM_PAGE_SIZE, chain.memory.maxBytes / WASM_PAGE_SIZE);
  // restoreSnapshot's eager load runs on the load threads while the guest's thread boots (which
  // writes no guest memory before its launch); start() then only waits for what is left of it.
  // Only on the load threads: this thread's load would hold the event loop, and the boot with it.
  const loading = !opts.lazy && how.startAtOnce && dataplaneLoadFailure() === null ? timedLoad(chain, mem) : null;
  loading?.catch(() => undefined); // observed in start() or dispose()
  const preparing = Guest.prepare({
    module: chain.moduleSource,
    // restoreSnapshot starts it the moment it is ready: a rehearsal would only be waited for.
    rehearse: how.startAtOnce !== true,
    memory: mem.memory,
    maxMemoryBytes: chain.memory.maxBytes,
    ...(opts.cache ? { cache: opts.cache } : {}),
  });
  let lazy: LazyMemory | null = null;
  let prepared: PreparedGuest;
  try {
    if (opts.lazy) lazy = await startLazyServer(chain, mem, opts.faultAround ?? 16);
    prepared = await preparing;
  } catch (err) {
    await preparing.then((p) => p.dispose(), () => undefined);
    await lazy?.stop().catch(() => undefined);
    await loading?.catch(() => undefined); // the load threads end before the memory is let go
    throw err;
  }
  const binding = { preopens: opts.preopens ?? [], stdio: opts.stdio ?? {}, startPaused: opts.startPaused ?? false };
  let used = false;
  return {
    chain,
    memory: mem,
    async dispose() {
      if (used) return;
      used = true;
      await prepared.dispose();
      await lazy?.stop();
      await loading?.catch(() => undefined);
    },
    async start(): Promise<RestoredSnapshot> {
      if (used) throw new Error('prepareRestore: start() was already called (or the restore was disposed)');
      used = true;
      const t0 = performance.now();
      if (!lazy) {
        let loadMs: number;
        try {
          loadMs = await (loading ?? timedLoad(chain, mem));
        } catch (err) {
          await prepared.dispose();
          throw err;
        }
        const guest = await launch(prepared, chain, binding);
        return { guest, memory: mem, chain, restoreMs: round(performance.now() - t0), loaded: Promise.resolve({ mode: 'eager', pages: chain.presentPages, loadMs }) };
      }
      const lz = lazy;
      let guest: Guest;
      try {
        lz.arm();
        guest = await launch(prepared, chain, binding);
      } catch (err) {
        await lz.stop().catch(() => undefined);
        throw err;
      }
      const restoreMs = round(performance.now() - t0);
      const loaded = lz.load().then(
        (placed): SnapshotLoadReport => ({ mode: 'lazy', pages: chain.presentPages, loadMs: round(performance.now() - t0), faults: lz.faults, pagesPlacedByLoader: placed }),
        async (err: Error) => {
          await guest.stop(); // it may be blocked on a page that will never come: end it before the uffd closes
          await lz.stop().catch(() => undefined);
          throw err;
        },
      );
      loaded.catch(() => undefined);
      return { guest, memory: mem, chain, restoreMs, loaded };
    },
  };
}

/** Hands the prepared worker the state; with startPaused, returns once the guest sits paused. */
async function launch(prepared: PreparedGuest, chain: SnapshotChain, binding: { preopens: Preopen[]; stdio: Partial<StdioBinding>; startPaused: boolean }): Promise<Guest> {
  let guest: Guest;
  try {
    guest = await prepared.launchRestore(chain.state, binding);
  } catch (err) {
    await prepared.dispose();
    throw err;
  }
  if (binding.startPaused) await guest.pause();
  return guest;
}

/** Refuses a restore that leaves a preopen of the guest unmapped (its fds could not be reopened). */
function checkPreopens(chain: SnapshotChain, preopens: Preopen[]): void {
  const mapped = new Set(preopens.map((p) => p.guestPath));
  const missing = chain.state.wasi.preopens.filter((g) => !mapped.has(g));
  if (missing.length > 0) {
    throw new SnapshotError('preopen', `the guest had preopened ${missing.map((m) => JSON.stringify(m)).join(', ')}: map it with --dir HOST:${missing[0]}`);
  }
}

/**
 * Reads every chunk into `into` (a memory of the chain's size, or a view of one), each page from the
 * newest layer holding it, and checks every chunk it reads. On native threads of the data plane
 * when its addon loads (dp_load.c, on every core); in this thread otherwise, or with
 * `{ native: false }`. When it rejects (a damaged or short chunk), what `into` holds is undefined:
 * chunks are read in place and checked there, so the memory must not be run.
 */
export async function loadEagerly(chain: SnapshotChain, into: GuestMemory | Uint8Array, opts: { native?: boolean } = {}): Promise<void> {
  // A chunk whose pages all come from newer layers is not read.
  const chunks = chain.layers.flatMap((l, li) => l.manifest.memoryFile.chunks.filter((c) => chain.location.subarray(c.page, c.page + c.count).includes(li)).map((c) => ({ li, c })));
  const native = (opts.native ?? true) && dataplaneLoadFailure() === null && chunks.length > 0;
  const threadsPopulate = native && chunkCheckOf() !== null; // an addon built before both leaves it to this thread
  let view = into as Uint8Array;
  if (into instanceof GuestMemory) {
    // Fresh memory: its pages allocated in bulk, not one fault each; natively by the load threads,
    // each its share, so the allocation runs on every core.
    into.prefault(heldRuns(chain.location), { populate: !threadsPopulate });
    view = into.view();
  }
  if (native) {
    await loadNatively(chain, chunks, view, threadsPopulate && into instanceof GuestMemory);
    return;
  }
  const reader = chainReader(chain);
  try {
    for (const { li, c } of chunks) reader.readChunk(li, c, view, c.page * PAGE_SIZE);
  } finally {
    reader.close();
  }
}

/** loadEagerly on the data plane's load threads (one a core); their errors become the SnapshotErrors the reader gives. */
async function loadNatively(chain: SnapshotChain, chunks: Array<{ li: number; c: MemoryChunk }>, view: Uint8Array, populate: boolean): Promise<void> {
  const opts: LoadOptions = {
    memory: view, location: chain.location, layerFds: new Int32Array(0), threads: Math.min(8, Math.max(1, availableParallelism())), populate,
    chunkLayer: Uint32Array.from(chunks, ({ li }) => li), chunkPage: Uint32Array.from(chunks, ({ c }) => c.page),
    chunkCount: Uint32Array.from(chunks, ({ c }) => c.count), chunkSha256: new Uint8Array(chunks.length * 32),
  };
  chunks.forEach(({ c }, i) => opts.chunkSha256.set(Buffer.from(c.sha256, 'hex'), i * 32));
  // The fast check stands in for the sha256 only in the newest layer, where it is as strong: whoever
  // can rewrite that memory.bin can rewrite its manifest too. An older layer's manifest is pinned by
  // its child's sha256 of it, and so are its chunks' sha256s, which a crafted file can match only by
  // breaking sha256: those chunks keep it (an entry of zeros: no fast check).
  const newest = chain.layers.length - 1;
  if (chunks.some(({ li, c }) => li === newest && c.crc32c !== undefined)) {
    const crc = new Uint8Array(chunks.length * CHUNK_CHECK_BYTES);
    chunks.forEach(({ li, c }, i) => {
      if (li === newest && c.crc32c !== undefined) crc.set(Buffer.from(c.crc32c, 'hex'), i * CHUNK_CHECK_BYTES);
    });
    opts.chunkCrc = crc;
  }
  const paths = chain.layers.map((l) => l.memoryPath);
  const fds: number[] = [];
  const dp = dataplaneAddon();
  let done!: Promise<string | null>;
  try {
    for (const p of paths) fds.push(openSync(p, 'r'));
    opts.layerFds = Int32Array.from(fds);
    done = new Promise((resolve) => {
      const handle = dp.startLoad(opts, (error) => {
        dp.stop(handle);
        resolve(error);
      });
    });
  } finally {
    for (const fd of fds) closeSync(fd);
  }
  const error = await done;
  if (error === null) return;
  // The threads' errors in the words of the one reader of these files (layer-reader.ts).
  const checksum = /^checksum layer (\d+) page (\d+) count (\d+)$/.exec(error);
  if (checksum) throw checksumMismatch(paths[Number(checksum[1])]!, Number(checksum[2]), Number(checksum[3]));
  const truncated = /^truncated layer (\d+) byte (\d+)$/.exec(error);
  if (truncated) throw truncatedAt(paths[Number(truncated[1])]!, Number(truncated[2]));
  throw new Error(`eager load: ${error}`);
}

/** loadEagerly into `mem`; resolves with the milliseconds it took. */
async function timedLoad(chain: SnapshotChain, mem: GuestMemory): Promise<number> {
  const t0 = performance.now();
  await loadEagerly(chain, mem);
  return round(performance.now() - t0);
}

/** Runs [start, end) of the pages some layer holds (location >= 0): what an eager restore writes. */
function heldRuns(location: Int16Array): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (let p = 0; p < location.length; ) {
    if (location[p]! < 0) {
      p++;
      continue;
    }
    let q = p + 1;
    while (q < location.length && location[q]! >= 0) q++;
    runs.push([p, q]);
    p = q;
  }
  return runs;
}

/** A memory being filled lazily from a snapshot chain: holes served by a fault server, a loader to fill the rest. */
export interface LazyMemory {
  memory: GuestMemory;
  server: FaultServer;
  /** Faults served so far (the last count once the server stopped). */
  readonly faults: number;
  /** Marks every page the chain holds pending and places the unwound stack's pages (before the guest runs). */
  arm(): void;
  /**
   * Reads and checks every chunk, places the pages still pending, then stops the fault server.
   * Resolves with the pages it placed; on a damaged chunk it rejects and leaves the server running
   * (stop the guest first, then call stop()).
   */
  load(): Promise<number>;
  stop(): Promise<void>;
}

/**
 * Registers `mem` (fresh, of the chain's geometry) with a fault server whose page source is the chain
 * and arms it: pages the chain holds become pending, the rest known-zero; the unwound stack's pages
 * are placed first. Any thread may then touch the memory: the fault worker reads the files itself.
 */
export async function openLazyMemory(chain: SnapshotChain, mem: GuestMemory, faultAround = 16): Promise<LazyMemory> {
  const lazy = await startLazyServer(chain, mem, faultAround);
  lazy.arm();
  return lazy;
}

/** Starts the fault server with every page known-zero (nothing may touch the memory until arm()). */
async function startLazyServer(chain: SnapshotChain, mem: GuestMemory, faultAround: number): Promise<LazyMemory> {
  const states = new PageStateTable(mem.maxPageCount);
  // The same provider as serve-snapshot's: the fault thread (native, or the fault worker's
  // chain-page-source.ts when that is off) opens its layer files, this thread reads the runtime's
  // pages through it.
  const pages = new SnapshotPageProvider(chain);
  let server: FaultServer;
  try {
    server = await FaultServer.start(mem, states, {
      kind: 'module',
      module: fileURLToPath(new URL('./chain-page-source.js', import.meta.url)),
      options: pages.files,
    }, { faultAround, files: pages.files, spare: takeSpareWorker('fault') });
  } catch (err) {
    pages.close();
    throw err;
  }
  let faults = 0;
  let stopped = false;
  let armed = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    pages.close();
    faults = server.stats().faults;
    await server.stop();
  };
  return {
    memory: mem,
    server,
    get faults() {
      return stopped ? faults : server.stats().faults;
    },
    arm() {
      if (armed) return;
      armed = true;
      // By chunk (every page the chain holds is in one): a page held by two layers is marked twice,
      // harmlessly. Nothing faults before the guest runs, so no other thread moves pages yet.
      for (const layer of chain.layers) for (const c of layer.manifest.memoryFile.chunks) states.markPendingUnshared(c.page, c.page + c.count);
      try {
        placeRuntimePages(pages, server);
      } finally {
        pages.close();
      }
    },
    async load() {
      const placed = await loadInBackground(chain, server, states);
      await stop();
      return placed;
    },
    stop,
  };
}

/** Places the pages the runtime reads before anything else (safepoint flags, unwound stack). */
function placeRuntimePages(pages: SnapshotPageProvider, server: FaultServer): void {
  const { chain } = pages;
  const buf = new Uint8Array(PAGE_SIZE);
  for (const [a, b] of pages.runtimeRuns(chain.state.exec)) {
    for (let p = a; p < b; p++) {
      if (chain.location[p]! < 0) continue;
      pages.readPages(p, 1, buf);
      server.place(p, buf, 0, 1);
    }
  }
}

/** Reads and checks every chunk in file order, placing the pages that are still pending. */
async function loadInBackground(chain: SnapshotChain, server: FaultServer, states: PageStateTable): Promise<number> {
  let placed = 0;
  const buf = Buffer.allocUnsafe(CHUNK_PAGES * PAGE_SIZE);
  const reader = chainReader(chain);
  try {
    for (let li = 0; li < chain.layers.length; li++) {
      for (const c of chain.layers[li]!.manifest.memoryFile.chunks) {
        await reader.readChunkAsync(li, c, buf);
        for (let p = c.page; p < c.page + c.count; ) {
          if (chain.location[p] !== li || states.get(p) !== PageState.PENDING) { p++; continue; }
          let q = p + 1;
          while (q < c.page + c.count && chain.location[q] === li && states.get(q) === PageState.PENDING) q++;
          placed += server.place(p, buf, (p - c.page) * PAGE_SIZE, q - p);
          p = q;
        }
      }
    }
  } finally {
    reader.close();
  }
  return placed;
}

function round(ms: number): number {
  return Math.round(ms * 100) / 100;
}
