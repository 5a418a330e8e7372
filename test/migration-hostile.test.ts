// Hostile migration streams against a real `ferry run --incoming` destination. The "source" here is
// a FAULT-INJECTION FAKE: it connects with the real transport (connect(), plain TCP so frame CRCs
// are in force), does a valid handshake and a valid first page, then sends one malformed thing.
// The destination must refuse with an error naming the byte offset of the bad frame, exit
// non-zero, and never run the guest (no guest output at all).
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import type { FramedChannel } from '../src/migration/transport/index.js';
import { CHANNEL_PREFACE_BYTES, encodeFrameParts, encodePages, FrameType } from '../src/migration/wire/index.js';
import { FAKE_MEMORY as MEMORY, FAKE_PAGE as PAGE, fakeSource } from './fixtures/migration/fake-source.js';
import { killAll, makeSandbox, startDestination, useFileCache, type FerryProc, type Sandbox } from './fixtures/migration/ferry-procs.js';

useFileCache('migration-hostile');

/** A PAGES frame with a valid CRC whose header fields are chosen by the test. */
function rawPagesFrame(offset: number, count: number, kindByte: number, data: Buffer): Buffer[] {
  const header = Buffer.alloc(16);
  header.writeBigUInt64LE(BigInt(offset), 0);
  header.writeUInt32LE(count, 8);
  header.writeUInt8(kindByte, 12);
  return encodeFrameParts(FrameType.PAGES, [header, data]);
}

interface Case {
  name: string;
  /** Sends the hostile bytes; returns the byte offset the error must name and what it must say. */
  inject(bulk: FramedChannel): Promise<{ offset: number; says: RegExp }>;
}

/** Where the next frame starts in the frame stream: the connection's bytes less its channel preface. */
const streamOffset = (bulk: FramedChannel) => bulk.bytesSent - CHANNEL_PREFACE_BYTES;

const cases: Case[] = [
  {
    name: 'flipped bytes in a page frame (CRC)',
    async inject(bulk) {
      const at = streamOffset(bulk);
      const parts = encodePages(PAGE, 1, 'data', Buffer.alloc(PAGE, 0x11));
      const frame = Buffer.concat(parts);
      frame[12 + 16 + 100]! ^= 0xff; // one byte of page data, after the header was checksummed
      await bulk.send([frame]);
      return { offset: at, says: /CRC|checksum/i };
    },
  },
  {
    name: 'truncation in the middle of a frame',
    async inject(bulk) {
      const at = streamOffset(bulk);
      const frame = Buffer.concat(encodePages(PAGE, 1, 'data', Buffer.alloc(PAGE, 0x22)));
      await bulk.send([frame.subarray(0, 1000)]);
      await bulk.close();
      return { offset: at, says: /truncated|end of stream/i };
    },
  },
  {
    name: 'page offset outside the memory',
    async inject(bulk) {
      const at = streamOffset(bulk);
      await bulk.sendPages(MEMORY.bytes + 16 * PAGE, 1, 'data', Buffer.alloc(PAGE, 0x33));
      return { offset: at, says: /outside memory/i };
    },
  },
  {
    name: 'overlapping frames in one pass',
    async inject(bulk) {
      await bulk.sendPages(4 * PAGE, 4, 'data', Buffer.alloc(4 * PAGE, 0x44));
      const at = streamOffset(bulk);
      await bulk.sendPages(6 * PAGE, 4, 'data', Buffer.alloc(4 * PAGE, 0x45)); // pages 6, 7 again
      return { offset: at, says: /twice in pass 0/i };
    },
  },
  {
    name: 'unknown page kind',
    async inject(bulk) {
      const at = streamOffset(bulk);
      await bulk.send(rawPagesFrame(PAGE, 1, 9, Buffer.alloc(0)));
      return { offset: at, says: /unknown page kind/i };
    },
  },
  {
    name: 'a SOCKETS image that is not one (Feature.SOCKETS)',
    async inject(bulk) {
      const at = streamOffset(bulk);
      const data = Buffer.from('{"version":1,"listeners":{"x":{}},"connections":{}}');
      await bulk.sendMessage({ type: 'SOCKETS', totalBytes: data.length, offset: 0, data });
      return { offset: at, says: /SOCKETS: guest fd "x" is not a number/ };
    },
  },
];

describe('hostile streams are refused by the destination (fault-injection fake source)', () => {
  let sb: Sandbox;
  const procs: FerryProc[] = [];
  before(() => {
    sb = makeSandbox();
  });
  after(() => {
    killAll(...procs);
    sb.cleanup();
  });

  for (const c of cases) {
    test(c.name, async () => {
      const { proc: dst, port } = await startDestination(sb, ['--insecure']);
      procs.push(dst);
      const { bulk, urgent } = await fakeSource(port, 'precopy');
      const { offset, says } = await c.inject(bulk);
      const code = await dst.exitWithin(60_000);
      bulk.destroy();
      urgent.destroy();
      assert.notEqual(code, 0, 'the destination exits non-zero');
      assert.match(dst.err, /incoming migration failed/);
      assert.match(dst.err, says, `the error says what is wrong:\n${dst.err}`);
      // The error names the absolute stream offset of the bad frame (HELLO included: it is the
      // same TCP stream), e.g. "bad frame at byte 123: ..." or "... frame that starts at byte 123".
      assert.match(dst.err, new RegExp(`(at|starts at) byte ${offset}\\b`), `the error names byte ${offset}:\n${dst.err}`);
      assert.equal(dst.out, '', 'no guest output: the half-received guest never ran');
    });
  }
});
