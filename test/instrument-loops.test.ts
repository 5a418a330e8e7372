// Safepoints in loops that never end and call nothing: the innermost loops whose safepoint is
// checked only once every N iterations (instrument.ts, amortiseInnermostLoops) must still pause
// promptly, and a guest paused there must continue from the same point — in place and restored
// over a copy of its memory. Innermost loops with a provable small trip count get no safepoint at
// all (boundedTripCount); loops that only look counted keep theirs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import binaryen from 'binaryen';
import { sleep, useSharedCache, waitFor } from './fixtures/guest/helpers.js';
import { Guest } from '../src/guest/guest.js';
import { instrumentModule } from '../src/guest/instrument.js';

useSharedCache();

const COUNTER = 1024; // byte address of the i32 the guests count in

type Kind = 'flat' | 'nested' | 'never-exits';

/**
 * A WASI-shaped command module (memory, `_start`, no imports) whose `_start` counts forever at
 * COUNTER: `nested` puts a bounded innermost loop (1000 iterations) inside an endless outer one;
 * `flat`: the endless loop is itself the innermost one; `never-exits`: an innermost loop that
 * looks counted (i = 0; …; i += 2; continue while i != 7) but never ends.
 */
function countingModule(kind: Kind): Uint8Array {
  const b = binaryen;
  const m = new b.Module();
  m.setMemory(1, 16, 'memory');
  const bump = m.i32.store(0, 4, m.i32.const(COUNTER), m.i32.add(m.i32.load(0, 4, m.i32.const(COUNTER)), m.i32.const(1)));
  let body;
  if (kind === 'never-exits') {
    body = m.block(null, [
      m.local.set(0, m.i32.const(0)),
      m.loop('forever', m.block(null, [
        bump,
        m.local.set(0, m.i32.add(m.local.get(0, b.i32), m.i32.const(2))),
        m.br('forever', m.i32.ne(m.local.get(0, b.i32), m.i32.const(7))),
      ])),
    ]);
  } else if (kind === 'nested') {
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

const KINDS: Record<Kind, string> = {
  flat: 'an endless innermost loop',
  nested: 'an endless loop around a bounded innermost loop',
  'never-exits': 'an endless innermost loop that looks counted',
};
for (const kind of Object.keys(KINDS) as Kind[]) {
  test(`${KINDS[kind]} pauses, resumes and restores where it was`, async () => {
    const module = countingModule(kind);
    const guest = await Guest.start({ module });
    try {
      for (let i = 0; i < 20; i++) {
        await sleep(2);
        // A loop without a reachable safepoint never pauses: the test's own timeout catches that.
        // How fast a pause is belongs to the guest benchmark, not here (a busy machine is slow).
        await guest.pause();
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
        // Waited for, not timed: a restored guest that does not count on fails here (after 60 s).
        await waitFor('the restored guest to count on', () => counterOf(memory) > counted);
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

/**
 * Loops in the text of a module, and inlined safepoint checks (the flag load; test modules use no
 * other atomics). A split function's resume copy and escape wrapper (loop-resume.ts) are left out:
 * they repeat the function's loops for a resumed activation, and the placement counted here is the
 * function's own.
 */
function shape(bytes: Uint8Array): { loops: number; checks: number } {
  const m = binaryen.readBinary(bytes);
  try {
    let loops = 0;
    let checks = 0;
    for (let i = 0; i < m.getNumFunctions(); i++) {
      const f = binaryen.getFunctionInfo(m.getFunctionByIndex(i));
      if (f.module || !f.body || /\$ferry_(resume|escape)$|^ferry\$(resume|escape)\d+$/.test(f.name)) continue;
      const text = binaryen.emitText(f.body);
      loops += (text.match(/\(loop /g) ?? []).length;
      checks += (text.match(/\(i64\.atomic\.load/g) ?? []).length;
    }
    return { loops, checks };
  } finally {
    m.dispose();
  }
}

test('an innermost loop that calls nothing that can unwind is amortised; others keep a check per iteration', async () => {
  // The amortised loop's safepoint sits in a loop of its own around the original one: one more
  // loop in the text of the instrumented module than in the original, for the innermost loop only.
  const flat = countingModule('flat');
  const neverExits = countingModule('never-exits');
  assert.equal(shape(flat).loops, 1);
  assert.equal(shape((await instrumentModule(flat)).binary).loops, 2);
  assert.equal(shape(neverExits).loops, 1);
  assert.equal(shape((await instrumentModule(neverExits)).binary).loops, 2);
});

/**
 * A module whose `_start` runs `inner` (an innermost loop named 'inner', after `pre`) inside an
 * endless outer loop. Locals: 0, 1 i32; 2 i64. `leaf` is a function that calls nothing.
 */
function innerLoopModule(build: (m: binaryen.Module) => { pre: number[]; inner: number }): Uint8Array {
  const b = binaryen;
  const m = new b.Module();
  m.setMemory(1, 16, 'memory');
  m.addFunction('leaf', b.none, b.none, [], m.i32.store(0, 4, m.i32.const(COUNTER + 4), m.i32.const(1)));
  const { pre, inner } = build(m);
  m.addFunction('_start', b.none, b.none, [b.i32, b.i32, b.i64], m.loop('outer', m.block(null, [...pre, inner, m.br('outer')])));
  m.addFunctionExport('_start', '_start');
  assert.ok(m.validate(), 'the test module is valid');
  const bytes = m.emitBinary();
  m.dispose();
  return bytes;
}

const i32 = binaryen.i32;
const i64 = binaryen.i64;
function bumpOf(m: binaryen.Module): number {
  return m.i32.store(0, 4, m.i32.const(COUNTER), m.i32.add(m.i32.load(0, 4, m.i32.const(COUNTER)), m.i32.const(1)));
}
/** loop $inner { bump; extra…; step; br_if $inner cond } */
function counted(m: binaryen.Module, step: number, cond: number, extra: number[] = []): number {
  return m.loop('inner', m.block(null, [bumpOf(m), ...extra, step, m.br('inner', cond)]));
}
const inc = (m: binaryen.Module, by = 1): number => m.local.set(0, m.i32.add(m.local.get(0, i32), m.i32.const(by)));

test('innermost loops with a small constant trip count get no safepoint; the enclosing loop keeps its own', async () => {
  const exempt: Record<string, Uint8Array> = {
    // for (i = 0; i < 1000; i++)
    'i < 1000, up by 1': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: counted(m, inc(m), m.i32.lt_u(m.local.get(0, i32), m.i32.const(1000))),
    })),
    // whatever i is on entry: at most 1000 / 3 + 1 iterations
    'i <u 1000 from an unknown start, up by 3': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.load(0, 4, m.i32.const(COUNTER + 8)))],
      inner: counted(m, inc(m, 3), m.i32.lt_u(m.local.get(0, i32), m.i32.const(1000))),
    })),
    // clang's shape of memtouch's page loop: n = 512; do { …; } while ((n -= 4) != 0)
    'i64 count-down from 512 by 4 to 0 (memtouch)': innerLoopModule((m) => ({
      pre: [m.local.set(2, m.i64.const(512n as unknown as number))],
      inner: m.loop('inner', m.block(null, [
        bumpOf(m),
        m.br('inner', m.i32.eqz(m.i64.eqz(m.local.tee(2, m.i64.add(m.local.get(2, i64), m.i64.const(-4n as unknown as number)), i64)))),
      ])),
    })),
    // do { … } while (--i) with i = 100, the counter itself as the condition
    'i32 count-down from 100 as the condition': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(100)), m.local.set(1, m.i32.const(5))],
      inner: m.loop('inner', m.block(null, [bumpOf(m), m.br('inner', m.local.tee(0, m.i32.sub(m.local.get(0, i32), m.i32.const(1)), i32))])),
    })),
  };
  for (const [name, bytes] of Object.entries(exempt)) {
    const out = shape((await instrumentModule(bytes)).binary);
    assert.deepEqual(out, { loops: 2, checks: 1 }, `${name}: no wrapper loop, one check (the outer loop's)`);
  }
});

