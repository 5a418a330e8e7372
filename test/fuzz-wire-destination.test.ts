// Fuzzing the wire decoder end to end, through a real destination process (`ferry run --incoming
// --insecure`): a fake source does a valid handshake and sends one valid page, then a fuzzed tail —
// frames with a valid CRC (so they reach the message decoders and the stream checks, not just the
// checksum) but random types, flags, lengths and payloads, or raw noise, or a hostile guest state
// followed by COMMIT. The destination must exit non-zero with a message and never run a guest.
// The frame decoder itself is property-tested in test/wire-format.test.ts; this is the whole path.
import { strict as assert } from 'node:assert';
import { crc32 } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import fc from 'fast-check';
import { WIRE_VERSION } from '../src/migration/wire/limits.js';
import { FAKE_MODULE, FAKE_PAGE as PAGE, fakeSource } from './fixtures/migration/fake-source.js';
import { killAll, makeSandbox, startDestination, useFileCache, type FerryProc, type Sandbox } from './fixtures/migration/ferry-procs.js';

useFileCache('fuzz');

/** Every type number the decoder knows, and a few it does not. */
const TYPES = [0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x20, 0x21, 0x22, 0x23, 0x24, 0x30, 0x31, 0x32, 0x00, 0x07, 0x7f, 0xff];

interface FuzzFrame {
  type: number;
  flags: number;
  payload: Uint8Array;
  /** Length field as sent: the real length, or a lie. */
  lengthDelta: number;
}

/** A frame with a correct CRC over whatever the header says (see docs/wire-format.md). */
function rawFrame(f: FuzzFrame): Buffer {
  const header = Buffer.alloc(12);
  header.write('FY', 0, 'latin1');
  header[2] = WIRE_VERSION;
  header[3] = f.type;
  header[4] = f.flags;
  header.writeUInt32LE(Math.max(0, Math.min(0xffffffff, f.payload.length + f.lengthDelta)), 8);
  const body = Buffer.concat([header, f.payload]);
  const trailer = Buffer.alloc(4);
  trailer.writeUInt32LE(crc32(body) >>> 0, 0);
  return Buffer.concat([body, trailer]);
}

/** A PAGES payload with chosen header fields: hostile offsets and counts, short or long data. */
function pagesPayload(offset: bigint, count: number, kind: number, dataLen: number): Uint8Array {
  const h = Buffer.alloc(16);
  h.writeBigUInt64LE(offset, 0);
  h.writeUInt32LE(count >>> 0, 8);
  h[12] = kind;
  return Buffer.concat([h, Buffer.alloc(dataLen, 0xa5)]);
}

const frameArb: fc.Arbitrary<FuzzFrame> = fc.record({
  type: fc.constantFrom(...TYPES),
  flags: fc.oneof({ weight: 8, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: 0, max: 255 }) }),
  payload: fc.oneof(
    fc.uint8Array({ maxLength: 96 }),
    fc
      .record({
        offset: fc.oneof(fc.constantFrom(0n, 4096n, 2n ** 21n, 2n ** 32n, 2n ** 64n - 4096n), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n })),
        count: fc.oneof(fc.constantFrom(0, 1, 2, 1024, 1025, 1 << 20, 0xffffffff), fc.nat()),
        kind: fc.integer({ min: 0, max: 4 }),
        dataLen: fc.constantFrom(0, 1, PAGE - 1, PAGE, 2 * PAGE),
      })
      .map((p) => pagesPayload(p.offset, p.count, p.kind, p.dataLen)),
  ),
  lengthDelta: fc.oneof({ weight: 6, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -8, max: 8 }) }),
});

/**
 * Every case costs a destination process, so a failure is reported as found (endOnFailure), not
 * shrunk: shrinking would outlast the test's time limit and the report would be lost with it.
 * fast-check's own report puts the failing case's error last, after the counterexample, where a
 * CI log cut to its first lines loses it: this one says what went wrong first (the destination's
 * stderr is in that message), then how to replay the case.
 */
