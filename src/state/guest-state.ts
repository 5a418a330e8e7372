// The guest state: everything a paused guest is besides its memory pages — execution state,
// WASI state, module identity, memory geometry. It is versioned and self-describing, and it is
// validated field by field when loaded, because it arrives from the network or from disk.
import type { WasiState } from '../wasi/wasi.js';
import { WASI_STATE_VERSION } from '../wasi/state.js';
import { validateWasiState } from '../wasi/persist.js';
import type { ExecState, GlobalValue } from './exec-state.js';
import { StateError, arr, int, obj, str } from './validate.js';
import { WASM_PAGE_SIZE as WASM_PAGE } from '../memory/guest-memory.js';

export const GUEST_STATE_FORMAT = 'ferry-guest-state';
export const GUEST_STATE_VERSION = 1;

export interface GuestState {
  format: typeof GUEST_STATE_FORMAT;
  version: typeof GUEST_STATE_VERSION;
  module: { hash: string; size: number };
  memory: { bytes: number; maxBytes: number };
  exec: ExecState;
  wasi: WasiState;
  /** Milliseconds the guest had run before this capture, over all its hosts. */
  uptimeMs: number;
}

export function encodeGuestState(s: GuestState): Uint8Array {
  return Buffer.from(JSON.stringify(s), 'utf8');
}

/** Parses and validates a guest state; throws StateError naming the bad field. */
export function decodeGuestState(bytes: Uint8Array): GuestState {
  let parsed: unknown;
  try {
    parsed = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch (err) {
    throw new StateError(`guest state is not valid JSON: ${(err as Error).message}`);
  }
  return validateGuestState(parsed);
}

export function validateGuestState(x: unknown): GuestState {
  const o = obj(x, 'state');
  if (o['format'] !== GUEST_STATE_FORMAT) throw new StateError(`state.format: expected "${GUEST_STATE_FORMAT}"`);
  if (o['version'] !== GUEST_STATE_VERSION) {
    throw new StateError(`state.version: this Ferry reads version ${GUEST_STATE_VERSION}, got ${JSON.stringify(o['version'])}`);
  }
  const m = obj(o['module'], 'state.module');
  const mem = obj(o['memory'], 'state.memory');
  const maxBytes = int(mem['maxBytes'], 'state.memory.maxBytes', WASM_PAGE, 65536 * WASM_PAGE);
  const bytes = int(mem['bytes'], 'state.memory.bytes', 0, maxBytes);
  if (bytes % WASM_PAGE !== 0 || maxBytes % WASM_PAGE !== 0) throw new StateError('state.memory: sizes must be whole 64 KiB pages');
  const e = obj(o['exec'], 'state.exec');
  const globals = arr(e['globals'], 'state.exec.globals', 100000).map((g, i): GlobalValue => {
    const go = obj(g, `state.exec.globals[${i}]`);
    const type = str(go['type'], `state.exec.globals[${i}].type`, /^(i32|i64|f32|f64)$/) as GlobalValue['type'];
    const width = type === 'i32' || type === 'f32' ? 8 : 16;
    const bits = str(go['bits'], `state.exec.globals[${i}].bits`, new RegExp(`^[0-9a-f]{${width}}$`));
    return { type, bits };
  });
  let unwind: ExecState['unwind'] = null;
  if (e['unwind'] !== null) {
    const u = obj(e['unwind'], 'state.exec.unwind');
    const ptr = int(u['ptr'], 'state.exec.unwind.ptr', 0, bytes);
    const size = int(u['size'], 'state.exec.unwind.size', 16, 64 << 20);
    if (ptr + size > bytes || ptr % 8 !== 0) throw new StateError('state.exec.unwind: region lies outside memory or is misaligned');
    unwind = { ptr, size };
  }
  let displaced: string | null = null;
  if (e['displaced'] !== undefined && e['displaced'] !== null) {
    if (unwind === null) throw new StateError('state.exec.displaced: no unwind region to put it back into');
    displaced = str(e['displaced'], 'state.exec.displaced', /^[A-Za-z0-9+/]*={0,2}$/);
    if (Buffer.from(displaced, 'base64').length > unwind.size) throw new StateError('state.exec.displaced: longer than the unwind region');
  }
  return {
    format: GUEST_STATE_FORMAT,
    version: GUEST_STATE_VERSION,
    module: {
      hash: str(m['hash'], 'state.module.hash', /^[0-9a-f]{64}$/),
      size: int(m['size'], 'state.module.size', 8, 1 << 30),
    },
    memory: { bytes, maxBytes },
    exec: { globals, unwind, displaced },
    wasi: validateWasiState(o['wasi']),
    uptimeMs: int(o['uptimeMs'], 'state.uptimeMs'),
  };
}

/** How often the rehearsals below run: 4 runs left the code in V8's interpreter. */
const REHEARSALS = 30;

/**
 * Decodes a small made-up state, REHEARSALS times. The first decode in a process runs cold code
 * (about 0.7 ms on these machines); a migration destination calls this while pages stream in, so
 * that the decode inside the switchover's downtime runs warm. Four runs left it in V8's
 * interpreter: a real state's decode then took 0.2-0.3 ms, against 30-75 µs once warm.
 */
export function rehearseDecoding(): void {
  const bytes = encodeGuestState(rehearsalState());
  for (let i = 0; i < REHEARSALS; i++) decodeGuestState(bytes);
}

/** The source's side of rehearseDecoding(): encodes the made-up state a few times (≈ 0.2 ms cold). */
export function rehearseEncoding(): void {
  const state = rehearsalState();
  for (let i = 0; i < REHEARSALS; i++) encodeGuestState(state);
}

/** The shape of a real state (stdio and a file descriptor): one cold pass would leave the paths for descriptors unrun. */
function rehearsalState(): GuestState {
  const stdio = (fd: number, kind: 'stdin' | 'stdout' | 'stderr') => ({
    fd, kind, preopen: null, path: '', offset: 0, fdflags: 0, oflags: 0, rightsBase: '954204635', rightsInheriting: '0',
    filetype: 2, read: kind === 'stdin', write: kind !== 'stdin', detached: false,
  });
  const file = {
    fd: 4, kind: 'file' as const, preopen: '/rehearsal', path: 'f', offset: 8, fdflags: 0, oflags: 0, rightsBase: '954204635',
    rightsInheriting: '0', filetype: 4, read: true, write: true, detached: false,
  };
  return {
    format: GUEST_STATE_FORMAT,
    version: GUEST_STATE_VERSION,
    module: { hash: '0'.repeat(64), size: 8 },
    memory: { bytes: WASM_PAGE, maxBytes: WASM_PAGE },
    // The bytes an unwind displaced, as a paused guest's state carries them (base64, checked apart).
    exec: { globals: [{ type: 'i32', bits: '00000000' }, { type: 'i64', bits: '0000000000000000' }], unwind: { ptr: 1024, size: 4096 }, displaced: 'A'.repeat(1024) },
    wasi: {
      version: WASI_STATE_VERSION,
      args: ['rehearsal'],
      env: { K: 'V' },
      preopens: ['/rehearsal'],
      fds: [stdio(0, 'stdin'), stdio(1, 'stdout'), stdio(2, 'stderr'), file],
      clocks: { monotonicNs: '0', cputimeNs: '0' },
      exitCode: null,
      pendingPoll: null,
    },
    uptimeMs: 0,
  };
}
