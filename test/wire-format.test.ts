import { strict as assert } from 'node:assert';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  ChunkAssembler,
  decodeMessage,
  encodeDiscardRuns,
  encodeFrame,
  encodeMessage,
  encodePages,
  FrameDecoder,
  FrameFlag,
  FrameType,
  MAX_FRAME_PAYLOAD,
  PageFrameChecker,
  WireError,
  type Frame,
  type Message,
} from '../src/migration/wire/index.js';

const sid = Buffer.from('00112233445566778899aabbccddeeff', 'hex');
const page = (fill: number, n = 1) => Buffer.alloc(4096 * n, fill);

const samples: Message[] = [
  { type: 'HELLO', version: 1, channel: 'bulk', sessionId: sid, features: 7 },
  { type: 'HELLO', version: 1, channel: 'urgent', sessionId: sid, features: 0 },
  { type: 'HELLO_ACK', features: 5 },
  { type: 'REFUSE', reason: 'preopen /data is missing on the destination — ünïcode' },
  {
    type: 'SETUP',
    moduleHash: 'ab'.repeat(32),
    moduleSize: 123456,
    memory: { bytes: 65536 * 17, maxBytes: 65536 * 1024 },
    preopens: ['/', '/data', '/tmp/x y'],
    mode: 'postcopy',
  },
  { type: 'SETUP', moduleHash: '00'.repeat(32), moduleSize: 8, memory: { bytes: 0, maxBytes: 0 }, preopens: [], mode: 'precopy' },
  { type: 'SETUP_ACK', needModule: true },
  { type: 'SETUP_ACK', needModule: false },
  { type: 'MODULE', offset: 4096, data: Buffer.from('\0asm\x01\0\0\0') },
  { type: 'PAGES', offset: 8192, count: 2, kind: 'data', data: Buffer.concat([page(1), page(2)]) },
  { type: 'PAGES', offset: 0, count: 1000, kind: 'zero', data: null },
  { type: 'PAGES', offset: 4096 * 5, count: 1, kind: 'untouched', data: null },
  { type: 'GROW', newBytes: 65536 * 3 },
  { type: 'PASS_END', pass: 3, dirtyPages: 12345 },
  { type: 'DISCARD', ranges: [{ offset: 0, count: 1 }, { offset: 8192, count: 10 }] },
  { type: 'DISCARD', ranges: [] },
  { type: 'STATE', totalBytes: 100, offset: 90, data: Buffer.alloc(10, 9) },
  { type: 'SOCKETS', totalBytes: 64, offset: 0, data: Buffer.alloc(64, 0x7b) },
  { type: 'COMMIT' },
  { type: 'RUNNING', bulkBufferBytes: 1048576 },
  { type: 'PAGE_REQUEST', offset: 4096 * 77, count: 4 },
  { type: 'RECEIVED_SET', set: { encoding: 'bitmap', startPage: 8, pageCount: 12, bits: Buffer.from([0xff, 0x0a]) } },
  { type: 'RECEIVED_SET', set: { encoding: 'ranges', ranges: [{ offset: 4096, count: 3 }] } },
  { type: 'DIGEST', pageCount: 42, hex: 'cd'.repeat(32) },
  { type: 'FAULT_STATS', faults: 7, pagesRequested: 3, pagesPushed: 1000, latencyUs: { p50: 12.5, p99: 800.1, max: 1200 }, guestBlockedUs: 4000, durationMs: 900 },
  { type: 'DONE' },
  { type: 'ERROR', code: 'E_MODULE_MISMATCH', message: 'hash differs' },
  { type: 'PING', nonce: 0xffffffff },
  { type: 'PONG', nonce: 1 },
];

function decodeAll(bytes: Buffer, split: number[] = []): Frame[] {
  const d = new FrameDecoder();
  const out: Frame[] = [];
  let at = 0;
  for (const s of [...split, bytes.length]) {
    out.push(...d.push(bytes.subarray(at, s)));
    at = s;
  }
  d.end();
  return out;
}

