// Loop-head-resumable functions (src/guest/loop-resume.ts, on by default; set here anyway): the liveness they
// save by, and a real program instrumented with them — GNU bc, whose parser and printf are chosen by
// the analysis — paused several times, captured, and restored over a copy of its memory, with the
// output of node:wasi byte for byte. Assertions on bytes and states only.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import binaryen from 'binaryen';
import { realPrograms, writeInputs } from '../bench/fixtures/real-programs.js';
import { Guest } from '../src/guest/guest.js';
import { ModuleCache } from '../src/guest/module-cache.js';
import { childVisitors } from '../src/guest/instrument.js';
import { liveAtLoopHeads, members } from '../src/guest/liveness.js';
import { readTree, preOrder, Kind, type WNode } from '../src/guest/wasm-tree.js';
import { deferWarmUp, startWarmUp } from '../src/guest/warm-up.js';
import { WARM_EXPORT_PREFIX } from '../src/guest/instrument-meta.js';
import { compileFixture, readText, waitFor, captureOverCopy, pausedAfterPauses } from './fixtures/guest/helpers.js';

process.env['FERRY_LOOP_RESUME'] = '1'; // read when instrumenting (this process and its threads)
const WASI_RUN = fileURLToPath(new URL('../bench/fixtures/wasi-run.js', import.meta.url));
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('liveness: a loop head keeps the locals read on some path from it before any write', () => {
  // $f(p0): l1 is written at the top of each iteration before it is read (dead at the head);
  // l2 carries a sum across iterations (live); p0 bounds the loop (live); l3 is read only after
  // the loop (live: the loop exits from its head's path).
  const mod = binaryen.parseText(`(module
    (func $f (param i32) (result i32) (local i32 i32 i32)
      (local.set 3 (i32.const 5))
      (loop $L
        (local.set 1 (i32.mul (local.get 0) (i32.const 3)))
        (local.set 2 (i32.add (local.get 2) (local.get 1)))
        (local.set 0 (i32.sub (local.get 0) (i32.const 1)))
        (br_if $L (local.get 0)))
      (i32.add (local.get 2) (local.get 3))))`);
  try {
    const f = binaryen.getFunctionInfo(mod.getFunction('$f') || mod.getFunctionByIndex(0));
    const tree = readTree(binaryen, childVisitors(binaryen), f.body);
    let loop: WNode | null = null;
    preOrder(tree, (n) => {
      if (n.kind === Kind.Loop) loop = n;
    });
    assert.ok(loop);
    const live = liveAtLoopHeads(tree, 4).get(loop);
    assert.deepEqual(members(live!), [0, 2, 3]);
  } finally {
    mod.dispose();
  }
});

/**
 * Runs `wasm` under node:wasi for the reference, then under Ferry (instrumented with loop-head
 * resumption: asserted), pausing it a few times and finally capturing it, stopping it and restoring
 * it over a copy of its memory; returns [reference, first run's output + restored run's output].
 */
