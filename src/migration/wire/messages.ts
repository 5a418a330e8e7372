// Typed messages and their payload codecs. Each decoder validates every field (range, alignment,
// reserved bytes, exact length) and throws WireError('BAD_MESSAGE') naming the frame's offset;
// each encoder validates its input and throws RangeError on a value the wire cannot carry.
// Byte layouts are documented in docs/wire-format.md.
import { FieldReader, FieldWriter } from './codec.js';
import { WireError } from './errors.js';
import { encodeFrameParts, type Frame, type FrameEncodeOptions } from './frame.js';
import {
  MAX_CHUNK_BYTES,
  MAX_DATA_RUN_PAGES,
  MAX_MEMORY_BYTES,
  MAX_MODULE_BYTES,
  MAX_PREOPENS,
  MAX_REQUEST_PAGES,
  MAX_STATE_BYTES,
  PAGE_SIZE,
  WASM_PAGE_SIZE,
} from './limits.js';
import { FrameType, frameTypeName, type FrameTypeName } from './types.js';

export type ChannelKind = 'bulk' | 'urgent';
export type MigrationMode = 'precopy' | 'postcopy';
/** data: bytes follow; zero: the pages are all zero; untouched: never written on the source. */
export type PageKind = 'data' | 'zero' | 'untouched';

/** A run of whole pages: `offset` in bytes (page-aligned), `count` in pages. */
export interface PageRange {
  offset: number;
  count: number;
}

/** Feature bits carried in HELLO; HELLO_ACK answers with the subset the listener accepts. */
export const Feature = {
  POSTCOPY: 1 << 0,
  RECOVERY: 1 << 1,
  DIGEST: 1 << 2,
  /**
   * The postcopy fault path runs on native threads over a data plane connection of its own (see
   * docs/wire-format.md "Native data plane"). Offered and granted only when FERRY_NATIVE_FAULTS=1
   * on that side; never part of ALL_FEATURES.
   */
  NATIVE_FAULTS: 1 << 3,
} as const;
export const ALL_FEATURES = Feature.POSTCOPY | Feature.RECOVERY | Feature.DIGEST;

export const SESSION_ID_BYTES = 16;

export type ReceivedSet =
  | { encoding: 'bitmap'; startPage: number; pageCount: number; bits: Buffer }
  | { encoding: 'ranges'; ranges: PageRange[] };

export type Message =
  | { type: 'HELLO'; version: number; channel: ChannelKind; sessionId: Buffer; features: number }
  | { type: 'HELLO_ACK'; features: number }
  | { type: 'REFUSE'; reason: string }
  | {
      type: 'SETUP';
      moduleHash: string;
      moduleSize: number;
      memory: { bytes: number; maxBytes: number };
      preopens: string[];
      mode: MigrationMode;
    }
  | { type: 'SETUP_ACK'; needModule: boolean }
  | { type: 'MODULE'; offset: number; data: Buffer }
  | { type: 'PAGES'; offset: number; count: number; kind: PageKind; data: Buffer | null }
  | { type: 'GROW'; newBytes: number }
  | { type: 'PASS_END'; pass: number; dirtyPages: number }
  | { type: 'DISCARD'; ranges: PageRange[] }
  | { type: 'STATE'; totalBytes: number; offset: number; data: Buffer }
  | { type: 'COMMIT' }
  /** bulkBufferBytes: the kernel buffers the destination gave its end of the bulk connection for the postcopy stream (0: unchanged); the source sizes its end alike. */
  | { type: 'RUNNING'; bulkBufferBytes: number }
  | { type: 'PAGE_REQUEST'; offset: number; count: number }
  | { type: 'RECEIVED_SET'; set: ReceivedSet }
  | { type: 'DIGEST'; pageCount: number; hex: string }
  | { type: 'DONE' }
  /** Destination → source after postcopy: what only the destination sees (its guest's faults). */
  | {
      type: 'FAULT_STATS';
      faults: number;
      pagesRequested: number;
      pagesPushed: number;
      /** Fault latency in microseconds (event → page placed), rounded to 0.1 µs on the wire. */
      latencyUs: { p50: number; p99: number; max: number };
      guestBlockedUs: number;
      durationMs: number;
    }
  | { type: 'ERROR'; code: string; message: string }
  | { type: 'PING'; nonce: number }
  | { type: 'PONG'; nonce: number };