const stream = Buffer.concat(samples.flatMap((m) => encodeMessage(m)));

describe('wire: messages', () => {
  test('every message type round-trips through encode → frame decoder → decodeMessage', () => {
    const frames = decodeAll(stream);
    assert.equal(frames.length, samples.length);
    const seen = new Set<string>();
    frames.forEach((f, i) => {
      assert.deepEqual(decodeMessage(f), samples[i]);
      seen.add(samples[i]!.type);
    });
    assert.deepEqual([...seen].sort(), Object.keys(FrameType).sort(), 'samples cover every frame type');
  });

  test('frame offsets are absolute stream offsets', () => {
    const frames = decodeAll(stream);
    let at = 0;
    for (const [i, f] of frames.entries()) {
      assert.equal(f.offset, at);
      at += Buffer.concat(encodeMessage(samples[i]!)).length;
    }
  });

  test('byte-by-byte feeding gives the same frames', () => {
    const d = new FrameDecoder();
    const out: Frame[] = [];
    for (let i = 0; i < stream.length; i++) out.push(...d.push(stream.subarray(i, i + 1)));
    d.end();
    assert.deepEqual(out.map(decodeMessage), samples);
  });

  test('random splits give the same frames', () => {
    fc.assert(
      fc.property(fc.uniqueArray(fc.integer({ min: 1, max: stream.length - 1 }), { maxLength: 40 }), (cuts) => {
        const frames = decodeAll(stream, [...cuts].sort((a, b) => a - b));
        assert.deepEqual(frames.map(decodeMessage), samples);
      }),
      { numRuns: 200 },
    );
  });

  test('page data is sent as a view (zero-copy) and encoders reject bad input', () => {
    const data = page(7, 2);
    const parts = encodePages(0, 2, 'data', data);
    assert.ok(parts.includes(data));
    assert.throws(() => encodePages(1, 1, 'data', page(0)), /page-aligned/);
    assert.throws(() => encodePages(0, 2, 'data', page(0)), /needs 8192 bytes/);
    assert.throws(() => encodePages(0, 0, 'zero'), /count 0/);
    assert.throws(() => encodePages(0, 2000, 'data', page(0, 2000)), /count 2000/);
    assert.throws(() => encodeMessage({ type: 'GROW', newBytes: 5000 }), RangeError);
    assert.throws(() => encodeMessage({ type: 'DISCARD', ranges: [{ offset: 8192, count: 1 }, { offset: 4096, count: 1 }] }), /ascend/);
    assert.throws(() => encodeMessage({ type: 'ERROR', code: 'lower', message: '' }), RangeError);
    assert.throws(() => encodeMessage({ type: 'REFUSE', reason: 'x'.repeat(5000) }), /limit 4096/);
    assert.throws(() => encodeFrame(FrameType.STATE, Buffer.alloc(MAX_FRAME_PAYLOAD + 1)), /exceeds/);
  });

  test('a DISCARD of page runs is the same frame as of ranges, above 4 GiB offsets refused alike', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(fc.integer({ min: 0, max: 64 }), fc.integer({ min: 1, max: 5000 })), { maxLength: 40 }), fc.boolean(), (steps, checksum) => {
        // Ascending runs from gaps and lengths; the last page below 4 GiB.
        const runs: Array<[number, number]> = [];
        let at = 0;
        for (const [gap, len] of steps) {
          if (at + gap + len > 2 ** 20) break;
          runs.push([at + gap, at + gap + len]);
          at += gap + len;
        }
        const ranges = runs.map(([s, e]) => ({ offset: s * 4096, count: e - s }));
        assert.deepEqual(Buffer.concat(encodeDiscardRuns(runs, { checksum })), Buffer.concat(encodeMessage({ type: 'DISCARD', ranges }, { checksum })));
      }),
      { numRuns: 200 },
    );
    assert.throws(() => encodeDiscardRuns([[2, 3], [1, 2]]), /run 1: .*ascend/);
    assert.throws(() => encodeDiscardRuns([[4, 4]]), /run 0: count 0/);
    assert.throws(() => encodeDiscardRuns([[2 ** 20 - 1, 2 ** 20 + 1]]), /run 0: .*beyond 4 GiB/);
  });
});

