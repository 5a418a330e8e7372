// Loads a snapshot and the chain of parents it is a diff against, and checks everything that can be
// checked without reading the memory pages: manifests, the state (checksum and content), file sizes
// (a truncated memory.bin is caught here), the parent links (path and manifest checksum), the module
// (hash). Page checksums are checked as pages are read (verifyChunks, and the restore paths).
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { decodeGuestState, type GuestState } from '../state/guest-state.js';
import { LayerReader } from './layer-reader.js';
import { MANIFEST_FILE, PAGE_SIZE, SnapshotError, sha256Hex, validateManifest, type SnapshotManifest } from './format.js';

/** Longest parent chain followed (also stops cycles). */
export const MAX_CHAIN = 64;

export interface SnapshotLayer {
  dir: string;
  manifest: SnapshotManifest;
  memoryPath: string;
}

export interface SnapshotChain {
  /** Root (the full snapshot) first, the snapshot asked for last. */
  layers: SnapshotLayer[];
  /** The state of the newest layer. */
  state: GuestState;
  moduleSource: Uint8Array;
  memory: { bytes: number; maxBytes: number };
  /** Per host page of memory.bytes: index of the newest layer holding it, or -1 (a zero page). */
  location: Int16Array;
  /** Pages held by some layer. */
  presentPages: number;
}

export function loadSnapshot(dirArg: string): SnapshotChain {
  const newestFirst: SnapshotLayer[] = [];
  let dir = resolve(dirArg);
  let expectSha: string | null = null;
  let child: SnapshotLayer | null = null;
  for (;;) {
    if (newestFirst.length >= MAX_CHAIN) throw new SnapshotError('parent', `snapshot chain of ${dirArg} is longer than ${MAX_CHAIN} (or loops)`);
    const manifestPath = join(dir, MANIFEST_FILE);
    if (!existsSync(manifestPath)) {
      throw child
        ? new SnapshotError('parent', `${join(child.dir, MANIFEST_FILE)}: parent snapshot ${manifestPath} is missing`)
        : new SnapshotError('missing', `${manifestPath} does not exist (not a snapshot directory, or an unfinished snapshot)`);
    }
    const raw = readFileSync(manifestPath);
    if (expectSha !== null && sha256Hex(raw) !== expectSha) {
      throw new SnapshotError('parent', `${manifestPath}: this parent snapshot is not the one ${join(child!.dir, MANIFEST_FILE)} was taken against (manifest checksum differs)`);
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw.toString('utf8'));
    } catch (err) {
      throw new SnapshotError('corrupt', `${manifestPath}: not valid JSON (${(err as Error).message})`);
    }
    const manifest = validateManifest(parsed, manifestPath);
    const layer: SnapshotLayer = { dir, manifest, memoryPath: join(dir, manifest.memoryFile.file) };
    checkMemoryFile(layer);
    if (child) {
      const cm = child.manifest;
      if (manifest.module.hash !== cm.module.hash) throw new SnapshotError('module', `${manifestPath}: parent snapshot belongs to another module than ${join(child.dir, MANIFEST_FILE)}`);
      if (manifest.memory.maxBytes !== cm.memory.maxBytes || manifest.memory.bytes > cm.memory.bytes) {
        throw new SnapshotError('parent', `${manifestPath}: parent memory geometry does not fit ${join(child.dir, MANIFEST_FILE)}`);
      }
    }
    newestFirst.push(layer);
    if (!manifest.parent) break;
    child = layer;
    expectSha = manifest.parent.manifestSha256;
    dir = resolve(dir, manifest.parent.path);
  }
  const layers = newestFirst.reverse();
  const leaf = layers[layers.length - 1]!;
  const state = readState(leaf);
  const moduleSource = readModule(layers[0]!);
  const pageCount = leaf.manifest.memory.bytes / PAGE_SIZE;
  const location = new Int16Array(pageCount).fill(-1);
  layers.forEach((l, i) => {
    for (const c of l.manifest.memoryFile.chunks) location.fill(i, c.page, c.page + c.count);
  });
  return { layers, state, moduleSource, memory: { ...leaf.manifest.memory }, location, presentPages: pagesInChunks(layers, pageCount) };
}

/**
 * The pages some layer holds: the union of every layer's chunks, counted run by run (a loop over
 * every page of a 1 GiB memory, cold, cost a lazy restore milliseconds of its start).
 */