export type MessageOf<T extends Message['type']> = Extract<Message, { type: T }>;

const PAGE_KINDS: readonly PageKind[] = ['data', 'zero', 'untouched'];
const MODES: readonly MigrationMode[] = ['precopy', 'postcopy'];
const CHANNELS: readonly ChannelKind[] = ['bulk', 'urgent'];
const ERROR_CODE_RE = /^[A-Z][A-Z0-9_]{0,63}$/;
const EMPTY = Buffer.alloc(0);

// ---------------------------------------------------------------- encoding

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
      if (!Number.isInteger(msg.totalBytes) || msg.totalBytes < 0 || msg.totalBytes > MAX_STATE_BYTES) {
        throw new RangeError(`STATE.totalBytes must be in 0..${MAX_STATE_BYTES}`);
      }
      checkChunk('STATE', msg.offset, msg.data.length, msg.totalBytes, (d) => new RangeError(d));
      return encodeFrameParts(t, [w.u32(msg.totalBytes, 'STATE.totalBytes').u32(msg.offset, 'STATE.offset').done(), msg.data], opts);
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

function writeRanges(w: FieldWriter, ranges: readonly PageRange[], what: string): void {
  checkRanges(ranges, (d) => new RangeError(`${what}: ${d}`));
  w.u32(ranges.length, `${what}.ranges.length`);
  const out = Buffer.allocUnsafe(12 * ranges.length);
  const view = new DataView(out.buffer, out.byteOffset, out.length);
  for (let i = 0; i < ranges.length; i++) putRange(view, 12 * i, ranges[i]!.offset, ranges[i]!.count);
  w.bytes(out);
}

/** One range on the wire: u64 offset (as two u32 halves: offsets are checked below 4 GiB), u32 count. */
function putRange(view: DataView, at: number, offset: number, count: number): void {
  view.setUint32(at, offset % 2 ** 32, true);
  view.setUint32(at + 4, Math.floor(offset / 2 ** 32), true);
  view.setUint32(at + 8, count, true);
}

// ---------------------------------------------------------------- decoding

/** Decodes and validates a frame's payload. Views into frame.payload are returned (no copy). */
export function decodeMessage(frame: Frame): Message {
  const name = frameTypeName(frame.type);
  if (!name) throw new WireError('BAD_TYPE', frame.offset, `unknown type 0x${frame.type.toString(16)}`);
  const r = new FieldReader(frame.payload, name, frame.offset);
  const msg = decodeFields(name, r);
  r.end();
  return msg;
}