describe('wire: errors name the byte offset', () => {
  const second = Buffer.concat(encodeMessage(samples[0]!)).length; // offset of frame #2

  test('unknown type', () => {
    const bad = Buffer.from(stream);
    bad[second + 3] = 0x7f;
    assert.throws(() => decodeAll(bad), (e: unknown) => e instanceof WireError && e.code === 'BAD_TYPE' && e.message === `bad frame at byte ${second}: unknown type 0x7f`);
  });

  test('corrupted payload byte → checksum error at that frame', () => {
    const bad = Buffer.from(stream);
    bad[second + 13]! ^= 1;
    assert.throws(() => decodeAll(bad), (e: unknown) => e instanceof WireError && e.code === 'BAD_CRC' && e.offset === second);
  });

  test('hostile length is refused before allocation', () => {
    const h = Buffer.from(encodeFrame(FrameType.PING, Buffer.alloc(4)));
    h.writeUInt32LE(0xffffffff, 8);
    const d = new FrameDecoder();
    assert.throws(() => d.push(h.subarray(0, 12)), (e: unknown) => e instanceof WireError && e.code === 'TOO_LARGE' && /4294967295/.test(e.message));
    assert.throws(() => d.push(Buffer.alloc(1)), WireError, 'decoder stays failed');
  });

  test('truncation at every point names the offset and the frame start', () => {
    const one = Buffer.concat(encodeMessage(samples[9]!)); // a PAGES frame
    const full = Buffer.concat([Buffer.concat(encodeMessage(samples[0]!)), one]);
    for (const cut of [second + 1, second + 11, second + 12, second + 100, full.length - 1]) {
      const d = new FrameDecoder();
      d.push(full.subarray(0, cut));
      assert.throws(
        () => d.end(),
        (e: unknown) => e instanceof WireError && e.code === 'TRUNCATED' && e.offset === cut && e.message.startsWith(`truncated stream at byte ${cut}:`) && e.message.includes(`starts at byte ${second}`),
      );
    }
    const d = new FrameDecoder();
    d.push(full);
    d.end(); // a clean boundary is fine
  });

  test('payload field errors name the frame offset', () => {
    const parts = encodePages(0, 1, 'zero');
    const frame = Buffer.concat(parts);
    const payload = Buffer.from(frame.subarray(12, frame.length - 4));
    payload[12] = 9; // unknown kind
    const bad = encodeFrame(FrameType.PAGES, payload);
    const frames = decodeAll(Buffer.concat([Buffer.concat(encodeMessage(samples[0]!)), bad]));
    assert.throws(() => decodeMessage(frames[1]!), (e: unknown) => e instanceof WireError && e.code === 'BAD_MESSAGE' && e.message.startsWith(`bad message at byte ${second}: PAGES`));
  });
});