async function pausedMovedAndReference(wasm: string, args: string[], files: Record<string, string | Uint8Array>, split = /\$ferry_fast/): Promise<[string, string]> {
  const root = mkdtempSync(join(tmpdir(), 'ferry-loop-resume-'));
  try {
    const work = join(root, 'work');
    writeInputs({ name: 'x', kind: 'interpreter', wasm, args, files, describe: '' }, work);
    const refOut = join(root, 'reference.out');
    const t0 = performance.now();
    const r = spawnSync(process.execPath, ['--no-warnings', WASI_RUN, wasm, work, refOut, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    const refMs = performance.now() - t0;
    assert.equal(r.status, 0, String(r.stderr));
    const ref = readFileSync(refOut);

    const cache = new ModuleCache(join(root, 'cache'));
    const module = readFileSync(wasm);
    const inst = await cache.load(module);
    assert.equal(inst.meta.loopResume, true);
    const text = Buffer.from(inst.binary).toString('latin1');
    assert.match(text, split, 'the analysis split the function expected');
    assert.match(text, /\$ferry_resume/);

    const first = join(root, 'first.out');
    const second = join(root, 'second.out');
    const preopens = [{ guestPath: '/work', hostPath: work }];
    /** One run paused a few times, captured and restored; false if it ended before its last pause. */
    const once = async (waitMs: number): Promise<boolean> => {
      const fd1 = openSync(first, 'w');
      const fd2 = openSync(second, 'w');
      try {
        const guest = await Guest.start({ module, args, stdio: { stdout: fd1 }, preopens, cache });
        let restored: Guest | null = null;
        try {
          if (!(await pausedAfterPauses(guest, 4, waitMs))) return false;
          const { state, memory } = await captureOverCopy(guest);
          assert.ok(state.exec.unwind, 'the guest unwound its stack at the pause');
          restored = await Guest.restore({ module, state, memory, stdio: { stdout: fd2 }, preopens, cache });
          assert.deepEqual(await restored.exited, { reason: 'exit', code: 0 });
          return true;
        } finally {
          if (guest.status !== 'stopped' && guest.status !== 'exited') await guest.stop();
          if (restored && restored.status !== 'exited') await restored.stop();
        }
      } finally {
        closeSync(fd1);
        closeSync(fd2);
      }
    };
    // The pauses spread over the run; should the guest end before its last pause on a busy machine,
    // once more with the pauses back to back (the guest runs only between a resume and the next pause).
    let moved = false;
    for (const waitMs of [Math.max(5, refMs * 0.03), 0]) if (!moved) moved = await once(waitMs);
    assert.ok(moved, 'the guest ended before its last pause even with the pauses back to back: the run is too short to test');
    return [ref.toString(), Buffer.concat([readFileSync(first), readFileSync(second)]).toString()];
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

test('an interpreter loop split for loop-head resumption pauses at its loop heads, moves, and prints what node:wasi prints', async () => {
  const [ref, got] = await pausedMovedAndReference(compileFixture('dispatch'), ['dispatch', 'run', '400000'], {});
  assert.match(ref, /^run 400000 \d+\n$/);
  assert.equal(got, ref);
});

test('a callback spinning through a function pointer called from a split interpreter loop pauses, moves, and prints what node:wasi prints', async () => {
  // The call is resumable (call-resume.ts): the callback's own loop unwinds, the interpreter loop
  // saves its state at the call and is re-entered there on resume.
  const [ref, got] = await pausedMovedAndReference(compileFixture('dispatch'), ['dispatch', 'callback', '100000000'], {});
  assert.match(ref, /^callback 100000000 \d+\n$/);
  assert.equal(got, ref);
});

// V8 compiles a Wasm function at its first call; warm-up.ts has each F$resume (and each big
// function, warm-exports.ts) compiled on a thread of its own through the `ferry_warm_<k>` exports,
// instead of on the guest thread at its first call. A warm call must return before it reads or writes anything: run on a throwaway
// instance, memory stays zero and no import is called.
test('each split function\'s resume copy (and each big function) has a warm export that compiles it and touches nothing; the warm-up thread calls them all', async () => {
  const root = mkdtempSync(join(tmpdir(), 'ferry-warm-'));
  try {
    const inst = await new ModuleCache(join(root, 'cache')).load(readFileSync(compileFixture('dispatch')));
    const module = new WebAssembly.Module(inst.binary as Uint8Array<ArrayBuffer>);
    const warm = WebAssembly.Module.exports(module).filter((e) => e.name.startsWith(WARM_EXPORT_PREFIX)).map((e) => e.name);
    // Resume copies of the split functions (chosen: big); an escaping function's copy, small, is
    // warmed only from 2048 expressions (INSTRUMENTATION_VERSION 17), and here none is that big.
    const text = Buffer.from(inst.binary).toString('latin1');
    const resumeCopies = new Set(text.match(/[A-Za-z_0-9]+\$ferry_resume/g) ?? []);
    const escaping = new Set((text.match(/[A-Za-z_0-9]+\$ferry_escape/g) ?? []).map((n) => n.replace(/\$ferry_escape$/, '$ferry_resume')));
    const chosen = [...resumeCopies].filter((n) => !escaping.has(n));
    assert.ok(warm.length > 0, 'the dispatch fixture has split functions');
    assert.ok(chosen.length > 0 && warm.length >= chosen.length, 'a warm export for each split function\'s resume copy at least');
    assert.ok(escaping.size > 0 && warm.length < resumeCopies.size, 'not one for every small escaping function\'s copy');
    const pages = inst.meta.memory.initialPages;
    const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
    const called: string[] = [];
    const imports: Record<string, Record<string, WebAssembly.ImportValue>> = {};
    for (const imp of WebAssembly.Module.imports(module)) {
      imports[imp.module] ??= {};
      imports[imp.module]![imp.name] = imp.kind === 'memory' ? memory : () => called.push(imp.name);
    }
    const instance = new WebAssembly.Instance(module, imports);
    for (const name of warm) (instance.exports[name] as () => void)();
    assert.deepEqual(called, []);
    assert.ok(new Uint8Array(memory.buffer).every((x) => x === 0), 'a warm call wrote guest memory');
    const keep = setInterval(() => undefined, 1000); // the warm-up thread is unref'd
    try {
      // A fresh start's warm-up is deferred: cancelled before its time, it never starts; asked
      // for (a pause request), it starts at once, long before its delay.
      const never = deferWarmUp(module, pages, 60_000);
      never.cancel();
      assert.equal(await never.done, 0, 'a deferred warm-up cancelled before it started warms nothing');
      const deferred = deferWarmUp(module, pages, 60_000);
      deferred.now();
      assert.equal(await deferred.done, warm.length, 'now() starts the deferred warm-up');
      assert.equal(await startWarmUp(module, pages).done, 0, 'a warmed module is not warmed again');
      // Each test module object is fresh: compile the same bytes again for the undeferred path.
      const again = new WebAssembly.Module(inst.binary as Uint8Array<ArrayBuffer>);
      assert.equal(await startWarmUp(again, pages).done, warm.length);
      // The code now lives in this module object: a later guest made from it (compiled-modules.ts
      // keeps it) starts no second warm-up, which would compile nothing new.
      assert.equal(await startWarmUp(again, pages).done, 0, 'a warmed module is not warmed again');
    } finally {
      clearInterval(keep);
    }
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});

test('bc, with functions split for loop-head resumption, pauses, moves and prints what node:wasi prints', async () => {
  const p = realPrograms(0.06).find((q) => q.name === 'bc')!;
  const [ref, got] = await pausedMovedAndReference(p.wasm, p.args, p.files);
  assert.equal(got, ref);
});

// interpret_expr (dispatch.c) uses the callback's result inside expressions (`if (cb(x))`,
// `sum += cb(x)`) and recurses from inside one: call-hoist.ts moves those calls into statements of
// their own, so the loop is split and each call is a resumable call site. Were one of them left
// in its expression, the pause would wait for the callback to return.
const SPLIT_EXPR = /interpret_expr\$ferry_fast/;

test('callbacks called from inside expressions of a split interpreter loop pause, move, and print what node:wasi prints', async () => {
  const [ref, got] = await pausedMovedAndReference(compileFixture('dispatch'), ['dispatch', 'expr', '120000000'], {}, SPLIT_EXPR);
  assert.match(ref, /^expr 120000000 \d+\n$/);
  assert.equal(got, ref);
});

// 10 000 levels of wrapper + F$resume (after a resume every level runs F$resume for the rest of its
// activation). TurboFan's frame for F$resume is several KB: Node's default 4 MiB worker stack held
// ~290 levels with the saved locals restored at each resume point, ~700-1000 with them restored at
// F$resume's entry (resume-steering.ts); the guest thread's stack is now GUEST_STACK_MB
// (spare-worker.ts). node:wasi itself reaches this depth on the main thread.
test('a split interpreter loop 10 000 calls deep in its own recursion, called from an expression, pauses, moves, and prints what node:wasi prints', { timeout: 180_000 }, async () => {
  const [ref, got] = await pausedMovedAndReference(compileFixture('dispatch'), ['dispatch', 'recurse', '10000', '60000000'], {}, SPLIT_EXPR);
  assert.match(ref, /^recurse 10000 60000000 \d+\n$/);
  assert.equal(got, ref);
});

for (const op of ['0', '1']) {
  const shape = op === '0' ? '`if (cb(x))`' : '`sum += cb(x)`';
  // The hang guard (timeout) only turns a pause that never lands into a failure.
  test(`a callback that never returns, called as ${shape} from a split interpreter loop, pauses, and pauses again after a restore`, { timeout: 240_000 }, async () => {
    const root = mkdtempSync(join(tmpdir(), 'ferry-loop-forever-'));
    const cache = new ModuleCache(join(root, 'cache'));
    const module = readFileSync(compileFixture('dispatch'));
    const args = ['dispatch', 'forever', op];
    const out = join(root, 'out.txt');
    const fd = openSync(out, 'w');
    let guest: Guest | null = null;
    let restored: Guest | null = null;
    try {
      const inst = await cache.load(module);
      assert.match(Buffer.from(inst.binary).toString('latin1'), SPLIT_EXPR, 'the interpreter loop is split');
      guest = await Guest.start({ module, args, stdio: { stdout: fd }, cache });
      await waitFor('the guest to reach its endless callback', () => readText(out) === `forever ${op}\n`);
      for (let i = 0; i < 3; i++) {
        await sleep(20);
        await guest.pause();
        assert.equal(guest.status, 'paused');
        guest.resume();
      }
      await guest.pause();
      const { state, memory } = await captureOverCopy(guest);
      assert.ok(state.exec.unwind, 'the guest unwound its stack at the pause');
      restored = await Guest.restore({ module, state, memory, stdio: { stdout: fd }, cache });
      for (let i = 0; i < 3; i++) {
        await sleep(20);
        assert.equal(restored.status, 'running', 'the restored guest is still in its endless callback');
        await restored.pause();
        assert.equal(restored.status, 'paused');
        restored.resume();
      }
      assert.equal(readText(out), `forever ${op}\n`, 'nothing printed after the callback was entered');
    } finally {
      if (guest && guest.status !== 'stopped' && guest.status !== 'exited') await guest.stop();
      if (restored && restored.status !== 'stopped' && restored.status !== 'exited') await restored.stop();
      closeSync(fd);
      rmSync(root, { recursive: true, force: true });
    }
  });
}

// Escape (loop-resume.ts, finishEscapes): functions too small to be worth a wrapper frame on
// every call — a leaf with a long loop, its allocating caller, a recursive function — are their
// own fast bodies and reach an Asyncify'd escape wrapper only to unwind or rewind. Pauses land in
// them (that is where the time goes) and the output must come out whole.
test('functions that escape (a leaf loop, its caller, a recursion) pause in their fast bodies, move, and print what node:wasi prints', async () => {
  const [ref, got] = await pausedMovedAndReference(compileFixture('escapes'), ['escapes', '12000', '100000'], {}, /fill\$ferry_escape[\s\S]*tree\$ferry_escape|tree\$ferry_escape[\s\S]*fill\$ferry_escape/);
  assert.match(ref, /^escapes 12000 100000 \d+\n$/);
  assert.equal(got, ref);
});