function causeFirst<T>(d: fc.RunDetails<T>): void {
  if (!d.failed) return;
  const cause = d.errorInstance instanceof Error ? d.errorInstance.message : String(d.errorInstance);
  throw new Error(`${cause.slice(0, 3000)}\n(fast-check: failed after ${d.numRuns} run(s); replay with seed ${d.seed}, path "${d.counterexamplePath ?? ''}")`);
}

describe('fuzz: hostile streams through a real destination', () => {
  let sb: Sandbox;
  const procs: FerryProc[] = [];
  const tally = { cases: 0, refusedWith: new Map<string, number>() };
  before(() => {
    sb = makeSandbox();
  });
  after(() => {
    killAll(...procs);
    sb.cleanup();
    console.log(`fuzz-wire-destination: ${tally.cases} hostile streams, all refused; first words of the errors: ${JSON.stringify(Object.fromEntries(tally.refusedWith))}`);
  });

  /** Sends the tail, ends both connections, and checks the destination's verdict. */
  async function expectRefused(tail: Buffer[], urgentTail: Buffer[] = []): Promise<void> {
    const { proc: dst, port } = await startDestination(sb, ['--insecure']);
    procs.push(dst);
    const { bulk, urgent } = await fakeSource(port, 'postcopy');
    try {
      // The destination may hang up mid-tail: that is a refusal too, not a test failure.
      for (const b of tail) await bulk.send([b]).catch(() => undefined);
      for (const b of urgentTail) await urgent.send([b]).catch(() => undefined);
      await bulk.close().catch(() => undefined);
      await urgent.close().catch(() => undefined);
      const code = await dst.exitWithin(30_000);
      assert.notEqual(code, 0, `the destination exits non-zero:\n${dst.err}`);
      const m = /incoming migration failed: (.*)/.exec(dst.err);
      assert.ok(m && m[1]!.length > 5, `the destination says why (it exited ${code}${dst.child.signalCode ? `, ${dst.child.signalCode}` : ''}):\n${dst.err}`);
      assert.equal(dst.out, '', 'no guest ran');
      tally.cases++;
      const word = m[1]!.split(/[:\s]/)[0]!;
      tally.refusedWith.set(word, (tally.refusedWith.get(word) ?? 0) + 1);
    } finally {
      bulk.destroy();
      urgent.destroy();
      dst.kill();
    }
  }

  test('random well-checksummed frames after a valid start are refused', { timeout: 60_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(frameArb, { minLength: 1, maxLength: 6 }), fc.array(frameArb, { maxLength: 2 }), async (frames, urgentFrames) => {
        await expectRefused(frames.map(rawFrame), urgentFrames.map(rawFrame));
      }),
      { numRuns: 12, endOnFailure: true, reporter: causeFirst },
    );
  });

  test('raw noise after a valid start is refused', { timeout: 30_000 }, async () => {
    await fc.assert(
      fc.asyncProperty(fc.uint8Array({ minLength: 1, maxLength: 20_000 }), async (noise) => expectRefused([Buffer.from(noise)])),
      { numRuns: 3, endOnFailure: true, reporter: causeFirst },
    );
  });

  test('a hostile guest state followed by COMMIT is refused before anything runs', { timeout: 30_000 }, async () => {
    const states = [
      Buffer.from('{"format":"ferry-guest-state","version":1}'),
      Buffer.from(JSON.stringify({ format: 'ferry-guest-state', version: 1, module: { hash: FAKE_MODULE.hash, size: FAKE_MODULE.bytes.length }, memory: { bytes: 2 ** 33, maxBytes: 2 ** 33 } })),
      Buffer.from('['.repeat(100_000)),
    ];
    for (const state of states) {
      const stateFrame = Buffer.concat([Buffer.alloc(8), state]);
      stateFrame.writeUInt32LE(state.length, 0); // totalBytes, offset 0
      const passEnd = Buffer.alloc(8);
      passEnd.writeUInt32LE(0, 0);
      passEnd.writeUInt32LE(1, 4); // pass 0 carried one page
      await expectRefused([rawFrame({ type: 0x12, flags: 0, payload: passEnd, lengthDelta: 0 }), rawFrame({ type: 0x14, flags: 0, payload: stateFrame, lengthDelta: 0 }), rawFrame({ type: 0x15, flags: 0, payload: new Uint8Array(0), lengthDelta: 0 })]);
    }
  });
});
