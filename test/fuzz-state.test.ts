// Fuzzing the guest-state loader (`decodeGuestState`) and the WASI state validator
// (`validateWasiState`): random bytes, random JSON, and structured mutations of a state captured
// from a real paused guest. Whatever comes in, the loader must either return a state that obeys
// its invariants (and survives a round trip unchanged) or throw an Error whose message says
// what is wrong — never crash with a TypeError from inside, never hang.
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { decodeGuestState, encodeGuestState, validateGuestState, type GuestState } from '../src/state/guest-state.js';
import { StateError } from '../src/state/validate.js';
import { validateWasiState } from '../src/wasi/persist.js';
import { snapshotRealGuest, type RealSnapshot } from './fuzz-real-guest.js';
import { EDGE_VALUES, mutate, mutationArb, type Json } from './fuzz-mutations.js';

const WASM_PAGE = 65536;
const RUNS = 400;

/** Checks a state the loader accepted: the invariants later layers rely on. */
function checkAccepted(s: GuestState): void {
  assert.ok(s.memory.bytes <= s.memory.maxBytes && s.memory.maxBytes <= 2 ** 32, 'memory within its maximum, within 4 GiB');
  assert.equal(s.memory.bytes % WASM_PAGE, 0);
  assert.equal(s.memory.maxBytes % WASM_PAGE, 0);
  if (s.exec.unwind) assert.ok(s.exec.unwind.ptr + s.exec.unwind.size <= s.memory.bytes, 'unwind region inside memory');
  for (const g of s.exec.globals) assert.equal(g.bits.length, g.type === 'i32' || g.type === 'f32' ? 8 : 16);
  // Compared as JSON: -0 is accepted where 0 is and becomes 0 on the wire, which is harmless.
  assert.equal(JSON.stringify(decodeGuestState(encodeGuestState(s))), JSON.stringify(s), 'an accepted state survives a round trip unchanged');
}

/** The loader's verdict: accepted (and checked) or refused with a message; anything else fails the test. */
function load(bytes: Uint8Array): 'accepted' | 'refused' {
  let s: GuestState;
  try {
    s = decodeGuestState(bytes);
  } catch (err) {
    assert.ok(err instanceof StateError || (err instanceof Error && err.message.startsWith('invalid WASI state')), `unexpected ${(err as Error)?.constructor?.name}: ${String(err)}`);
    assert.ok((err as Error).message.length > 10, 'the error says what is wrong');
    return 'refused';
  }
  checkAccepted(s);
  return 'accepted';
}

