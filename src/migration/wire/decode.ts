// Frame → message. Each decoder validates every field (range, alignment, reserved bytes, exact
// length) and throws WireError('BAD_MESSAGE') naming the frame's offset; views into the frame's
// payload are returned, never copies.
import { FieldReader } from './codec.js';
import { WireError } from './errors.js';
import type { Frame } from './frame.js';
import { MAX_DATA_RUN_PAGES, MAX_MEMORY_BYTES, MAX_MODULE_BYTES, MAX_PREOPENS, MAX_REQUEST_PAGES, MAX_STATE_BYTES, PAGE_SIZE } from './limits.js';
import { frameTypeName, type FrameTypeName } from './types.js';
import { SESSION_ID_BYTES, type Message } from './message-types.js';
import { CHANNELS, ERROR_CODE_RE, MODES, PAGE_KINDS, checkBitmap, checkChunk, checkGeometry, checkModuleSize, checkRun, readRanges } from './field-checks.js';

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
    case 'STATE':
    case 'SOCKETS': {
      const totalBytes = r.u32('totalBytes');
      if (totalBytes > MAX_STATE_BYTES) bad(`totalBytes ${totalBytes} exceeds the ${MAX_STATE_BYTES}-byte limit`);
      const offset = r.u32('offset');
      const data = r.rest();
      checkChunk(name, offset, data.length, totalBytes, bad);
      return { type: name, totalBytes, offset, data };
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