test('innermost loops whose trip count cannot be proved small keep their safepoint', async () => {
  const kept: Record<string, Uint8Array> = {
    // Only constant bounds are proved (a bound in a local is refused whether or not the loop
    // changes it; the one here never does).
    'bound in a local, not a constant': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0)), m.local.set(1, m.i32.const(10))],
      inner: counted(m, inc(m), m.i32.lt_u(m.local.get(0, i32), m.local.get(1, i32))),
    })),
    'bound loaded from memory': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: counted(m, inc(m), m.i32.lt_u(m.local.get(0, i32), m.i32.load(0, 4, m.i32.const(COUNTER + 8)))),
    })),
    'a call in the loop': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: counted(m, inc(m), m.i32.lt_u(m.local.get(0, i32), m.i32.const(10)), [m.call('leaf', [], binaryen.none)]),
    })),
    'step not constant': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0)), m.local.set(1, m.i32.const(1))],
      inner: counted(m, m.local.set(0, m.i32.add(m.local.get(0, i32), m.local.get(1, i32))), m.i32.lt_u(m.local.get(0, i32), m.i32.const(10))),
    })),
    'counter assigned twice': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: counted(m, inc(m), m.i32.lt_u(m.local.get(0, i32), m.i32.const(10)), [
        m.if(m.i32.load(0, 4, m.i32.const(COUNTER + 8)), m.local.set(0, m.i32.const(0))),
      ]),
    })),
    'step only on some paths': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: m.loop('inner', m.block(null, [
        bumpOf(m),
        m.if(m.i32.load(0, 4, m.i32.const(COUNTER + 8)), inc(m)),
        m.br('inner', m.i32.lt_u(m.local.get(0, i32), m.i32.const(10))),
      ])),
    })),
    'a second branch back': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: counted(m, inc(m), m.i32.lt_u(m.local.get(0, i32), m.i32.const(10)), [
        m.br('inner', m.i32.load(0, 4, m.i32.const(COUNTER + 8))),
      ]),
    })),
    '!= with a start that is not a constant': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.load(0, 4, m.i32.const(COUNTER + 8)))],
      inner: counted(m, inc(m, -1), m.i32.ne(m.local.get(0, i32), m.i32.const(0))),
    })),
    '!= a value the counter never reaches': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: counted(m, inc(m, 2), m.i32.ne(m.local.get(0, i32), m.i32.const(7))),
    })),
    'the start constant overwritten before the loop': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(100)), m.if(m.local.get(1, i32), m.local.set(0, m.i32.const(-1)))],
      inner: counted(m, inc(m, -1), m.i32.ne(m.local.get(0, i32), m.i32.const(0))),
    })),
    // from i = INT32_MIN that is 2^31 + 1000 iterations
    'i <s 1000 from a start that is not a constant': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.load(0, 4, m.i32.const(COUNTER + 8)))],
      inner: counted(m, inc(m), m.i32.lt_s(m.local.get(0, i32), m.i32.const(1000))),
    })),
    'too many iterations': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: counted(m, inc(m), m.i32.lt_u(m.local.get(0, i32), m.i32.const(1_000_000))),
    })),
    'a wrapping bound: i <u 0xfffffff0, up by 0x20': innerLoopModule((m) => ({
      pre: [m.local.set(0, m.i32.const(0))],
      inner: counted(m, inc(m, 0x20), m.i32.lt_u(m.local.get(0, i32), m.i32.const(0xfffffff0 | 0))),
    })),
  };
  for (const [name, bytes] of Object.entries(kept)) {
    const out = shape((await instrumentModule(bytes)).binary);
    assert.ok(out.checks >= 2, `${name}: the inner loop keeps a check (${JSON.stringify(out)})`);
  }
});

