// Safepoints in loops that never end and call nothing: the innermost loops whose safepoint is
// checked only once every N iterations (instrument.ts, amortiseInnermostLoops) must still pause
// promptly, and a guest paused there must continue from the same point — in place and restored
// over a copy of its memory.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import binaryen from 'binaryen';
import { sleep, useSharedCache } from './fixtures/guest/helpers.js';
import { Guest } from '../src/guest/guest.js';
import { instrumentModule } from '../src/guest/instrument.js';

useSharedCache();

const COUNTER = 1024; // byte address of the i32 the guests count in

/**
 * A WASI-shaped command module (memory, `_start`, no imports) whose `_start` counts forever at
 * COUNTER: `nested` puts a bounded innermost loop (1000 iterations) inside an endless outer one;
 * otherwise the endless loop is itself the innermost one.
 */
function countingModule(nested: boolean): Uint8Array {
  const b = binaryen;
  const m = new b.Module();
  m.setMemory(1, 16, 'memory');
  const bump = m.i32.store(0, 4, m.i32.const(COUNTER), m.i32.add(m.i32.load(0, 4, m.i32.const(COUNTER)), m.i32.const(1)));
  let body;
  if (nested) {
    body = m.loop('outer', m.block(null, [
      m.local.set(0, m.i32.const(0)),
      m.loop('inner', m.block(null, [
        bump,
        m.local.set(0, m.i32.add(m.local.get(0, b.i32), m.i32.const(1))),
        m.br('inner', m.i32.lt_u(m.local.get(0, b.i32), m.i32.const(1000))),
      ])),
      m.br('outer'),
    ]));
  } else {
    body = m.loop('forever', m.block(null, [bump, m.br('forever')]));
  }
  m.addFunction('_start', b.none, b.none, [b.i32], body);
  m.addFunctionExport('_start', '_start');
  assert.ok(m.validate(), 'the test module is valid');
  const bytes = m.emitBinary();
  m.dispose();
  return bytes;
}

function counterOf(memory: WebAssembly.Memory): number {
  return new Int32Array(memory.buffer, COUNTER, 1)[0]!;
}

for (const nested of [false, true]) {
  const kind = nested ? 'an endless loop around a bounded innermost loop' : 'an endless innermost loop';
  test(`${kind} pauses, resumes and restores where it was`, async () => {
    const module = countingModule(nested);
    const guest = await Guest.start({ module });
    try {
      for (let i = 0; i < 20; i++) {
        await sleep(2);
        const t0 = performance.now();
        await guest.pause();
        const ms = performance.now() - t0;
        assert.ok(ms < 500, `pause ${i} took ${ms.toFixed(1)} ms`);
        const at = counterOf(guest.memory);
        await sleep(1);
        assert.equal(counterOf(guest.memory), at, 'a paused guest does not count');
        guest.resume();
      }
      await sleep(5);
      await guest.pause();
      const counted = counterOf(guest.memory);
      assert.ok(counted > 0, 'the guest counted');
      const state = guest.capture();
      assert.ok(state.exec.unwind, 'the guest unwound from a safepoint in its loop');
      const image = new Uint8Array(guest.memory.buffer).slice();
      await guest.stop();

      const memory = new WebAssembly.Memory({ initial: state.memory.bytes / 65536, maximum: state.memory.maxBytes / 65536, shared: true });
      new Uint8Array(memory.buffer).set(image);
      const restored = await Guest.restore({ module, state, memory });
      try {
        await sleep(10);
        await restored.pause();
        assert.ok(counterOf(memory) > counted, 'the restored guest counts on from where it was');
      } finally {
        await restored.stop();
      }
    } finally {
      if (guest.status !== 'stopped') await guest.stop();
    }
  });
}

test('an innermost loop that calls nothing that can unwind is amortised; others keep a check per iteration', async () => {
  // The amortised loop's safepoint sits in a loop of its own around the original one: one more
  // loop in the text of the instrumented module than in the original, for the innermost loop only.
  const loopsIn = (bytes: Uint8Array): number => {
    const m = binaryen.readBinary(bytes);
    try {
      return (m.emitText().match(/\(loop /g) ?? []).length;
    } finally {
      m.dispose();
    }
  };
  const flat = countingModule(false);
  const nested = countingModule(true);
  assert.equal(loopsIn(flat), 1);
  assert.equal(loopsIn((await instrumentModule(flat)).binary), 2);
  assert.equal(loopsIn(nested), 2);
  assert.equal(loopsIn((await instrumentModule(nested)).binary), 3);
});
