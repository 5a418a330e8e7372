// PageBitmap and PageStateTable: set algebra against a plain Set model, runs, transitions, counts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PageBitmap } from '../src/memory/page-bitmap.js';
import { PageStateTable, PageState } from '../src/memory/page-state.js';
import { wasmPagesToHostPages, hostPagesToWasmPages, GuestMemory } from '../src/memory/guest-memory.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32);
}

function randomSet(r: () => number, size: number): { bm: PageBitmap; set: Set<number> } {
  const bm = new PageBitmap(size);
  const set = new Set<number>();
  for (let i = 0; i < 40; i++) {
    const s = Math.floor(r() * size);
    const e = Math.min(size, s + Math.floor(r() * 100));
    if (r() < 0.7) { bm.addRange(s, e); for (let p = s; p < e; p++) set.add(p); }
    else { bm.deleteRange(s, e); for (let p = s; p < e; p++) set.delete(p); }
    const q = Math.floor(r() * size);
    bm.add(q); set.add(q);
  }
  return { bm, set };
}

test('PageBitmap matches a Set model (add/delete ranges, union, subtract, intersect, runs, count)', () => {
  const r = rng(7);
  for (let round = 0; round < 30; round++) {
    const size = 1 + Math.floor(r() * 3000);
    const a = randomSet(r, size), b = randomSet(r, size);
    const sorted = (s: Set<number>) => [...s].sort((x, y) => x - y);
    assert.deepEqual(a.bm.toArray(), sorted(a.set));
    assert.equal(a.bm.count(), a.set.size);
    const runs = a.bm.runs();
    assert.deepEqual(runs.flatMap(([s, e]) => Array.from({ length: e - s }, (_, i) => s + i)), sorted(a.set));
    for (let i = 1; i < runs.length; i++) assert.ok(runs[i]![0] > runs[i - 1]![1], 'runs are maximal and ordered');
    assert.deepEqual(a.bm.clone().union(b.bm).toArray(), sorted(new Set([...a.set, ...b.set])));
    assert.deepEqual(a.bm.clone().subtract(b.bm).toArray(), sorted(new Set([...a.set].filter((p) => !b.set.has(p)))));
    assert.deepEqual(a.bm.clone().intersect(b.bm).toArray(), sorted(new Set([...a.set].filter((p) => b.set.has(p)))));
  }
});

test('PageBitmap: a 1M-page set, bounds errors, shared buffer', () => {
  const n = 1 << 20;
  const bm = new PageBitmap(n);
  bm.addRange(0, n);
  assert.equal(bm.count(), n);
  assert.deepEqual(bm.runs(), [[0, n]]);
  bm.deleteRange(1000, n - 1000);
  assert.deepEqual(bm.runs(), [[0, 1000], [n - 1000, n]]);
  assert.throws(() => bm.add(n), /outside/);
  assert.throws(() => bm.addRange(5, n + 1), /outside/);
  assert.throws(() => new PageBitmap(10).union(new PageBitmap(11)), /sizes differ/);
  const sab = new SharedArrayBuffer(PageBitmap.bytesFor(100));
  new PageBitmap(100, sab).add(42);
  assert.ok(new PageBitmap(100, sab).has(42));
});

test('PageStateTable transitions and counts; shared view sees the same table', () => {
  const t = new PageStateTable(100);
  assert.deepEqual(t.counts3(), { knownZero: 100, pending: 0, received: 0 });
  t.markAllPending(PageBitmap.fromPages(100, [1, 2, 3, 50]));
  assert.equal(t.get(2), PageState.PENDING);
  assert.equal(t.markReceived(2), PageState.PENDING);
  t.markZero(3);
  assert.throws(() => t.markZero(2), /received, cannot become known-zero/);
  assert.deepEqual(t.counts3(), { knownZero: 97, pending: 2, received: 1 });
  const other = PageStateTable.fromShared(t.shared());
  assert.equal(other.get(2), PageState.RECEIVED);
  other.markReceived(50);
  assert.equal(t.get(50), PageState.RECEIVED);
  assert.deepEqual(t.pagesIn(PageState.PENDING).toArray(), [1]);
  assert.throws(() => t.get(100), /outside/);
});

test('PageStateTable.markPendingRange moves known-zero and received pages, leaves pending ones, and moves the counts with them', () => {
  const t = new PageStateTable(64);
  t.markPending(10);
  t.markPending(11);
  t.markReceived(11);
  t.markPending(12); // pending already: stays, counted once
  t.markPendingRange(8, 16);
  for (let p = 8; p < 16; p++) assert.equal(t.get(p), PageState.PENDING, `page ${p}`);
  assert.equal(t.get(7), PageState.KNOWN_ZERO);
  assert.equal(t.get(16), PageState.KNOWN_ZERO);
  assert.deepEqual(t.counts3(), { knownZero: 56, pending: 8, received: 0 });
  t.markPendingRange(20, 20); // empty: nothing moves
  assert.deepEqual(t.counts3(), { knownZero: 56, pending: 8, received: 0 });
  assert.throws(() => t.markPendingRange(60, 65), /outside/);
  assert.equal(t.get(60), PageState.KNOWN_ZERO, 'a range that runs past the table moves nothing');
  // The unshared form: a known-zero range in one fill, a mixed one as above.
  t.markPendingUnshared(32, 40);
  t.markReceived(41);
  t.markPendingUnshared(40, 44);
  for (let p = 32; p < 44; p++) assert.equal(t.get(p), PageState.PENDING, `page ${p}`);
  assert.deepEqual(t.counts3(), { knownZero: 44, pending: 20, received: 0 });
});

test('GuestMemory: reservation, growth, page conversions, bad input', () => {
  assert.equal(wasmPagesToHostPages(3), 48);
  assert.equal(hostPagesToWasmPages(17), 2);
  const m = GuestMemory.create(2, 10);
  assert.equal(m.maxBytes, 10 * 65536);
  assert.equal(m.pageCount, 32);
  const base = m.base;
  m.grow(3);
  assert.equal(m.pageCount, 80);
  assert.equal(m.base, base, 'a shared memory never moves');
  assert.equal(m.pageOf(base + 4096 * 7 + 5), 7);
  assert.throws(() => m.pageOf(base + m.maxBytes), /outside the reservation/);
  assert.throws(() => new GuestMemory(new WebAssembly.Memory({ initial: 1, maximum: 2 }), 2), /shared: true/);
  assert.throws(() => new GuestMemory(new WebAssembly.Memory({ initial: 3, maximum: 4, shared: true }), 2), /larger than the maximum/);
});
