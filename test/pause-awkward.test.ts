// No guest may become unpausable: a guest spinning inside a callback it calls through a function
// pointer, and a guest deep in recursion, must pause, resume, and continue after a capture and a
// restore over a copy of its memory (what a migration does) with the output of an undisturbed
// run, byte for byte. Whatever the instrumentation leaves out for speed, these must still hold.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import binaryen from 'binaryen';
import { compileFixture, sleep, tmpDir, useSharedCache, captureOverCopy, pausedAfterPauses } from './fixtures/guest/helpers.js';
import { Guest } from '../src/guest/guest.js';

useSharedCache();
const WASI_RUN = fileURLToPath(new URL('../bench/fixtures/wasi-run.js', import.meta.url));

function reference(wasm: string, args: string[], dir: string): { out: Buffer; ms: number } {
  const file = join(dir, 'reference.out');
  const t0 = performance.now();
  const r = spawnSync(process.execPath, ['--no-warnings', WASI_RUN, wasm, dir, file, 'spinners', ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
  assert.equal(r.status, 0, String(r.stderr));
  return { out: readFileSync(file), ms: performance.now() - t0 };
}

/**
 * Runs the guest; pauses it five times while it runs (each pause must resolve, and the guest
 * must write nothing while paused), then pauses once more, captures, stops it, restores the
 * state over a copy of its memory and lets the restored guest finish. Returns both outputs joined,
 * or null if the guest ended before its last pause.
 */
async function pausedAndMovedOnce(module: Uint8Array, args: string[], dir: string, waitMs: number): Promise<Buffer | null> {
  const first = join(dir, 'first.out');
  const second = join(dir, 'second.out');
  const fd1 = openSync(first, 'w');
  const fd2 = openSync(second, 'w');
  try {
    const guest = await Guest.start({ module, args: ['spinners', ...args], stdio: { stdout: fd1 } });
    let restored: Guest | null = null;
    try {
      if (!(await pausedAfterPauses(guest, 5, waitMs))) return null;
      const { state, memory } = await captureOverCopy(guest);
      assert.ok(state.exec.unwind, 'the guest unwound its stack at the pause');
      restored = await Guest.restore({ module, state, memory, stdio: { stdout: fd2 } });
      assert.deepEqual(await restored.exited, { reason: 'exit', code: 0 });
    } finally {
      if (guest.status !== 'stopped' && guest.status !== 'exited') await guest.stop();
      if (restored && restored.status !== 'exited') await restored.stop();
    }
  } finally {
    closeSync(fd1);
    closeSync(fd2);
  }
  return Buffer.concat([readFileSync(first), readFileSync(second)]);
}

/**
 * pausedAndMovedOnce with its pauses spread over the run (waits bounded by the reference's
 * time); should the guest end before its last pause on a busy machine, once more with the pauses
 * back to back, where the guest runs only between a resume and the next pause request.
 */
async function pausedAndMoved(wasm: string, args: string[], dir: string, refMs: number): Promise<Buffer> {
  const module = readFileSync(wasm);
  for (const waitMs of [Math.min(Math.max(5, refMs * 0.04), 40), 0]) {
    const out = await pausedAndMovedOnce(module, args, dir, waitMs);
    if (out) return out;
  }
  assert.fail('the guest ended before its last pause even with the pauses back to back: the run is too short to test');
}

test('a guest spinning in a callback called through a function pointer pauses, resumes and moves', async () => {
  const wasm = compileFixture('spinners');
  const text = (() => {
    const m = binaryen.readBinary(readFileSync(wasm));
    try {
      return m.emitText();
    } finally {
      m.dispose();
    }
  })();
  assert.match(text, /call_indirect/, 'the fixture calls its callback through the table');
  const dir = tmpDir('spinners-callback');
  const args = ['callback', '100000000'];
  const ref = reference(wasm, args, dir);
  assert.match(ref.out.toString(), /^callback 100000000 \d+\n$/);
  assert.equal((await pausedAndMoved(wasm, args, dir, ref.ms)).toString(), ref.out.toString());
});

test('a guest 2000 calls deep in recursion pauses, resumes and moves', async () => {
  const wasm = compileFixture('spinners');
  const dir = tmpDir('spinners-recurse');
  const args = ['recurse', '2000', '25000'];
  const ref = reference(wasm, args, dir);
  assert.match(ref.out.toString(), /^recurse 2000 25000 \d+\n$/);
  assert.equal((await pausedAndMoved(wasm, args, dir, ref.ms)).toString(), ref.out.toString());
});

// The shape loop resume (src/guest/loop-resume.ts, on by default) splits: an interpreter's dispatch
// loop, big and calling many helpers, here calling a callback through a function pointer that
// spins. It must pause like any other, with loop resume on or off (FERRY_LOOP_RESUME=0): the
// callback's call is a resumable call site of the split loop (src/guest/call-resume.ts).
test('a guest spinning in a callback called through a function pointer from an interpreter loop pauses, resumes and moves', async () => {
  const wasm = compileFixture('dispatch');
  const dir = tmpDir('dispatch-callback');
  const args = ['callback', '100000000'];
  const ref = reference(wasm, args, dir);
  assert.match(ref.out.toString(), /^callback 100000000 \d+\n$/);
  assert.equal((await pausedAndMoved(wasm, args, dir, ref.ms)).toString(), ref.out.toString());
});
