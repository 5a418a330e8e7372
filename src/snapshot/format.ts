// The on-disk snapshot format: a directory with manifest.json (written last: its presence marks a
// complete snapshot), state.json (the guest state), memory.bin (sparse: page p at byte p*4096, holes
// where this snapshot holds no page) and, for full snapshots, module.wasm. A diff snapshot holds only
// the pages written since its parent and names the parent by relative path and manifest checksum.
// This module is the manifest's shape and its validation; docs/snapshot-format.md describes it.

export const SNAPSHOT_FORMAT = 'ferry-snapshot';
export const SNAPSHOT_VERSION = 1;
export const MANIFEST_FILE = 'manifest.json';
export const STATE_FILE = 'state.json';
export const MEMORY_FILE = 'memory.bin';
export const MODULE_FILE = 'module.wasm';
import { HOST_PAGE_SIZE, WASM_PAGE_SIZE } from '../memory/guest-memory.js';
export const PAGE_SIZE = HOST_PAGE_SIZE;
/** Pages per checksummed chunk (1 MiB): a chunk is a run of pages present in the file, at most this long. */
export const CHUNK_PAGES = 256;
const MAX_BYTES = 4 * 1024 ** 3;

/** A run of pages present in memory.bin with the sha256 of their bytes (file offset = page * 4096). */
export interface MemoryChunk {
  page: number;
  count: number;
  sha256: string;
  /**
   * The same bytes' fast check, when the writer could compute it (the data plane addon's
   * chunkCheck: CRC-32C of each quarter, 32 hex digits): what the native eager load checks.
   */
  crc32c?: string;
}

export interface SnapshotManifest {
  format: typeof SNAPSHOT_FORMAT;
  version: typeof SNAPSHOT_VERSION;
  kind: 'full' | 'diff';
  createdAt: string;
  module: { hash: string; size: number; file: string | null };
  memory: { bytes: number; maxBytes: number };
  /** The snapshot this one is a diff against (null for full snapshots). */
  parent: { path: string; manifestSha256: string } | null;
  state: { file: string; size: number; sha256: string };
  /** memory.bin: its logical size (= memory.bytes) and its chunks, in page order, disjoint. */
  memoryFile: { file: string; size: number; pages: number; chunks: MemoryChunk[] };
}

/** A snapshot that cannot be used; the message names the file and what is wrong with it. */
export class SnapshotError extends Error {
  constructor(
    /** `io`: the host failed while writing (ENOSPC, EIO, EROFS, EACCES, a directory removed, …). */
    readonly code: 'missing' | 'corrupt' | 'truncated' | 'checksum' | 'parent' | 'module' | 'exists' | 'unsupported' | 'preopen' | 'io',
    message: string,
  ) {
    super(message);
    this.name = 'SnapshotError';
  }
}

export { sha256Hex } from '../state/hash.js';

/** Validates a parsed manifest field by field; `file` is named in every error. */
export function validateManifest(x: unknown, file: string): SnapshotManifest {
  const bad = (what: string): never => {
    throw new SnapshotError('corrupt', `${file}: ${what}`);
  };
  const obj = (v: unknown, name: string): Record<string, unknown> =>
    v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as Record<string, unknown>) : bad(`${name} must be an object`);
  const int = (v: unknown, name: string, min: number, max: number): number =>
    typeof v === 'number' && Number.isInteger(v) && v >= min && v <= max ? v : bad(`${name} must be an integer in [${min}, ${max}]`);
  const str = (v: unknown, name: string, re?: RegExp): string =>
    typeof v === 'string' && (!re || re.test(v)) ? v : bad(`${name} must be a string${re ? ` matching ${re}` : ''}`);
  const hex64 = /^[0-9a-f]{64}$/;
  const plainName = /^[A-Za-z0-9._-]+$/;

  const o = obj(x, 'manifest');
  if (o['format'] !== SNAPSHOT_FORMAT) bad(`format must be "${SNAPSHOT_FORMAT}" (is this a Ferry snapshot?)`);
  if (o['version'] !== SNAPSHOT_VERSION) bad(`version ${JSON.stringify(o['version'])}: this Ferry reads version ${SNAPSHOT_VERSION}`);
  const kind = o['kind'] === 'full' || o['kind'] === 'diff' ? o['kind'] : bad('kind must be "full" or "diff"');
  const m = obj(o['module'], 'module');
  const moduleFile = m['file'] === null ? null : str(m['file'], 'module.file', plainName);
  if (kind === 'full' && moduleFile === null) bad('a full snapshot must carry its module (module.file)');
  const mem = obj(o['memory'], 'memory');
  const maxBytes = int(mem['maxBytes'], 'memory.maxBytes', WASM_PAGE_SIZE, MAX_BYTES);
  const bytes = int(mem['bytes'], 'memory.bytes', 0, maxBytes);
  if (bytes % WASM_PAGE_SIZE !== 0 || maxBytes % WASM_PAGE_SIZE !== 0) bad('memory sizes must be whole 64 KiB pages');
  let parent: SnapshotManifest['parent'] = null;
  if (kind === 'diff') {
    const p = obj(o['parent'], 'parent');
    parent = { path: str(p['path'], 'parent.path', /^[^\0]+$/), manifestSha256: str(p['manifestSha256'], 'parent.manifestSha256', hex64) };
  } else if (o['parent'] !== null) bad('a full snapshot has no parent');
  const s = obj(o['state'], 'state');
  const mf = obj(o['memoryFile'], 'memoryFile');
  const pageCount = bytes / PAGE_SIZE;
  const rawChunks = Array.isArray(mf['chunks']) ? mf['chunks'] : bad('memoryFile.chunks must be an array');
  let next = 0;
  let pages = 0;
  const chunks = rawChunks.map((c, i): MemoryChunk => {
    const co = obj(c, `memoryFile.chunks[${i}]`);
    const page = int(co['page'], `memoryFile.chunks[${i}].page`, next, pageCount - 1);
    const count = int(co['count'], `memoryFile.chunks[${i}].count`, 1, CHUNK_PAGES);
    if (page + count > pageCount) bad(`memoryFile.chunks[${i}] lies outside memory of ${bytes} bytes`);
    next = page + count;
    pages += count;
    const chunk: MemoryChunk = { page, count, sha256: str(co['sha256'], `memoryFile.chunks[${i}].sha256`, hex64) };
    if (co['crc32c'] !== undefined) chunk.crc32c = str(co['crc32c'], `memoryFile.chunks[${i}].crc32c`, /^[0-9a-f]{32}$/);
    return chunk;
  });
  const size = int(mf['size'], 'memoryFile.size', 0, MAX_BYTES);
  if (size !== bytes) bad(`memoryFile.size ${size} differs from memory.bytes ${bytes}`);
  if (mf['pages'] !== pages) bad(`memoryFile.pages ${String(mf['pages'])} differs from the ${pages} pages its chunks hold`);
  return {
    format: SNAPSHOT_FORMAT,
    version: SNAPSHOT_VERSION,
    kind,
    createdAt: str(o['createdAt'], 'createdAt'),
    module: { hash: str(m['hash'], 'module.hash', hex64), size: int(m['size'], 'module.size', 8, 1 << 30), file: moduleFile },
    memory: { bytes, maxBytes },
    parent,
    state: { file: str(s['file'], 'state.file', plainName), size: int(s['size'], 'state.size', 2, 1 << 30), sha256: str(s['sha256'], 'state.sha256', hex64) },
    memoryFile: { file: str(mf['file'], 'memoryFile.file', plainName), size, pages, chunks },
  };
}
