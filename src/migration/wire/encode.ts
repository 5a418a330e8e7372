// Message → frame parts. Each encoder validates its input and throws RangeError on a value the
// wire cannot carry; page, module and state bytes are passed through as views, never copied.
import { FieldWriter } from './codec.js';
import { encodeFrameParts, type FrameEncodeOptions } from './frame.js';
import { MAX_DATA_RUN_PAGES, MAX_MEMORY_BYTES, MAX_MODULE_BYTES, MAX_PREOPENS, MAX_REQUEST_PAGES, MAX_STATE_BYTES, PAGE_SIZE } from './limits.js';
import { FrameType } from './types.js';
import { SESSION_ID_BYTES, type Message, type PageKind } from './message-types.js';
import {
  CHANNELS,
  ERROR_CODE_RE,
  MODES,
  PAGE_KINDS,
  checkBitmap,
  checkChunk,
  checkGeometry,
  checkModuleSize,
  checkRun,
  indexOf,
  putRange,
  raise,
  writeRanges,
} from './field-checks.js';

const EMPTY = Buffer.alloc(0);

/** Frame parts for a message; PAGES/MODULE/STATE data are passed through as views, never copied. */
export function encodeMessage(msg: Message, opts: FrameEncodeOptions = {}): Buffer[] {
  const t = FrameType[msg.type];
  const w = new FieldWriter();
  switch (msg.type) {
    case 'HELLO':
      if (msg.sessionId.length !== SESSION_ID_BYTES) throw new RangeError(`HELLO.sessionId must be ${SESSION_ID_BYTES} bytes`);
      w.u16(msg.version, 'HELLO.version').u8(indexOf(CHANNELS, msg.channel, 'HELLO.channel'), 'HELLO.channel').u8(0, 'reserved');
      w.u32(msg.features, 'HELLO.features').bytes(msg.sessionId);
      break;
    case 'HELLO_ACK':
      w.u32(msg.features, 'HELLO_ACK.features');
      break;
    case 'REFUSE':
      w.text(msg.reason, 'REFUSE.reason');
      break;
    case 'SETUP': {
      if (!/^[0-9a-f]{64}$/.test(msg.moduleHash)) throw new RangeError('SETUP.moduleHash must be 64 lowercase hex digits (sha256)');
      checkModuleSize(msg.moduleSize, (d) => new RangeError(`SETUP.${d}`));
      checkGeometry(msg.memory.bytes, msg.memory.maxBytes, (d) => new RangeError(`SETUP.${d}`));
      if (msg.preopens.length > MAX_PREOPENS) throw new RangeError(`SETUP.preopens: at most ${MAX_PREOPENS}`);
      w.bytes(Buffer.from(msg.moduleHash, 'hex')).u32(msg.moduleSize, 'SETUP.moduleSize');
      w.u64(msg.memory.bytes, 'SETUP.memory.bytes').u64(msg.memory.maxBytes, 'SETUP.memory.maxBytes');
      w.u8(indexOf(MODES, msg.mode, 'SETUP.mode'), 'SETUP.mode').u8(0, 'reserved').u16(msg.preopens.length, 'SETUP.preopens.length');
      for (const p of msg.preopens) {
        if (p.length === 0) throw new RangeError('SETUP.preopens: empty path');
        w.text(p, 'SETUP.preopens[]');
      }
      break;
    }
    case 'SETUP_ACK':
      w.u8(msg.needModule ? 1 : 0, 'SETUP_ACK.needModule');
      break;
    case 'MODULE':
      checkChunk('MODULE', msg.offset, msg.data.length, MAX_MODULE_BYTES, (d) => new RangeError(d));
      return encodeFrameParts(t, [w.u32(msg.offset, 'MODULE.offset').done(), msg.data], opts);
    case 'PAGES':
      return encodePages(msg.offset, msg.count, msg.kind, msg.data, opts);
    case 'GROW':
      checkGeometry(msg.newBytes, MAX_MEMORY_BYTES, (d) => new RangeError(`GROW.${d.replace('bytes', 'newBytes')}`));
      w.u64(msg.newBytes, 'GROW.newBytes');
      break;
    case 'PASS_END':
      w.u32(msg.pass, 'PASS_END.pass').u32(msg.dirtyPages, 'PASS_END.dirtyPages');
      break;
    case 'DISCARD':
      writeRanges(w, msg.ranges, 'DISCARD');
      break;
    case 'STATE':
    case 'SOCKETS':
      if (!Number.isInteger(msg.totalBytes) || msg.totalBytes < 0 || msg.totalBytes > MAX_STATE_BYTES) {
        throw new RangeError(`${msg.type}.totalBytes must be in 0..${MAX_STATE_BYTES}`);
      }
      checkChunk(msg.type, msg.offset, msg.data.length, msg.totalBytes, (d) => new RangeError(d));
      return encodeFrameParts(t, [w.u32(msg.totalBytes, `${msg.type}.totalBytes`).u32(msg.offset, `${msg.type}.offset`).done(), msg.data], opts);
    case 'COMMIT':
    case 'DONE':
      return encodeFrameParts(t, EMPTY, opts);
    case 'RUNNING':
      w.u32(msg.bulkBufferBytes, 'RUNNING.bulkBufferBytes');
      break;
    case 'PAGE_REQUEST':
      checkRun(msg.offset, msg.count, MAX_REQUEST_PAGES, (d) => new RangeError(`PAGE_REQUEST: ${d}`));
      w.u64(msg.offset, 'PAGE_REQUEST.offset').u32(msg.count, 'PAGE_REQUEST.count');
      break;
    case 'RECEIVED_SET':
      if (msg.set.encoding === 'bitmap') {
        const { startPage, pageCount, bits } = msg.set;
        checkBitmap(startPage, pageCount, bits, (d) => new RangeError(`RECEIVED_SET: ${d}`));
        w.u8(0, 'RECEIVED_SET.encoding').u8(0, 'r').u16(0, 'r').u32(startPage, 'startPage').u32(pageCount, 'pageCount').bytes(bits);
      } else {
        w.u8(1, 'RECEIVED_SET.encoding').u8(0, 'r').u16(0, 'r');
        writeRanges(w, msg.set.ranges, 'RECEIVED_SET');
      }
      break;
    case 'DIGEST':
      if (!/^[0-9a-f]{64}$/.test(msg.hex)) throw new RangeError('DIGEST.hex must be 64 lowercase hex digits');
      w.u32(msg.pageCount, 'DIGEST.pageCount').bytes(Buffer.from(msg.hex, 'hex'));
      break;
    case 'FAULT_STATS':
      w.u64(msg.faults, 'FAULT_STATS.faults')
        .u64(msg.pagesRequested, 'FAULT_STATS.pagesRequested')
        .u64(msg.pagesPushed, 'FAULT_STATS.pagesPushed')
        .u64(Math.round(msg.latencyUs.p50 * 10), 'FAULT_STATS.latencyUs.p50')
        .u64(Math.round(msg.latencyUs.p99 * 10), 'FAULT_STATS.latencyUs.p99')
        .u64(Math.round(msg.latencyUs.max * 10), 'FAULT_STATS.latencyUs.max')
        .u64(Math.round(msg.guestBlockedUs), 'FAULT_STATS.guestBlockedUs')
        .u64(Math.round(msg.durationMs), 'FAULT_STATS.durationMs');
      break;
    case 'ERROR':
      if (!ERROR_CODE_RE.test(msg.code)) throw new RangeError(`ERROR.code must match ${ERROR_CODE_RE}`);
      w.text(msg.code, 'ERROR.code').text(msg.message, 'ERROR.message');
      break;
    case 'PING':
    case 'PONG':
      w.u32(msg.nonce, `${msg.type}.nonce`);
      break;
  }
  return encodeFrameParts(t, w.done(), opts);
}