function pagesInChunks(layers: SnapshotLayer[], pageCount: number): number {
  const runs = layers.flatMap((l) => l.manifest.memoryFile.chunks.map((c): [number, number] => [c.page, Math.min(c.page + c.count, pageCount)]));
  runs.sort((a, b) => a[0] - b[0]);
  let pages = 0;
  let covered = 0; // pages below this are counted
  for (const [start, end] of runs) {
    const from = Math.max(start, covered);
    if (end > from) pages += end - from;
    covered = Math.max(covered, end);
  }
  return pages;
}

function checkMemoryFile(layer: SnapshotLayer): void {
  const mf = layer.manifest.memoryFile;
  if (!existsSync(layer.memoryPath)) throw new SnapshotError('missing', `${layer.memoryPath} is missing`);
  const size = statSync(layer.memoryPath).size;
  if (size < mf.size) throw new SnapshotError('truncated', `${layer.memoryPath} is truncated: ${size} bytes, the manifest says ${mf.size}`);
  if (size > mf.size) throw new SnapshotError('corrupt', `${layer.memoryPath} is ${size} bytes, longer than the ${mf.size} the manifest says`);
}

function readState(layer: SnapshotLayer): GuestState {
  const { manifest, dir } = layer;
  const path = join(dir, manifest.state.file);
  if (!existsSync(path)) throw new SnapshotError('missing', `${path} is missing`);
  const bytes = readFileSync(path);
  if (bytes.length !== manifest.state.size) throw new SnapshotError('truncated', `${path} is ${bytes.length} bytes, the manifest says ${manifest.state.size}`);
  if (sha256Hex(bytes) !== manifest.state.sha256) throw new SnapshotError('checksum', `${path}: checksum mismatch (the file was modified or damaged)`);
  let state: GuestState;
  try {
    state = decodeGuestState(bytes);
  } catch (err) {
    throw new SnapshotError('corrupt', `${path}: ${(err as Error).message}`);
  }
  if (state.module.hash !== manifest.module.hash) throw new SnapshotError('module', `${path}: state belongs to another module than the manifest names`);
  if (state.memory.bytes !== manifest.memory.bytes || state.memory.maxBytes !== manifest.memory.maxBytes) {
    throw new SnapshotError('corrupt', `${path}: memory geometry differs from the manifest's`);
  }
  return state;
}

function readModule(root: SnapshotLayer): Uint8Array {
  const { manifest, dir } = root;
  if (!manifest.module.file) throw new SnapshotError('module', `${join(dir, MANIFEST_FILE)}: the root snapshot does not carry its module`);
  const path = join(dir, manifest.module.file);
  if (!existsSync(path)) throw new SnapshotError('module', `${path} is missing`);
  const bytes = readFileSync(path);
  if (sha256Hex(bytes) !== manifest.module.hash) {
    throw new SnapshotError('module', `${path} is not the module this snapshot was taken from (sha256 ${sha256Hex(bytes).slice(0, 12)}…, expected ${manifest.module.hash.slice(0, 12)}…)`);
  }
  return bytes;
}

/** A reader of the chain's memory files (close it when done). */
export function chainReader(chain: SnapshotChain): LayerReader {
  return new LayerReader(chain.layers.map((l) => l.memoryPath), chain.location);
}

/** Reads every chunk of every layer and checks its checksum; calls onPages for the pages each layer still owns. */
export function verifyChunks(chain: SnapshotChain, onPages?: (page: number, count: number, bytes: Uint8Array) => void): void {
  const buf = new Uint8Array(256 * PAGE_SIZE);
  const reader = chainReader(chain);
  try {
    chain.layers.forEach((layer, li) => {
      for (const c of layer.manifest.memoryFile.chunks) {
        reader.readChunk(li, c, buf);
        if (!onPages) continue;
        for (let p = c.page; p < c.page + c.count; ) {
          if (chain.location[p] !== li) { p++; continue; }
          let q = p + 1;
          while (q < c.page + c.count && chain.location[q] === li) q++;
          onPages(p, q - p, buf.subarray((p - c.page) * PAGE_SIZE, (q - c.page) * PAGE_SIZE));
          p = q;
        }
      }
    });
  } finally {
    reader.close();
  }
}