describe('wire: NO_CRC frames (TLS channels)', () => {
  const msg: Message = { type: 'PAGES', offset: 4096, count: 1, kind: 'data', data: page(3) };
  const unchecked = Buffer.concat(encodeMessage(msg, { checksum: false }));

  test('round-trip on a decoder that reads TLS; flag and zero trailer on the wire', () => {
    assert.equal(unchecked[4], FrameFlag.NO_CRC);
    assert.equal(unchecked.readUInt32LE(unchecked.length - 4), 0);
    const d = new FrameDecoder({ acceptUnchecked: true });
    const [f] = d.push(unchecked);
    assert.equal(f!.flags, FrameFlag.NO_CRC);
    assert.deepEqual(decodeMessage(f!), msg);
    // Checksummed frames are still verified there.
    const checked = Buffer.from(Buffer.concat(encodeMessage(msg)));
    checked[30]! ^= 1;
    assert.throws(() => new FrameDecoder({ acceptUnchecked: true }).push(checked), (e: unknown) => e instanceof WireError && e.code === 'BAD_CRC');
  });

  test('refused on a plain channel, and with a non-zero trailer', () => {
    assert.throws(() => new FrameDecoder().push(unchecked), (e: unknown) => e instanceof WireError && e.code === 'BAD_FLAGS' && /not TLS-protected/.test(e.message));
    const bad = Buffer.from(unchecked);
    bad[bad.length - 1] = 1;
    assert.throws(() => new FrameDecoder({ acceptUnchecked: true }).push(bad), (e: unknown) => e instanceof WireError && e.code === 'BAD_CRC');
  });
});