/**
 * Frame parts for one run of pages. For `data`, `data` must hold exactly count*4096 bytes and is
 * sent as a view (zero-copy): do not modify it until the frame is written.
 */
export function encodePages(offset: number, count: number, kind: PageKind, data: Uint8Array | null = null, opts: FrameEncodeOptions = {}): Buffer[] {
  const maxCount = kind === 'data' ? MAX_DATA_RUN_PAGES : MAX_MEMORY_BYTES / PAGE_SIZE;
  checkRun(offset, count, maxCount, (d) => new RangeError(`PAGES: ${d}`));
  const header = Buffer.allocUnsafe(16);
  header.writeBigUInt64LE(BigInt(offset), 0);
  header.writeUInt32LE(count, 8);
  header.writeUInt8(indexOf(PAGE_KINDS, kind, 'PAGES.kind'), 12);
  header.fill(0, 13, 16);
  if (kind === 'data') {
    if (!data || data.length !== count * PAGE_SIZE) {
      throw new RangeError(`PAGES: a data run of ${count} pages needs ${count * PAGE_SIZE} bytes, got ${data ? data.length : 'none'}`);
    }
    const view = Buffer.isBuffer(data) ? data : Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    return encodeFrameParts(FrameType.PAGES, [header, view], opts);
  }
  if (data && data.length !== 0) throw new RangeError(`PAGES: a ${kind} run carries no data`);
  return encodeFrameParts(FrameType.PAGES, header, opts);
}

/**
 * Frame parts for a DISCARD of page runs [first, end), ascending: the frame encodeMessage makes
 * of the same ranges, without an object per run. The last DISCARD of a guest that writes at
 * random holds 5-25 thousand runs and is made inside the downtime, where allocating a range
 * object per run cost milliseconds here.
 */
export function encodeDiscardRuns(runs: ReadonlyArray<readonly [number, number]>, opts: FrameEncodeOptions = {}): Buffer[] {
  const payload = Buffer.allocUnsafe(4 + 12 * runs.length);
  const view = new DataView(payload.buffer, payload.byteOffset, payload.length);
  view.setUint32(0, runs.length, true);
  let i = 0;
  let end = 0;
  const fail = (d: string) => new RangeError(`DISCARD: run ${i}: ${d}`);
  for (let at = 4; i < runs.length; i++, at += 12) {
    const run = runs[i]!;
    const offset = run[0] * PAGE_SIZE;
    checkRun(offset, run[1] - run[0], MAX_MEMORY_BYTES / PAGE_SIZE, fail);
    if (offset < end) raise(fail, `at ${offset} it overlaps or precedes the previous one (runs must ascend)`);
    end = run[1] * PAGE_SIZE;
    putRange(view, at, offset, run[1] - run[0]);
  }
  return encodeFrameParts(FrameType.DISCARD, payload, opts);
}
