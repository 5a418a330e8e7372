import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { digestFrozenMemory, digestMemory, PageDigest, pageHash } from '../src/migration/verify/digest.js';
import { GuestMemory, HOST_PAGE_SIZE } from '../src/memory/guest-memory.js';
import { scanResidency } from '../src/memory/residency.js';

const PAGES = 64;
function memory(): Uint8Array {
  const m = new Uint8Array(new SharedArrayBuffer(PAGES * 4096));
  m.set(randomBytes(PAGES * 4096 / 2)); // second half stays zero
  return m;
}

describe('digest', () => {
  test('same memory → same digest whatever order pages were set in; newest copy wins', () => {
    const m = memory();
    const expected = digestMemory(m, PAGES);
    fc.assert(
      fc.property(fc.shuffledSubarray([...Array(PAGES).keys()], { minLength: PAGES, maxLength: PAGES }), fc.array(fc.nat(PAGES - 1), { maxLength: 10 }), (order, stale) => {
        const d = new PageDigest(PAGES * 4096 * 2);
        for (const p of stale) d.set(p, randomBytes(4096)); // older copies, replaced below
        for (const p of order) {
          const bytes = m.subarray(p * 4096, (p + 1) * 4096);
          if (bytes.every((b) => b === 0) && p % 2 === 0) d.setZero(p);
          else d.set(p, bytes);
        }
        assert.equal(d.digestHex(PAGES), expected);
      }),
      { numRuns: 50 },
    );
  });

  test('one changed byte anywhere changes the digest', () => {
    const m = memory();
    const base = digestMemory(m, PAGES);
    for (const at of [0, 1, 4095, 4096, 33 * 4096 + 7, PAGES * 4096 - 1]) {
      const c = new Uint8Array(m);
      c[at]! ^= 0x80;
      assert.notEqual(digestMemory(c, PAGES), base, `byte ${at}`);
    }
    // Swapping two different pages changes it too: position matters.
    const s = new Uint8Array(m);
    s.copyWithin(0, 4096, 8192);
    s.set(m.subarray(0, 4096), 4096);
    assert.notEqual(digestMemory(s, PAGES), base);
  });

  test('any single changed word always changes the page hash (the mixing step is a bijection)', () => {
    fc.assert(
      fc.property(fc.uint8Array({ minLength: 4096, maxLength: 4096 }), fc.nat(4095), fc.integer({ min: 1, max: 255 }), (bytes, at, flip) => {
        const a = pageHash(bytes);
        const c = Uint8Array.from(bytes);
        c[at]! ^= flip;
        assert.notDeepEqual(pageHash(c), a);
      }),
      { numRuns: 300 },
    );
  });

  test('zero pages: setZero, a fresh digest, isZero and reading zeros agree; unaligned views work', () => {
    const zeros = new Uint8Array(PAGES * 4096);
    const fresh = new PageDigest(PAGES * 4096).digestHex(PAGES);
    assert.equal(digestMemory(zeros, PAGES), fresh);
    assert.equal(digestMemory(zeros, PAGES, () => true), fresh);
    const m = memory();
    const unaligned = new Uint8Array(m.length + 1);
    unaligned.set(m, 1);
    assert.equal(digestMemory(unaligned.subarray(1), PAGES), digestMemory(m, PAGES));
    const d = new PageDigest(PAGES * 4096);
    d.set(0, m.subarray(0, 8 * 4096), 8);
    d.set(8, unaligned.subarray(1 + 8 * 4096, 1 + PAGES * 4096), PAGES - 8);
    assert.equal(d.digestHex(PAGES), digestMemory(m, PAGES));
    assert.notEqual(d.digestHex(PAGES - 1), d.digestHex(PAGES));
  });

  test('bad input is refused clearly', () => {
    assert.throws(() => new PageDigest(100), /multiple of 4096/);
    const d = new PageDigest(8192);
    assert.throws(() => d.set(2, new Uint8Array(4096)), /outside 0..2/);
    assert.throws(() => d.set(0, new Uint8Array(100)), /need 4096 bytes/);
    assert.throws(() => digestMemory(new Uint8Array(4096), 2), /do not fit/);
  });

  for (const on of ['native', 'worker'] as const) {
    test(`the digest thread (${on}) reads real guest memory in place and agrees with digestMemory; untouched pages are not read`, async () => {
      const mem = GuestMemory.create(2, 4); // 128 KiB now: 32 host pages, most never touched
      const view = mem.view();
      for (const p of [0, 3, 4, 17, 31]) view.set(randomBytes(HOST_PAGE_SIZE), p * HOST_PAGE_SIZE);
      view[9 * HOST_PAGE_SIZE] = 0; // written, but zero: present and read
      const before = scanResidency(mem).present;
      const pages = mem.pageCount;
      const hex = await digestFrozenMemory(mem, pages, before, on);
      assert.deepEqual(scanResidency(mem).present.toArray(), before.toArray(), 'the thread mapped no page');
      assert.equal(hex, digestMemory(view, pages, (p) => !before.has(p)));
      assert.equal(hex, digestMemory(view, pages), 'pages left out read as zero anyway');
      view[17 * HOST_PAGE_SIZE + 5]! ^= 1;
      assert.notEqual(await digestFrozenMemory(mem, pages, before, on), hex, 'a changed byte changes it');
    });
  }

  test('the native digest thread refuses a page count its arrays cannot hold', async () => {
    const mem = GuestMemory.create(2, 4);
    const present = scanResidency(mem).present;
    await assert.rejects(digestFrozenMemory(mem, mem.pageCount + 1, present, 'native'), /shorter than pageCount/);
  });
});