/**
 * `_start` loops forever calling `leaf` (five stores, no loop, no call) and `find`, whose innermost
 * loop counts at COUNTER until the word after it holds 5 and then returns: a `return` inside an
 * innermost loop, the shape of a search loop.
 */
function exitsModule(): Uint8Array {
  const b = binaryen;
  const m = new b.Module();
  m.setMemory(1, 16, 'memory');
  const store = (at: number, v: number) => m.i32.store(0, 4, m.i32.const(COUNTER + at), m.i32.const(v));
  m.addFunction('leaf', b.none, b.none, [], m.block(null, [store(12, 1), store(16, 2), store(20, 3), store(24, 4), store(28, 5)]));
  m.addFunction('find', b.none, b.none, [], m.loop('search', m.block(null, [
    bumpOf(m),
    m.if(m.i32.eq(m.i32.load(0, 4, m.i32.const(COUNTER + 8)), m.i32.const(5)), m.return()),
    m.br('search'),
  ])));
  m.addFunction('_start', b.none, b.none, [], m.loop('outer', m.block(null, [m.call('leaf', [], b.none), m.call('find', [], b.none), m.br('outer')])));
  m.addFunctionExport('_start', '_start');
  assert.ok(m.validate(), 'the test module is valid');
  const bytes = m.emitBinary();
  m.dispose();
  return bytes;
}

test('returns and function ends get no safepoint: a leaf stays out of Asyncify, a loop with a return is amortised', async () => {
  const module = exitsModule();
  const out = (await instrumentModule(module)).binary;
  // Checks: `_start`'s loop head and `find`'s amortised loop head; none at `find`'s return, none
  // at `leaf`'s end, and none at `_start`'s entry (it is on no cycle of the call graph, so it
  // cannot recurse: call-graph.ts). Loops: `find`'s gains the amortisation wrapper.
  assert.deepEqual(shape(out), { loops: 3, checks: 2 });
  const m = binaryen.readBinary(out);
  try {
    // The test module has no name section: `leaf` is the function that stores 5 at COUNTER + 28.
    const leaf = m.emitText().split(/\n \(func /).find((f) => f.includes(`(i32.const ${COUNTER + 28})`));
    assert.ok(leaf, 'leaf is still a function of its own');
    assert.doesNotMatch(leaf, /global\.(get|set)|call/, 'leaf is not touched by Asyncify (no state global, no call)');
  } finally {
    m.dispose();
  }
  const guest = await Guest.start({ module });
  try {
    for (let i = 0; i < 5; i++) {
      await sleep(2);
      await guest.pause();
      const at = counterOf(guest.memory);
      await sleep(1);
      assert.equal(counterOf(guest.memory), at, 'a guest paused in the search loop does not count');
      guest.resume();
    }
  } finally {
    await guest.stop();
  }
});
