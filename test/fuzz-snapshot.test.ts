// Fuzzing the snapshot loader (`loadSnapshot` + `verifyChunks`) with damaged copies of a snapshot
// of a real paused guest: structured and byte-level mutations of manifest.json, damage to
// memory.bin inside its chunks (flips, truncation), to state.json and to module.wasm. A snapshot
// that loads must be sound (memory within its maximum, every chunk inside memory and matching its
// checksum); anything else must be refused with a SnapshotError that names the damaged file.
import { strict as assert } from 'node:assert';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync, openSync, readSync, writeSync, closeSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { loadSnapshot, verifyChunks, SnapshotError, MANIFEST_FILE, STATE_FILE, PAGE_SIZE, type SnapshotManifest } from '../src/snapshot/index.js';
import { snapshotRealGuest, type RealSnapshot } from './fuzz-real-guest.js';
import { mutate, mutationArb, type Json } from './fuzz-mutations.js';

const RUNS = 150;

describe('fuzz: snapshot loader', () => {
  let real: RealSnapshot;
  let work: string;
  let manifestBytes: Buffer;
  let manifest: SnapshotManifest;
  before(async () => {
    real = await snapshotRealGuest('fuzz');
    work = mkdtempSync(join(tmpdir(), 'ferry-fuzz-snap-'));
    for (const f of readdirSync(real.dir)) copyFileSync(join(real.dir, f), join(work, f));
    manifestBytes = readFileSync(join(work, MANIFEST_FILE));
    manifest = JSON.parse(manifestBytes.toString('utf8')) as SnapshotManifest;
  });
  after(() => {
    real?.cleanup();
    if (work) rmSync(work, { recursive: true, force: true });
  });

  /** Restores one file of the scratch copy from the pristine snapshot. */
  const restore = (file: string) => copyFileSync(join(real.dir, file), join(work, file));

  /** Loads and checks every chunk; 'refused' only for an error that names what is wrong. */
  function verdict(): 'accepted' | 'refused' {
    try {
      const chain = loadSnapshot(work);
      verifyChunks(chain);
      const top = chain.layers[0]!.manifest;
      assert.ok(chain.memory.bytes <= chain.memory.maxBytes && chain.memory.maxBytes <= 2 ** 32);
      for (const c of top.memoryFile.chunks) assert.ok((c.page + c.count) * PAGE_SIZE <= chain.memory.bytes, 'chunk inside memory');
      return 'accepted';
    } catch (err) {
      // A damaged snapshot is refused with the loader's own error, naming a file of the snapshot;
      // anything else (a TypeError from a missing field, a RangeError from a bad offset, a zod or
      // JSON error that escaped) is a loader bug.
      assert.ok(err instanceof SnapshotError, `not a SnapshotError: ${(err as Error)?.stack ?? String(err)}`);
      assert.ok(err.message.includes(work), `the error names the file: ${err.message}`);
      return 'refused';
    }
  }

  test('the pristine copy loads and every chunk verifies', () => {
    assert.equal(verdict(), 'accepted');
    assert.ok(manifest.memoryFile.chunks.length > 0, 'the real guest wrote memory');
  });

  test('structured mutations of manifest.json', { timeout: 20_000 }, () => {
    const seen = { accepted: 0, refused: 0 };
    try {
      fc.assert(
        fc.property(fc.array(mutationArb, { minLength: 1, maxLength: 3 }), (ms) => {
          let v = JSON.parse(manifestBytes.toString('utf8')) as Json;
          for (const m of ms) v = mutate(v, m);
          writeFileSync(join(work, MANIFEST_FILE), JSON.stringify(v));
          seen[verdict()]++;
        }),
        { numRuns: RUNS * 2 },
      );
    } finally {
      restore(MANIFEST_FILE);
    }
    assert.ok(seen.refused > RUNS, `most are refused: ${JSON.stringify(seen)}`);
  });

  test('byte-level damage to manifest.json', { timeout: 20_000 }, () => {
    try {
      fc.assert(
        fc.property(fc.array(fc.record({ at: fc.nat(manifestBytes.length - 1), v: fc.integer({ min: 0, max: 255 }), cut: fc.boolean() }), { minLength: 1, maxLength: 4 }), (edits) => {
          let b = Buffer.from(manifestBytes);
          for (const e of edits) {
            if (e.cut) b = b.subarray(0, e.at % Math.max(1, b.length));
            else b[e.at % Math.max(1, b.length)] = e.v;
          }
          writeFileSync(join(work, MANIFEST_FILE), b);
          verdict();
        }),
        { numRuns: RUNS },
      );
    } finally {
      restore(MANIFEST_FILE);
    }
  });

  test('a flipped byte inside any memory chunk is caught by its checksum', { timeout: 20_000 }, () => {
    const chunks = manifest.memoryFile.chunks;
    const mem = join(work, manifest.memoryFile.file);
    try {
      fc.assert(
        fc.property(fc.nat(chunks.length - 1), fc.nat(), fc.integer({ min: 1, max: 255 }), (ci, within, xor) => {
          restore(manifest.memoryFile.file);
          const c = chunks[ci]!;
          const at = c.page * PAGE_SIZE + (within % (c.count * PAGE_SIZE));
          const fd = openSync(mem, 'r+');
          try {
            const one = Buffer.alloc(1);
            readSync(fd, one, 0, 1, at);
            one[0] = one[0]! ^ xor;
            writeSync(fd, one, 0, 1, at);
          } finally {
            closeSync(fd);
          }
          assert.equal(verdict(), 'refused', `flip at byte ${at} went unnoticed`);
        }),
        { numRuns: 40 },
      );
    } finally {
      restore(manifest.memoryFile.file);
    }
  });

  test('memory.bin cut short, state.json or module.wasm damaged: refused', () => {
    const last = manifest.memoryFile.chunks[manifest.memoryFile.chunks.length - 1]!;
    const mem = join(work, manifest.memoryFile.file);
    for (const size of [0, PAGE_SIZE, (last.page + last.count) * PAGE_SIZE - 1]) {
      truncateSync(mem, size);
      assert.equal(verdict(), 'refused', `memory.bin truncated to ${size}`);
      restore(manifest.memoryFile.file);
    }
    for (const file of [STATE_FILE, manifest.module.file!]) {
      const bytes = readFileSync(join(work, file));
      for (const at of [0, bytes.length >> 1, bytes.length - 1]) {
        const b = Buffer.from(bytes);
        b[at] = b[at]! ^ 0x20;
        writeFileSync(join(work, file), b);
        assert.equal(verdict(), 'refused', `${file} with byte ${at} flipped`);
      }
      writeFileSync(join(work, file), bytes.subarray(0, bytes.length >> 1));
      assert.equal(verdict(), 'refused', `${file} cut in half`);
      restore(file);
    }
    assert.equal(verdict(), 'accepted', 'the restored copy loads again');
  });
});