function decodeFields(name: FrameTypeName, r: FieldReader): Message {
  const bad = (d: string) => r.fail(d);
  switch (name) {
    case 'HELLO': {
      const version = r.u16('version');
      const channel = CHANNELS[r.u8('channel')] ?? bad('unknown channel');
      r.zeros(1, 'reserved');
      const features = r.u32('features');
      const sessionId = r.bytes(SESSION_ID_BYTES, 'sessionId');
      return { type: 'HELLO', version, channel, sessionId, features };
    }
    case 'HELLO_ACK':
      return { type: 'HELLO_ACK', features: r.u32('features') };
    case 'REFUSE':
      return { type: 'REFUSE', reason: r.text('reason') };
    case 'SETUP': {
      const moduleHash = r.bytes(32, 'moduleHash').toString('hex');
      const moduleSize = r.u32('moduleSize');
      checkModuleSize(moduleSize, bad);
      const bytes = r.u64('memory.bytes');
      const maxBytes = r.u64('memory.maxBytes');
      checkGeometry(bytes, maxBytes, bad);
      const mode = MODES[r.u8('mode')] ?? bad('unknown mode');
      r.zeros(1, 'reserved');
      const n = r.u16('preopens.length');
      if (n > MAX_PREOPENS) bad(`${n} preopens (limit ${MAX_PREOPENS})`);
      const preopens: string[] = [];
      for (let i = 0; i < n; i++) {
        const p = r.text(`preopens[${i}]`);
        if (p.length === 0) bad(`preopens[${i}] is empty`);
        preopens.push(p);
      }
      return { type: 'SETUP', moduleHash, moduleSize, memory: { bytes, maxBytes }, preopens, mode };
    }
    case 'SETUP_ACK': {
      const v = r.u8('needModule');
      if (v > 1) bad(`needModule must be 0 or 1, got ${v}`);
      return { type: 'SETUP_ACK', needModule: v === 1 };
    }
    case 'MODULE': {
      const offset = r.u32('offset');
      const data = r.rest();
      checkChunk('MODULE', offset, data.length, MAX_MODULE_BYTES, bad);
      return { type: 'MODULE', offset, data };
    }
    case 'PAGES': {
      const offset = r.u64('offset');
      const count = r.u32('count');
      const kind = PAGE_KINDS[r.u8('kind')] ?? bad('unknown page kind');
      r.zeros(3, 'reserved');
      checkRun(offset, count, kind === 'data' ? MAX_DATA_RUN_PAGES : MAX_MEMORY_BYTES / PAGE_SIZE, bad);
      if (kind === 'data') {
        if (r.remaining() !== count * PAGE_SIZE) bad(`a data run of ${count} pages needs ${count * PAGE_SIZE} bytes, frame has ${r.remaining()}`);
        return { type: 'PAGES', offset, count, kind, data: r.rest() };
      }
      return { type: 'PAGES', offset, count, kind, data: null };
    }
    case 'GROW': {
      const newBytes = r.u64('newBytes');
      checkGeometry(newBytes, MAX_MEMORY_BYTES, bad);
      return { type: 'GROW', newBytes };
    }
    case 'PASS_END':
      return { type: 'PASS_END', pass: r.u32('pass'), dirtyPages: r.u32('dirtyPages') };
    case 'DISCARD':
      return { type: 'DISCARD', ranges: readRanges(r) };
    case 'STATE': {
      const totalBytes = r.u32('totalBytes');
      if (totalBytes > MAX_STATE_BYTES) bad(`totalBytes ${totalBytes} exceeds the ${MAX_STATE_BYTES}-byte limit`);
      const offset = r.u32('offset');
      const data = r.rest();
      checkChunk('STATE', offset, data.length, totalBytes, bad);
      return { type: 'STATE', totalBytes, offset, data };
    }
    case 'COMMIT':
    case 'DONE':
      return { type: name };
    case 'RUNNING':
      return { type: 'RUNNING', bulkBufferBytes: r.u32('bulkBufferBytes') };
    case 'PAGE_REQUEST': {
      const offset = r.u64('offset');
      const count = r.u32('count');
      checkRun(offset, count, MAX_REQUEST_PAGES, bad);
      return { type: 'PAGE_REQUEST', offset, count };
    }
    case 'RECEIVED_SET': {
      const encoding = r.u8('encoding');
      r.zeros(3, 'reserved');
      if (encoding === 0) {
        const startPage = r.u32('startPage');
        const pageCount = r.u32('pageCount');
        const bits = r.rest();
        checkBitmap(startPage, pageCount, bits, bad);
        return { type: 'RECEIVED_SET', set: { encoding: 'bitmap', startPage, pageCount, bits } };
      }
      if (encoding === 1) return { type: 'RECEIVED_SET', set: { encoding: 'ranges', ranges: readRanges(r) } };
      return bad(`unknown encoding ${encoding}`);
    }
    case 'DIGEST': {
      const pageCount = r.u32('pageCount');
      if (pageCount > MAX_MEMORY_BYTES / PAGE_SIZE) bad(`pageCount ${pageCount} is beyond 4 GiB`);
      return { type: 'DIGEST', pageCount, hex: r.bytes(32, 'digest').toString('hex') };
    }
    case 'FAULT_STATS': {
      const faults = r.u64('faults');
      const pagesRequested = r.u64('pagesRequested');
      const pagesPushed = r.u64('pagesPushed');
      const latencyUs = { p50: r.u64('latencyUs.p50') / 10, p99: r.u64('latencyUs.p99') / 10, max: r.u64('latencyUs.max') / 10 };
      const guestBlockedUs = r.u64('guestBlockedUs');
      const durationMs = r.u64('durationMs');
      return { type: 'FAULT_STATS', faults, pagesRequested, pagesPushed, latencyUs, guestBlockedUs, durationMs };
    }
    case 'ERROR': {
      const code = r.text('code');
      if (!ERROR_CODE_RE.test(code)) bad(`code ${JSON.stringify(code.slice(0, 80))} is not an error code`);
      return { type: 'ERROR', code, message: r.text('message') };
    }
    case 'PING':
    case 'PONG':
      return { type: name, nonce: r.u32('nonce') };
  }
}

