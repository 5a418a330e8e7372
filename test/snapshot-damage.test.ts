// Damaged snapshots are refused before any guest runs, with an error naming the file.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, openSync, readFileSync, readSync, rmSync, statSync, truncateSync, writeFileSync, writeSync, closeSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Guest } from '../src/guest/guest.js';
import { GuestMemory, WASM_PAGE_SIZE } from '../src/memory/guest-memory.js';
import { SnapshotError, SnapshotSession, loadEagerly, loadSnapshot, restoreSnapshot, type SnapshotManifest } from '../src/snapshot/index.js';
import { COMPUTE, MEMTOUCH, ferryDone, seqNumbers, until } from './snapshot-helpers.js';

let tmp: string;
let full: string;
let diff: string;
/** The guest's whole memory as the diff snapshot froze it (the guest stops after that snapshot). */
let frozen: Buffer;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'ferry-snapdmg-'));
  const outPath = join(tmp, 'g.out');
  const guest = await Guest.start({
    module: readFileSync(MEMTOUCH),
    args: ['memtouch', '--mib', '4', '--report-ms', '20'],
    stdio: { stdout: openSync(outPath, 'w') },
    maxMemoryBytes: 64 << 20,
  });
  await until('memtouch to report', () => seqNumbers(outPath).length >= 2);
  const session = new SnapshotSession(guest);
  full = join(tmp, 'full');
  diff = join(tmp, 'diff');
  await session.take({ to: full, resume: true });
  await until('more writes', () => seqNumbers(outPath).length >= 5);
  await session.take({ to: diff, diffFrom: full });
  frozen = Buffer.from(new Uint8Array(guest.memory.buffer).slice());
});
after(() => rmSync(tmp, { recursive: true, force: true }));

/** A copy of the full+diff pair under a fresh directory (the diff names its parent as ../full). */
function copyPair(name: string): { full: string; diff: string } {
  const root = join(tmp, name);
  mkdirSync(root);
  cpSync(full, join(root, 'full'), { recursive: true });
  cpSync(diff, join(root, 'diff'), { recursive: true });
  return { full: join(root, 'full'), diff: join(root, 'diff') };
}

/** A SnapshotError of `code` naming `file`. */
const refusal = (code: SnapshotError['code'], file: string) => (e: unknown): boolean => {
  assert.ok(e instanceof SnapshotError, `a SnapshotError, got ${String(e)}`);
  assert.equal(e.code, code, e.message);
  assert.ok(e.message.includes(file), `message names ${file}: ${e.message}`);
  return true;
};

function refused(fn: () => unknown, code: SnapshotError['code'], file: string): void {
  assert.throws(fn, refusal(code, file));
}

test('the intact pair loads, as a chain of two', async () => {
  const c = loadSnapshot(diff);
  assert.equal(c.layers.length, 2);
  const viaThisThread = GuestMemory.create(c.memory.bytes / WASM_PAGE_SIZE, c.memory.maxBytes / WASM_PAGE_SIZE);
  await loadEagerly(c, viaThisThread.view(), { native: false });
  const mem = GuestMemory.create(c.memory.bytes / WASM_PAGE_SIZE, c.memory.maxBytes / WASM_PAGE_SIZE);
  await loadEagerly(c, mem.view()); // the data plane's load threads
  assert.ok(Buffer.from(mem.view()).equals(Buffer.from(viaThisThread.view())), 'both loads give the same memory');
  // Every byte as the guest left it: pages only the full layer holds, pages the diff rewrote, and
  // pages never written (zero in both).
  assert.equal(c.memory.bytes, frozen.length);
  const loaded = Buffer.from(mem.view().subarray(0, c.memory.bytes));
  if (!loaded.equals(frozen)) {
    const at = loaded.findIndex((b, i) => b !== frozen[i]);
    assert.fail(`loaded memory differs from the guest's at byte ${at} (page ${Math.floor(at / 4096)})`);
  }
  assert.ok(c.layers[0]!.manifest.memoryFile.chunks.length > 0 && c.layers[1]!.manifest.memoryFile.chunks.length > 0, 'both layers hold pages');
  assert.ok(c.layers.every((l) => l.manifest.memoryFile.chunks.every((ch) => /^[0-9a-f]{32}$/.test(ch.crc32c ?? ''))), 'every chunk has its fast check');
});

