// Writes one snapshot directory from a paused guest's memory and state. memory.bin is sparse: page p
// lives at byte p*4096 and only the pages given are written (never-touched and zero-page pages are
// holes: the file is sized with ftruncate and nothing is written there). Writes go out asynchronously
// (libuv threads) while this thread hashes the same bytes, so hashing and I/O overlap. Every file is
// fsynced; manifest.json is written last, through a rename, so a crash leaves no half snapshot that
// looks complete. A host failure while writing (ENOSPC, EIO, EROFS, EACCES, the directory removed)
// becomes a SnapshotError('io') naming the cause, after the files written so far are removed (and
// the directory, if this call made it); whatever cannot be removed has no manifest: unfinished.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmdirSync, unlinkSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { createHash } from 'node:crypto';
import type { GuestMemory } from '../memory/guest-memory.js';
import type { PageBitmap } from '../memory/page-bitmap.js';
import { chunkCheckOf } from '../sys/dataplane.js';
import { encodeGuestState, type GuestState } from '../state/guest-state.js';
import {
  CHUNK_PAGES, MANIFEST_FILE, MEMORY_FILE, MODULE_FILE, PAGE_SIZE, SNAPSHOT_FORMAT, SNAPSHOT_VERSION, STATE_FILE,
  SnapshotError, sha256Hex, type MemoryChunk, type SnapshotManifest,
} from './format.js';

/** Async writes kept in flight while hashing. */
const WRITES_IN_FLIGHT = 2;
/** Pages per write call (8 MiB; a multiple of CHUNK_PAGES so chunks never straddle writes). */
const WRITE_PAGES = CHUNK_PAGES * 8;
/**
 * Pages written between two background datasyncs (64 MiB). A single fsync at the end starts the
 * disk's work only once every byte is in the page cache, so the disk idles while this thread hashes
 * and the page cache fills; a datasync of what is written so far, on a libuv thread and not waited
 * for, lets the disk work beside the hashing, and the last fsync has little left to do.
 */
const DATASYNC_PAGES = WRITE_PAGES * 8;

export interface WriteSnapshotOptions {
  /** Target directory: must not exist or be empty. */
  dir: string;
  state: GuestState;
  /** The paused guest's memory (every page to write must be present: it is read here). */
  memory: GuestMemory;
  moduleSource: Uint8Array;
  /** Pages to write (any bitmap size; pages at or past the memory size are ignored). */
  pages: PageBitmap;
  /** For a diff snapshot: the directory of the snapshot the pages are relative to. */
  parentDir?: string | null;
}

export interface SnapshotWriteReport {
  dir: string;
  kind: 'full' | 'diff';
  parent: string | null;
  memoryBytes: number;
  pagesWritten: number;
  bytesWritten: number;
  /** Time to write and fsync everything, manifest included. */
  writeMs: number;
  manifestSha256: string;
}

/**
 * Where the writer calls the file system, for tests that inject a fault the host cannot be made to
 * produce here (EACCES as root), or act at an exact point (remove the directory mid-write): called
 * before each step with the file it is about to touch; whatever it throws fails that step.
 */
export const snapshotWriteHooks: { beforeStep: ((step: 'mkdir' | 'open' | 'write' | 'file', path: string) => void) | null } = { beforeStep: null };

const step = (s: 'mkdir' | 'open' | 'write' | 'file', path: string) => snapshotWriteHooks.beforeStep?.(s, path);

export async function writeSnapshot(opts: WriteSnapshotOptions): Promise<SnapshotWriteReport> {
  const dir = resolve(opts.dir);
  if (existsSync(dir) && readdirSync(dir).length > 0) throw new SnapshotError('exists', `snapshot directory ${dir} is not empty (choose a new directory)`);
  const created: string[] = [];
  let madeDir = false;
  try {
    madeDir = prepareDir(dir);
    return await writeInto(dir, opts, created);
  } catch (err) {
    if (err instanceof SnapshotError) throw err;
    const removed = removePartial(dir, created, madeDir);
    const e = err as NodeJS.ErrnoException;
    const where = e.path && !e.message.includes(e.path) ? ` (${e.path})` : '';
    throw new SnapshotError(
      'io',
      `cannot write snapshot ${dir}: ${e.message ?? String(err)}${where}; ${removed ? 'the partial snapshot was removed' : 'the partial snapshot has no manifest.json (unfinished; remove it)'}`,
    );
  }
}

/** Removes what a failed write left; true when nothing of it remains. */
function removePartial(dir: string, created: string[], madeDir: boolean): boolean {
  let clean = true;
  for (const f of created) {
    try {
      unlinkSync(f);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') clean = false;
    }
  }
  if (madeDir) {
    try {
      rmdirSync(dir);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') clean = false;
    }
  }
  return clean;
}