describe('wire: fuzz', () => {
  function mustBeWireError(fn: () => void): void {
    try {
      fn();
    } catch (e) {
      if (!(e instanceof WireError)) throw e;
    }
  }
  function decodeEverything(bytes: Uint8Array, cuts: number[], acceptUnchecked = false): void {
    const d = new FrameDecoder({ acceptUnchecked });
    let at = 0;
    for (const c of [...cuts.filter((x) => x <= bytes.length).sort((a, b) => a - b), bytes.length]) {
      for (const f of d.push(bytes.subarray(at, c))) {
        assert.ok(f.payload.length <= MAX_FRAME_PAYLOAD);
        mustBeWireError(() => decodeMessage(f));
      }
      at = c;
    }
    d.end();
  }

  test('random bytes: only WireErrors', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 2000 }), fc.array(fc.nat(2000), { maxLength: 5 }), fc.boolean(), (bytes, cuts, tls) => {
        mustBeWireError(() => decodeEverything(bytes, cuts, tls));
      }),
      { numRuns: 2000 },
    );
  });

  test('random mutations of a valid stream: only WireErrors, or valid messages', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ at: fc.nat(stream.length - 1), v: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 6 }),
        fc.nat(stream.length),
        fc.array(fc.nat(stream.length), { maxLength: 4 }),
        (muts, truncate, cuts) => {
          const bad = Buffer.from(stream.subarray(0, Math.max(1, truncate)));
          for (const m of muts) if (m.at < bad.length) bad[m.at] = m.v;
          mustBeWireError(() => decodeEverything(bad, cuts));
        },
      ),
      { numRuns: 2000 },
    );
  });

  test('valid CRC around hostile payloads: decoders only throw WireError', () => {
    const types = Object.values(FrameType);
    fc.assert(
      fc.property(fc.constantFrom(...types), fc.uint8Array({ maxLength: 300 }), (type, payload) => {
        const frame = encodeFrame(type, Buffer.from(payload));
        mustBeWireError(() => decodeMessage(decodeAll(frame)[0]!));
      }),
      { numRuns: 3000 },
    );
  });

  test('hostile page runs and lengths against the checker: only WireErrors, state consistent', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.oneof(
            fc.record({ t: fc.constant('p' as const), offset: fc.oneof(fc.nat(1 << 22), fc.constant(2 ** 53 - 1), fc.integer({ min: -5, max: 5 })), count: fc.integer({ min: -1, max: 300 }), kind: fc.constantFrom('data' as const, 'zero' as const, 'untouched' as const), len: fc.nat(3) }),
            fc.record({ t: fc.constant('g' as const), newBytes: fc.integer({ min: 0, max: 1 << 23 }) }),
            fc.record({ t: fc.constant('e' as const), pass: fc.nat(3), dirty: fc.nat(300) }),
          ),
          { maxLength: 30 },
        ),
        (ops) => {
          const c = new PageFrameChecker({ bytes: 1 << 20, maxBytes: 1 << 22 });
          for (const op of ops) {
            const before = c.pagesInPass;
            try {
              if (op.t === 'p') {
                const data = op.kind === 'data' ? Buffer.alloc(Math.max(0, op.count) * 4096 + (op.len === 3 ? 1 : 0)) : null;
                c.checkPages({ type: 'PAGES', offset: op.offset, count: op.count, kind: op.kind, data }, 0);
                assert.ok(op.offset % 4096 === 0 && op.count > 0 && op.offset + op.count * 4096 <= c.bytes);
              } else if (op.t === 'g') c.checkGrow({ type: 'GROW', newBytes: op.newBytes }, 0);
              else c.checkPassEnd({ type: 'PASS_END', pass: op.pass, dirtyPages: op.dirty }, 0);
            } catch (e) {
              if (!(e instanceof WireError)) throw e;
              if (op.t === 'p') assert.equal(c.pagesInPass, before, 'a refused run is not recorded');
            }
            assert.ok(c.bytes <= c.maxBytes);
          }
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe('wire: PageFrameChecker', () => {
  const pages = (offset: number, count: number, kind: 'data' | 'zero' | 'untouched' = 'data'): Extract<Message, { type: 'PAGES' }> => ({
    type: 'PAGES',
    offset,
    count,
    kind,
    data: kind === 'data' ? page(0, count) : null,
  });

  test('geometry, growth and per-pass duplicates', () => {
    const c = new PageFrameChecker({ bytes: 65536, maxBytes: 65536 * 4 });
    c.checkPages(pages(0, 16), 100);
    assert.throws(() => c.checkPages(pages(61440, 2), 200), (e: unknown) => e instanceof WireError && e.code === 'BAD_PAGES' && /bad page frame at byte 200: .*outside memory of 65536/.test(e.message));
    assert.throws(() => c.checkPages(pages(4096 * 3, 1, 'zero'), 300), /page 0x3000 sent twice in pass 0/);
    assert.throws(() => c.checkPages(pages(100, 1), 0), /page-aligned/);
    assert.throws(() => c.checkPages({ ...pages(0, 1), data: Buffer.alloc(10) }, 0), /carries 10 bytes/);
    assert.throws(() => c.checkGrow({ type: 'GROW', newBytes: 65536 * 5 }, 0), /exceeds maxBytes/);
    assert.throws(() => c.checkGrow({ type: 'GROW', newBytes: 0 }, 0), /shrinks/);
    c.checkGrow({ type: 'GROW', newBytes: 65536 * 2 }, 0);
    c.checkPages(pages(65536, 16, 'untouched'), 400);
    assert.throws(() => c.checkPassEnd({ type: 'PASS_END', pass: 0, dirtyPages: 31 }, 500), /carried 31 pages, received 32/);
    assert.throws(() => c.checkPassEnd({ type: 'PASS_END', pass: 1, dirtyPages: 32 }, 500), /expected 0/);
    c.checkPassEnd({ type: 'PASS_END', pass: 0, dirtyPages: 32 }, 500);
    c.checkPages(pages(0, 1), 600); // a new pass may resend a page
    assert.equal(c.pass, 1);
  });

  test('chunk assembler: contiguous chunks only, total fixed', () => {
    const a = new ChunkAssembler('STATE', 10);
    a.add(0, Buffer.alloc(4, 1), 0);
    assert.throws(() => a.add(5, Buffer.alloc(1), 77), /out-of-order frame at byte 77: STATE chunk: chunk at 5 but 4 bytes/);
    assert.throws(() => a.add(4, Buffer.alloc(1), 78, 11), /total 11 differs/);
    assert.throws(() => a.result(), /4 of 10 bytes/);
    a.add(4, Buffer.alloc(6, 2), 0);
    assert.deepEqual([...a.result()], [1, 1, 1, 1, 2, 2, 2, 2, 2, 2]);
    assert.throws(() => a.add(10, Buffer.alloc(1), 0), /after the blob was complete/);
  });
});