describe('fuzz: guest state loader and WASI state validator', () => {
  let real: RealSnapshot;
  let valid: Json;
  before(async () => {
    real = await snapshotRealGuest('fuzz');
    valid = JSON.parse(real.stateBytes.toString('utf8')) as Json;
  });
  after(() => real?.cleanup());

  test('the captured state of a real paused guest loads', () => {
    assert.equal(load(real.stateBytes), 'accepted');
    const s = decodeGuestState(real.stateBytes);
    assert.ok(s.exec.globals.length > 0, 'a real guest has globals');
    assert.ok(s.wasi.fds.length >= 3, 'stdio at least');
  });

  test('random bytes are refused with a message', { timeout: 20_000 }, () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 4096 }), (b) => assert.equal(load(b), 'refused')), { numRuns: RUNS });
  });

  test('random JSON is refused with a message', { timeout: 20_000 }, () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 6 }), (v) => assert.equal(load(Buffer.from(JSON.stringify(v) ?? 'null')), 'refused')),
      { numRuns: RUNS },
    );
  });

  test('structured mutations of a real state: refused with a message, or accepted and sound', { timeout: 20_000 }, () => {
    const seen = { accepted: 0, refused: 0 };
    fc.assert(
      fc.property(fc.array(mutationArb, { minLength: 1, maxLength: 4 }), (ms) => {
        let v = valid;
        for (const m of ms) v = mutate(v, m);
        seen[load(Buffer.from(JSON.stringify(v)))]++;
      }),
      { numRuns: RUNS * 2 },
    );
    assert.ok(seen.refused > RUNS, `most mutations are refused (${JSON.stringify(seen)})`);
  });

  test('byte-level mutations of a real state (flips, cuts, insertions)', { timeout: 20_000 }, () => {
    const base = real.stateBytes;
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat(base.length - 1), v: fc.integer({ min: 0, max: 255 }), op: fc.constantFrom('set', 'cut', 'insert') }), { minLength: 1, maxLength: 6 }),
        (edits) => {
          let b = Buffer.from(base);
          for (const e of edits) {
            const at = e.at % Math.max(1, b.length);
            if (e.op === 'set') b[at] = e.v;
            else if (e.op === 'cut') b = b.subarray(0, at);
            else b = Buffer.concat([b.subarray(0, at), Buffer.from([e.v]), b.subarray(at)]);
          }
          load(b);
        },
      ),
      { numRuns: RUNS },
    );
  });

  test('hostile corpus: every entry is refused with a message', { timeout: 20_000 }, () => {
    const v = valid as Record<string, Json>;
    const withField = (path: string[], value: Json): Buffer => {
      const c = structuredClone(v) as Record<string, Json>;
      let o = c as Record<string, Json>;
      for (const k of path.slice(0, -1)) o = o[k] as Record<string, Json>;
      o[path[path.length - 1]!] = value;
      return Buffer.from(JSON.stringify(c));
    };
    const deep = '['.repeat(200_000) + ']'.repeat(200_000);
    const corpus: [string, Uint8Array][] = [
      ['empty input', Buffer.alloc(0)],
      ['a lone BOM', Buffer.from([0xef, 0xbb, 0xbf])],
      ['null', Buffer.from('null')],
      ['an array', Buffer.from('[]')],
      ['200 000 nested arrays', Buffer.from(deep)],
      ['UTF-16 text', Buffer.from(real.stateBytes.toString('utf8'), 'utf16le')],
      ['the state twice', Buffer.concat([real.stateBytes, real.stateBytes])],
      ['NUL-padded', Buffer.concat([real.stateBytes, Buffer.alloc(16)])],
      ['version 2', withField(['version'], 2)],
      ['version "1"', withField(['version'], '1')],
      ['format of a snapshot', withField(['format'], 'ferry-snapshot')],
      ['memory larger than its maximum', withField(['memory', 'bytes'], 2 ** 33)],
      ['maximum beyond 4 GiB', withField(['memory', 'maxBytes'], 2 ** 32 + WASM_PAGE)],
      ['memory not whole Wasm pages', withField(['memory', 'bytes'], WASM_PAGE + 4096)],
      ['negative memory', withField(['memory', 'bytes'], -WASM_PAGE)],
      ['fractional uptime', withField(['uptimeMs'], 1.5)],
      ['unwind region past the end of memory', withField(['exec', 'unwind'], { ptr: 2 ** 31, size: 2 ** 31 })],
      ['unwind misaligned', withField(['exec', 'unwind'], { ptr: 3, size: 64 })],
      ['100 001 globals', withField(['exec', 'globals'], Array.from({ length: 100_001 }, () => ({ type: 'i32', bits: '00000000' })))],
      ['a global of type v128', withField(['exec', 'globals'], [{ type: 'v128', bits: '0'.repeat(32) }])],
      ['an i64 global with i32 bits', withField(['exec', 'globals'], [{ type: 'i64', bits: '00000000' }])],
      ['a module hash in capitals', withField(['module', 'hash'], 'A'.repeat(64))],
      ['wasi missing', withField(['wasi'], null)],
      ['wasi of another version', withField(['wasi', 'version'], 99)],
      ['an fd of kind socket', withField(['wasi', 'fds'], [{ ...((v['wasi'] as Record<string, Json[]>)['fds']![0] as Record<string, Json>), kind: 'socket' }])],
      ['rights beyond 64 bits', withField(['wasi', 'fds'], [{ ...((v['wasi'] as Record<string, Json[]>)['fds']![0] as Record<string, Json>), rightsBase: '18446744073709551616' }])],
      ['a clock that is not a number', withField(['wasi', 'clocks'], { monotonicNs: 'soon', cputimeNs: '0' })],
      ['__proto__ as the wasi state', Buffer.from(real.stateBytes.toString('utf8').replace('"wasi":', '"wasi_":').replace(/}\s*$/, ',"__proto__":{"polluted":1}}'))],
    ];
    for (const [name, bytes] of corpus) {
      assert.equal(load(bytes), 'refused', name);
    }
    assert.equal(({} as Record<string, unknown>)['polluted'], undefined, 'no prototype was polluted');
  });

  test('validateWasiState: random JSON and mutations of a real WASI state', { timeout: 20_000 }, () => {
    const wasi: Json = (valid as Record<string, Json>)['wasi']!;
    const check = (x: unknown): void => {
      try {
        const w = validateWasiState(x);
        assert.equal(JSON.stringify(validateWasiState(JSON.parse(JSON.stringify(w)))), JSON.stringify(w), 'an accepted WASI state survives a round trip');
      } catch (err) {
        assert.ok(err instanceof Error && /^invalid WASI state: \S/.test(err.message), `unexpected ${String(err)}`);
      }
    };
    check(wasi);
    assert.doesNotThrow(() => validateWasiState(wasi), 'the real WASI state is valid');
    fc.assert(fc.property(fc.jsonValue({ maxDepth: 5 }), (x) => check(x)), { numRuns: RUNS });
    fc.assert(
      fc.property(fc.array(mutationArb, { minLength: 1, maxLength: 4 }), (ms) => {
        let x: Json = wasi;
        for (const m of ms) x = mutate(x, m);
        check(x);
      }),
      { numRuns: RUNS * 2 },
    );
  });

  test('validateGuestState reads each field once: a getter cannot swap a checked value', () => {
    const getter = structuredClone(valid) as Record<string, unknown>;
    let reads = 0;
    Object.defineProperty(getter, 'uptimeMs', { get: () => (++reads === 1 ? 5 : -1), enumerable: true });
    const s = validateGuestState(getter);
    assert.equal(s.uptimeMs, 5, 'the value checked is the value kept');
  });
});