function readRanges(r: FieldReader): PageRange[] {
  const n = r.u32('ranges.length');
  if (n * 12 !== r.remaining()) r.fail(`${n} ranges need ${n * 12} bytes, frame has ${r.remaining()}`);
  const ranges: PageRange[] = [];
  // The u64 offset as two u32 halves (no BigInt per range): one above 2^53 comes out inexact, but
  // anything past 4 GiB is refused by checkRanges below all the same.
  for (let i = 0; i < n; i++) {
    const low = r.u32('offset');
    const high = r.u32('offset');
    ranges.push({ offset: high * 2 ** 32 + low, count: r.u32('count') });
  }
  checkRanges(ranges, (d) => r.fail(d));
  return ranges;
}

// ---------------------------------------------------------------- shared field checks

type Fail = (detail: string) => never | Error;

function raise(fail: Fail, detail: string): never {
  const e = fail(detail);
  throw e;
}

function checkModuleSize(size: number, fail: Fail): void {
  if (!Number.isInteger(size) || size < 8 || size > MAX_MODULE_BYTES) raise(fail, `moduleSize ${size} not in 8..${MAX_MODULE_BYTES}`);
}

function checkGeometry(bytes: number, maxBytes: number, fail: Fail): void {
  for (const [field, v] of [['bytes', bytes], ['maxBytes', maxBytes]] as const) {
    if (!Number.isInteger(v) || v < 0 || v > MAX_MEMORY_BYTES || v % WASM_PAGE_SIZE !== 0) {
      raise(fail, `memory ${field} ${v} must be a multiple of ${WASM_PAGE_SIZE} in 0..${MAX_MEMORY_BYTES}`);
    }
  }
  if (bytes > maxBytes) raise(fail, `memory bytes ${bytes} exceed maxBytes ${maxBytes}`);
}

function checkRun(offset: number, count: number, maxCount: number, fail: Fail): void {
  if (!Number.isInteger(offset) || offset < 0 || offset % PAGE_SIZE !== 0) raise(fail, `offset ${offset} is not page-aligned`);
  if (!Number.isInteger(count) || count < 1 || count > maxCount) raise(fail, `count ${count} not in 1..${maxCount}`);
  if (offset + count * PAGE_SIZE > MAX_MEMORY_BYTES) raise(fail, `pages ${offset}+${count}*${PAGE_SIZE} reach beyond 4 GiB`);
}

function checkRanges(ranges: readonly PageRange[], fail: Fail): void {
  let end = 0;
  let i = 0;
  const failHere = (d: string) => raise(fail, `range ${i}: ${d}`);
  for (; i < ranges.length; i++) {
    const r = ranges[i]!;
    checkRun(r.offset, r.count, MAX_MEMORY_BYTES / PAGE_SIZE, failHere);
    if (r.offset < end) raise(fail, `range ${i} at ${r.offset} overlaps or precedes the previous one (ranges must ascend)`);
    end = r.offset + r.count * PAGE_SIZE;
  }
}

function checkBitmap(startPage: number, pageCount: number, bits: Uint8Array, fail: Fail): void {
  const maxPages = MAX_MEMORY_BYTES / PAGE_SIZE;
  if (!Number.isInteger(startPage) || !Number.isInteger(pageCount) || startPage < 0 || pageCount < 0 || startPage + pageCount > maxPages) {
    raise(fail, `bitmap pages ${startPage}+${pageCount} reach beyond 4 GiB`);
  }
  const need = Math.ceil(pageCount / 8);
  if (bits.length !== need) raise(fail, `bitmap of ${pageCount} pages needs ${need} bytes, got ${bits.length}`);
  if (pageCount % 8 !== 0 && need > 0 && (bits[need - 1]! >> (pageCount % 8)) !== 0) raise(fail, 'bitmap has bits set past pageCount');
}

function checkChunk(what: string, offset: number, length: number, total: number, fail: Fail): void {
  if (length > MAX_CHUNK_BYTES) raise(fail, `${what} chunk of ${length} bytes exceeds ${MAX_CHUNK_BYTES}`);
  if (!Number.isInteger(offset) || offset < 0 || offset + length > total) raise(fail, `${what} chunk ${offset}+${length} is beyond ${total} bytes`);
}

function indexOf<T>(list: readonly T[], v: T, field: string): number {
  const i = list.indexOf(v);
  if (i < 0) throw new RangeError(`${field}: unknown value ${String(v)}`);
  return i;
}