test('a manifest without fast checks (an older writer, or one without the addon) loads natively by its sha256s, and a flipped byte is still refused', async () => {
  const p = copyPair('nocrc');
  const manifestPath = join(p.full, 'manifest.json');
  const m = JSON.parse(readFileSync(manifestPath, 'utf8')) as SnapshotManifest;
  for (const c of m.memoryFile.chunks) delete c.crc32c;
  writeFileSync(manifestPath, JSON.stringify(m)); // the diff's pin on it breaks: the full one is loaded alone
  const c = loadSnapshot(p.full);
  assert.ok(c.layers[0]!.manifest.memoryFile.chunks.every((ch) => ch.crc32c === undefined));
  const viaThisThread = GuestMemory.create(c.memory.bytes / WASM_PAGE_SIZE, c.memory.maxBytes / WASM_PAGE_SIZE);
  await loadEagerly(c, viaThisThread.view(), { native: false });
  const mem = GuestMemory.create(c.memory.bytes / WASM_PAGE_SIZE, c.memory.maxBytes / WASM_PAGE_SIZE);
  await loadEagerly(c, mem.view());
  assert.ok(Buffer.from(mem.view()).equals(Buffer.from(viaThisThread.view())), 'both loads give the same memory');
  const f = join(p.full, 'memory.bin');
  const at = m.memoryFile.chunks.at(-1)!.page * 4096 + 7;
  const fd = openSync(f, 'r+');
  writeSync(fd, Buffer.from([readFileSync(f)[at]! ^ 1]), 0, 1, at);
  closeSync(fd);
  await assert.rejects(loadEagerly(c, mem.view()), refusal('checksum', f));
});

test("the newest layer's fast checks are what the native load checks there: a wrong one is refused", async () => {
  const p = copyPair('badcrc');
  const manifestPath = join(p.diff, 'manifest.json'); // the leaf: no child pins it
  const m = JSON.parse(readFileSync(manifestPath, 'utf8')) as SnapshotManifest;
  const c0 = m.memoryFile.chunks[0]!;
  c0.crc32c = (c0.crc32c![0] === '0' ? '1' : '0') + c0.crc32c!.slice(1);
  writeFileSync(manifestPath, JSON.stringify(m));
  const chain = loadSnapshot(p.diff);
  const mem = GuestMemory.create(chain.memory.bytes / WASM_PAGE_SIZE, chain.memory.maxBytes / WASM_PAGE_SIZE);
  await assert.rejects(loadEagerly(chain, mem.view()), refusal('checksum', join(p.diff, 'memory.bin')));
});

test('a truncated memory file is refused', () => {
  const p = copyPair('trunc');
  const f = join(p.full, 'memory.bin');
  truncateSync(f, statSync(f).size - 4096);
  refused(() => loadSnapshot(p.diff), 'truncated', f);
});

