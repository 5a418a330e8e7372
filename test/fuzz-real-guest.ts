// A snapshot of a real paused guest, shared by the fuzz tests as the valid seed their mutations
// start from: `ferry run memtouch --api-sock` then `ferry snapshot` (the guest is paused at a
// safepoint, captured, and written with its state, sparse memory and module).
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FerryProc, GUESTS, useFileCache } from './fixtures/migration/ferry-procs.js';

export interface RealSnapshot {
  /** The snapshot directory (manifest.json, state.json, memory.bin, module.wasm). */
  dir: string;
  /** state.json: a guest state exactly as a paused guest was captured. */
  stateBytes: Buffer;
  cleanup(): void;
}

export async function snapshotRealGuest(cacheName: string): Promise<RealSnapshot> {
  useFileCache(cacheName);
  const root = mkdtempSync(join(tmpdir(), 'ferry-fuzz-'));
  const work = join(root, 'work');
  mkdirSync(work);
  const sock = join(root, 'api.sock');
  const run = new FerryProc('source', ['run', join(GUESTS, 'memtouch.wasm'), '--api-sock', sock, '--dir', `${work}:/work`, '--max-memory', '64M', '--', '--mib', '2', '--rate', '500', '--report-ms', '50']);
  try {
    await run.waitFor(/^SEQ 2 /m, 'memtouch to report', 240_000);
    const dir = join(root, 'snap');
    const snap = new FerryProc('snapshot', ['snapshot', '--api-sock', sock, '--to', dir]);
    const code = await snap.exitWithin(120_000);
    if (code !== 0) throw new Error(`ferry snapshot exit ${code}: ${snap.err}`);
    return { dir, stateBytes: readFileSync(join(dir, 'state.json')), cleanup: () => rmSync(root, { recursive: true, force: true }) };
  } finally {
    run.kill();
  }
}
