// A content-addressed cache of modules and their instrumented form. Instrumenting a large module
// takes seconds, so it happens once per module content; a destination that receives a module over
// the wire stores it here under the same hash. `ferry prepare` fills it ahead of time.
//
// On a miss the module is instrumented on a thread of its own (instrument-runner.ts), so the
// caller's event loop keeps running (a destination keeps receiving pages, a progress bar moves).
import { mkdirSync, readFileSync, renameSync, writeFileSync, existsSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { escapeEnabled, INSTRUMENTATION_VERSION, loopResumeEnabled, type InstrumentedMeta, type InstrumentedModule } from './instrument-meta.js';
import { instrumentOffThread, type InstrumentProgressListener } from './instrument-runner.js';
import { sha256Hex } from '../state/hash.js';

export function defaultCacheDir(): string {
  return process.env['FERRY_CACHE_DIR'] ?? join(process.env['XDG_CACHE_HOME'] ?? join(homedir(), '.cache'), 'ferry');
}

export interface CachedModule extends InstrumentedModule {
  source: Uint8Array;
  fromCache: boolean;
  /** Time spent instrumenting (0 when taken from the cache). */
  instrumentMs: number;
  /** The cache entry's directory. */
  entryDir: string;
}

export interface LoadOptions {
  /** Hears each step of instrumentation on a miss (not called on a hit). */
  onProgress?: InstrumentProgressListener;
}

export class ModuleCache {
  /** Loads of this instance, by module bytes: the same bytes loaded twice are read once. */
  private readonly loads = new WeakMap<Uint8Array, Promise<CachedModule>>();

  constructor(readonly dir: string = defaultCacheDir()) {}

  /** The directory of a module's entry (whether or not it exists yet). */
  entryDir(hash: string): string {
    if (!/^[0-9a-f]{64}$/.test(hash)) throw new Error(`bad module hash ${JSON.stringify(hash)}`);
    return join(this.dir, 'modules', hash);
  }

  /** The original bytes of a module known by hash, or null. */
  source(hash: string): Uint8Array | null {
    const p = join(this.entryDir(hash), 'source.wasm');
    if (!existsSync(p)) return null;
    const bytes = readFileSync(p);
    return sha256Hex(bytes) === hash ? bytes : null; // a damaged entry is a miss
  }

  has(hash: string): boolean {
    return this.source(hash) !== null;
  }

  /** Stores original module bytes (e.g. received over the wire) under their hash. */
  putSource(bytes: Uint8Array): string {
    const hash = sha256Hex(bytes);
    const dir = this.entryDir(hash);
    mkdirSync(dir, { recursive: true });
    atomicWrite(join(dir, 'source.wasm'), bytes);
    return hash;
  }

  /** Returns the instrumented module for `source`, instrumenting it on a miss. */
  load(source: Uint8Array, opts: LoadOptions = {}): Promise<CachedModule> {
    let p = this.loads.get(source);
    if (!p) {
      p = this.loadOnce(source, opts);
      this.loads.set(source, p);
      p.catch(() => this.loads.delete(source));
    }
    return p;
  }

  private async loadOnce(source: Uint8Array, opts: LoadOptions): Promise<CachedModule> {
    const hash = sha256Hex(source);
    const dir = this.entryDir(hash);
    const metaPath = join(dir, 'meta.json');
    if (existsSync(metaPath)) {
      try {
        const meta = JSON.parse(readFileSync(metaPath, 'utf8')) as InstrumentedMeta;
        if (meta.instrumentationVersion === INSTRUMENTATION_VERSION && meta.sourceHash === hash && meta.loopResume === loopResumeEnabled() && meta.escape === escapeEnabled()) {
          return {
            meta,
            binary: readFileSync(join(dir, 'instrumented.wasm')),
            dataImage: readFileSync(join(dir, 'data.bin')),
            source,
            fromCache: true,
            instrumentMs: 0,
            entryDir: dir,
          };
        }
      } catch {
        // unreadable entry: instrument again and overwrite it
      }
    }
    const t0 = performance.now();
    const result = await instrumentOffThread(source, opts.onProgress);
    const instrumentMs = performance.now() - t0;
    mkdirSync(dir, { recursive: true });
    atomicWrite(join(dir, 'source.wasm'), source);
    atomicWrite(join(dir, 'instrumented.wasm'), result.binary);
    atomicWrite(join(dir, 'data.bin'), result.dataImage);
    atomicWrite(metaPath, JSON.stringify(result.meta, null, 1)); // written last: marks the entry complete
    return { ...result, source, fromCache: false, instrumentMs, entryDir: dir };
  }
}

function atomicWrite(path: string, data: Uint8Array | string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, data);
  renameSync(tmp, path);
}
