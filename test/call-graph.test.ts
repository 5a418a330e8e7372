// Which functions keep their entry safepoint (src/guest/call-graph.ts): the rules on plain facts,
// and a guest whose only way to run long is recursion through the table (no loop anywhere), which
// must still pause — it does only if its functions keep their entry safepoints.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import binaryen from 'binaryen';
import { sleep, useSharedCache } from './fixtures/guest/helpers.js';
import { Guest } from '../src/guest/guest.js';
import { entrySafepointFree, functionsOnCycles, type FunctionFacts } from '../src/guest/call-graph.js';

useSharedCache();

const fn = (calls: string[], size = 10, indirect = false): FunctionFacts => ({ size, calls, indirect });

test('cycles: self calls, mutual calls, and calls through the table', () => {
  const facts = new Map<string, FunctionFacts>([
    ['main', fn(['a', 'self', 'viaTable', 'leaf'])],
    ['self', fn(['self'])],
    ['a', fn(['b'])],
    ['b', fn(['a', 'leaf'])],
    ['viaTable', fn([], 10, true)], // calls whatever the table holds
    ['target', fn(['viaTable'])], // in the table, and calls back into viaTable
    ['leaf', fn(['wasi_fd_write'])], // an import: not a function here
  ]);
  const onCycle = functionsOnCycles(facts, new Set(['target', 'leaf']));
  assert.deepEqual([...onCycle].sort(), ['a', 'b', 'self', 'target', 'viaTable']);
  // Without the table edge there is no cycle through viaTable.
  assert.deepEqual([...functionsOnCycles(facts, new Set(['leaf']))].sort(), ['a', 'b', 'self']);
});

test('a body that could not be read is assumed to call anything', () => {
  const facts = new Map<string, FunctionFacts>([
    ['main', fn(['odd'])],
    ['odd', { size: 0, calls: [], indirect: false, unknown: true }],
  ]);
  assert.deepEqual([...functionsOnCycles(facts, new Set())].sort(), ['main', 'odd']);
});

test('entry safepoints: kept on cycles and where straight-line work would exceed the budget', () => {
  const facts = new Map<string, FunctionFacts>([
    ['main', fn(['big', 'small', 'rec'], 5)],
    ['big', fn(['small', 'small'], 80)], // 80 + 2 × small's 30 = 140 > 100: keeps its entry
    ['small', fn(['tiny'], 20)], // 20 + 10 = 30
    ['tiny', fn([], 10)],
    ['rec', fn(['rec'], 1)],
    ['boundedRec', fn(['boundedRec'], 1)],
  ]);
  const onCycle = functionsOnCycles(facts, new Set());
  const free = entrySafepointFree(facts, onCycle, new Set(['boundedRec']), 100);
  assert.deepEqual([...free].sort(), ['boundedRec', 'main', 'small', 'tiny']);
  // main's work before a safepoint: 5 + small's 30 (big and rec keep theirs and count nothing).
  assert.ok(!free.has('big') && !free.has('rec'));
  const tight = entrySafepointFree(facts, onCycle, new Set(), 30);
  assert.deepEqual([...tight].sort(), ['small', 'tiny']); // main: 5 + 30 = 35 > 30
});

const COUNTER = 1024;

/**
 * `_start` calls `a(40)`; `a(n)` counts at COUNTER and, while n > 0, calls `b(n - 1)` twice through
 * the table; `b` calls `a` directly. A binary tree of 2^40 calls: no loop anywhere, so only the
 * entry safepoints of `a` and `b` (a cycle through the table) can pause it.
 */
function tableRecursionModule(): Uint8Array {
  const b = binaryen;
  const m = new b.Module();
  m.setMemory(1, 16, 'memory');
  const sig = b.createType([b.i32]);
  const bump = m.i32.store(0, 4, m.i32.const(COUNTER), m.i32.add(m.i32.load(0, 4, m.i32.const(COUNTER)), m.i32.const(1)));
  const viaTable = m.call_indirect('t', m.i32.const(1), [m.i32.sub(m.local.get(0, b.i32), m.i32.const(1))], sig, b.none);
  m.addFunction('a', sig, b.none, [], m.block(null, [bump, m.if(m.local.get(0, b.i32), m.block(null, [viaTable, viaTable]))]));
  m.addFunction('b', sig, b.none, [], m.call('a', [m.local.get(0, b.i32)], b.none));
  m.addFunction('_start', b.none, b.none, [], m.call('a', [m.i32.const(40)], b.none));
  m.addTable('t', 2, 2);
  m.addActiveElementSegment('t', 'e', ['a', 'b'], m.i32.const(0));
  m.addFunctionExport('_start', '_start');
  assert.ok(m.validate(), 'the test module is valid');
  const bytes = m.emitBinary();
  m.dispose();
  return bytes;
}

test('recursion through the table, with no loop anywhere, pauses and resumes', async () => {
  const guest = await Guest.start({ module: tableRecursionModule() });
  const counter = (): number => new Int32Array(guest.memory.buffer, COUNTER, 1)[0]!;
  try {
    for (let i = 0; i < 5; i++) {
      await sleep(3);
      // Without entry safepoints in `a` and `b` this pause never comes (the test's timeout ends it).
      await guest.pause();
      const at = counter();
      await sleep(1);
      assert.equal(counter(), at, 'a paused guest does not count');
      guest.resume();
    }
    // It runs on after the resumes (waited for, not timed), and unwinds from an entry safepoint.
    const before = counter();
    while (counter() === before) await sleep(1);
    await guest.pause();
    assert.ok(guest.capture().exec.unwind, 'the guest unwound from a safepoint');
  } finally {
    await guest.stop();
  }
});