async function writeInto(dir: string, opts: WriteSnapshotOptions, created: string[]): Promise<SnapshotWriteReport> {
  const t0 = performance.now();
  const { state, memory } = opts;
  if (state.memory.bytes !== memory.sizeBytes) {
    throw new SnapshotError('corrupt', `state says ${state.memory.bytes} bytes of memory, the memory holds ${memory.sizeBytes}`);
  }
  let parent: SnapshotManifest['parent'] = null;
  if (opts.parentDir) {
    const parentManifest = join(resolve(opts.parentDir), MANIFEST_FILE);
    if (!existsSync(parentManifest)) throw new SnapshotError('parent', `parent snapshot ${parentManifest} does not exist`);
    parent = { path: relative(dir, resolve(opts.parentDir)) || '.', manifestSha256: sha256Hex(readFileSync(parentManifest)) };
  }

  const pageCount = memory.pageCount;
  created.push(join(dir, MEMORY_FILE));
  const chunks = await writeMemoryFile(join(dir, MEMORY_FILE), memory, opts.pages, pageCount);
  const stateBytes = encodeGuestState(state);
  created.push(join(dir, STATE_FILE));
  writeDurable(join(dir, STATE_FILE), stateBytes);
  if (!parent) {
    created.push(join(dir, MODULE_FILE));
    writeDurable(join(dir, MODULE_FILE), opts.moduleSource);
  }
  const pages = chunks.reduce((n, c) => n + c.count, 0);
  const manifest: SnapshotManifest = {
    format: SNAPSHOT_FORMAT,
    version: SNAPSHOT_VERSION,
    kind: parent ? 'diff' : 'full',
    createdAt: new Date().toISOString(),
    module: { hash: state.module.hash, size: opts.moduleSource.length, file: parent ? null : MODULE_FILE },
    memory: { bytes: state.memory.bytes, maxBytes: state.memory.maxBytes },
    parent,
    state: { file: STATE_FILE, size: stateBytes.length, sha256: sha256Hex(stateBytes) },
    memoryFile: { file: MEMORY_FILE, size: memory.sizeBytes, pages, chunks },
  };
  const manifestBytes = Buffer.from(JSON.stringify(manifest, null, 1) + '\n');
  const tmp = join(dir, `.${MANIFEST_FILE}.tmp`);
  created.push(tmp);
  writeDurable(tmp, manifestBytes);
  created.push(join(dir, MANIFEST_FILE));
  step('file', join(dir, MANIFEST_FILE));
  renameSync(tmp, join(dir, MANIFEST_FILE));
  fsyncDir(dir);
  return {
    dir,
    kind: manifest.kind,
    parent: opts.parentDir ? resolve(opts.parentDir) : null,
    memoryBytes: memory.sizeBytes,
    pagesWritten: pages,
    bytesWritten: pages * PAGE_SIZE,
    writeMs: Math.round((performance.now() - t0) * 100) / 100,
    manifestSha256: sha256Hex(manifestBytes),
  };
}

/** Writes the given pages at their own offsets into a file of the memory's size; returns the chunk list. */
async function writeMemoryFile(path: string, memory: GuestMemory, pages: PageBitmap, pageCount: number): Promise<MemoryChunk[]> {
  step('open', path);
  const fh = await open(path, 'w', 0o600);
  const chunks: MemoryChunk[] = [];
  // Each chunk's fast check too, where the data plane addon loads (~24 GB/s, beside sha256's
  // ~1.7): what a native eager load checks instead of the sha256. Without it, loads check the sha256.
  const check = chunkCheckOf();
  // Every write in flight is awaited, and has a handler from the moment it starts: when one fails,
  // the others must not reject unobserved (an unhandled rejection ends the guest's process), and
  // the file is closed only once none is still running.
  const inFlight: Promise<unknown>[] = [];
  const started: Promise<unknown>[] = [];
  let unsynced = 0;
  try {
    await fh.truncate(memory.sizeBytes); // the holes: nothing is written for pages not given
    const view = memory.view();
    for (const [s, e0] of pages.runs()) {
      const e = Math.min(e0, pageCount);
      // One write per WRITE_PAGES (fewer, larger syscalls on the libuv threads); hashing per chunk here.
      for (let w = s; w < e; w += WRITE_PAGES) {
        const we = Math.min(e, w + WRITE_PAGES);
        const write = writeAll(fh, view.subarray(w * PAGE_SIZE, we * PAGE_SIZE), w * PAGE_SIZE, path);
        write.catch(() => undefined);
        inFlight.push(write);
        started.push(write);
        for (let p = w; p < we; p += CHUNK_PAGES) {
          const count = Math.min(CHUNK_PAGES, we - p);
          const bytes = view.subarray(p * PAGE_SIZE, (p + count) * PAGE_SIZE);
          const chunk: MemoryChunk = { page: p, count, sha256: createHash('sha256').update(bytes).digest('hex') };
          if (check !== null) chunk.crc32c = check(bytes).toString('hex');
          chunks.push(chunk);
        }
        unsynced += we - w;
        if (unsynced >= DATASYNC_PAGES) {
          unsynced = 0;
          // Once every write issued so far is done (a failed one fails this too, observed below).
          const sync = Promise.all(started.slice()).then(() => fh.datasync());
          sync.catch(() => undefined);
          started.push(sync);
        }
        if (inFlight.length >= WRITES_IN_FLIGHT) await inFlight.shift();
      }
      if (e0 >= pageCount) break;
    }
    await Promise.all(started);
    await fh.sync();
  } catch (err) {
    await Promise.allSettled(started);
    await fh.close().catch(() => undefined);
    throw err;
  }
  await fh.close();
  return chunks;
}

async function writeAll(fh: import('node:fs/promises').FileHandle, bytes: Uint8Array, position: number, path: string): Promise<void> {
  step('write', path);
  let done = 0;
  while (done < bytes.length) {
    const { bytesWritten } = await fh.write(bytes, done, bytes.length - done, position + done);
    done += bytesWritten;
  }
}

/** Makes the directory if missing; true when this call made it (so a failure removes it). */
function prepareDir(dir: string): boolean {
  if (existsSync(dir)) return false;
  step('mkdir', dir);
  // Not recursive first: Node's recursive mkdir reports EROFS (and other errors but a few) as
  // ENOENT, from a stat of the path it could not make; the parents only when they are missing.
  try {
    mkdirSync(dir, { mode: 0o700 });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  }
  return true;
}

function writeDurable(path: string, bytes: Uint8Array): void {
  step('file', path);
  writeFileSync(path, bytes, { mode: 0o600 });
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

function fsyncDir(dir: string): void {
  const fd = openSync(dir, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}