test('a flipped byte in the memory file fails its chunk checksum before a guest runs (eager) or stops the guest (lazy)', async () => {
  const p = copyPair('flip');
  const f = join(p.diff, 'memory.bin');
  const m = JSON.parse(readFileSync(join(p.diff, 'manifest.json'), 'utf8')) as SnapshotManifest;
  const at = m.memoryFile.chunks[0]!.page * 4096 + 100;
  const fd = openSync(f, 'r+');
  const b = Buffer.alloc(1);
  readSync(fd, b, 0, 1, at);
  b[0] = b[0]! ^ 0x40;
  writeSync(fd, b, 0, 1, at);
  closeSync(fd);
  const chain = loadSnapshot(p.diff); // structure is fine; the bytes are not
  const mem = GuestMemory.create(chain.memory.bytes / WASM_PAGE_SIZE, chain.memory.maxBytes / WASM_PAGE_SIZE);
  for (const native of [true, false]) await assert.rejects(loadEagerly(chain, mem.view(), { native }), refusal('checksum', f));
  await assert.rejects(restoreSnapshot(p.diff), (e: unknown) => e instanceof SnapshotError && e.code === 'checksum');
  const lazy = await restoreSnapshot(p.diff, { lazy: true, stdio: { stdout: openSync('/dev/null', 'w') } });
  await assert.rejects(lazy.loaded, (e: unknown) => e instanceof SnapshotError && e.code === 'checksum' && e.message.includes(f));
  const exit = await lazy.guest.exited;
  assert.notEqual(exit.reason, 'exit', 'the guest was stopped, it did not run to an exit');
  const cli = await ferryDone(['restore', p.diff]);
  assert.equal(cli.code, 6);
  assert.match(cli.stderr, /snapshot refused: .*memory\.bin: checksum mismatch/);
});

test('a missing parent is refused, naming the parent manifest', () => {
  const root = join(tmp, 'orphan');
  mkdirSync(root);
  cpSync(diff, join(root, 'diff'), { recursive: true });
  refused(() => loadSnapshot(join(root, 'diff')), 'parent', join(root, 'full', 'manifest.json'));
});

test('a parent that is not the one the diff was taken against is refused', () => {
  const p = copyPair('otherparent');
  const mf = join(p.full, 'manifest.json');
  const m = JSON.parse(readFileSync(mf, 'utf8')) as SnapshotManifest;
  m.createdAt = '2000-01-01T00:00:00.000Z';
  writeFileSync(mf, JSON.stringify(m));
  refused(() => loadSnapshot(p.diff), 'parent', mf);
});

test('another module in module.wasm is refused', () => {
  const p = copyPair('module');
  const f = join(p.full, 'module.wasm');
  writeFileSync(f, readFileSync(COMPUTE));
  refused(() => loadSnapshot(p.diff), 'module', f);
});

test('a modified state file is refused; a damaged manifest is refused; a plain directory is not a snapshot', async () => {
  const p = copyPair('state');
  const sf = join(p.diff, 'state.json');
  const s = readFileSync(sf, 'utf8');
  writeFileSync(sf, s.replace('"uptimeMs":', '"uptimeMs":1'));
  refused(() => loadSnapshot(p.diff), 'truncated', sf); // one byte longer than the manifest says
  // Same length, one digit changed: only the checksum can tell.
  const changed = s.replace(/"uptimeMs":(\d)/, (_m, d: string) => `"uptimeMs":${(Number(d) + 1) % 10}`);
  assert.notEqual(changed, s);
  assert.equal(changed.length, s.length);
  writeFileSync(sf, changed);
  refused(() => loadSnapshot(p.diff), 'checksum', sf);
  const mf = join(p.full, 'manifest.json');
  const m = JSON.parse(readFileSync(mf, 'utf8')) as SnapshotManifest;
  m.memoryFile.chunks[0]!.crc32c = 'not-hex';
  writeFileSync(mf, JSON.stringify(m));
  assert.throws(() => loadSnapshot(p.full), (e: unknown) => refusal('corrupt', mf)(e) && /memoryFile\.chunks\[0\]\.crc32c/.test((e as Error).message));
  writeFileSync(mf, '{"format":"ferry-snapshot","version":1');
  refused(() => loadSnapshot(p.full), 'corrupt', mf);
  refused(() => loadSnapshot(tmp), 'missing', join(tmp, 'manifest.json'));
  const cli = await ferryDone(['restore', tmp]);
  assert.equal(cli.code, 6);
  assert.match(cli.stderr, /manifest\.json does not exist/);
});
