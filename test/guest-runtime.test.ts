// The guest runtime in one process: real guests (guests/build/*.wasm) run under Guest, paused and
// resumed at safepoints many times, and checked by their own output (memtouch verifies every page
// and numbers its progress lines; compute's RESULT depends only on its iteration count).
import { test } from 'node:test';
import { WASI } from 'node:wasi';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { assertConsecutive, guestModule, readText, seqNumbers, sleep, tmpDir, useSharedCache, waitFor } from './fixtures/guest/helpers.js';
import { Guest, type GuestExit } from '../src/guest/guest.js';
import { decodeGuestState, encodeGuestState } from '../src/state/guest-state.js';
import { bundleIfFresh, guestWorkerScript, startSpareWorker, takeSpareWorker } from '../src/guest/spare-worker.js';
import { KEPT_MODULES, compiledModule, keptModule } from '../src/guest/compiled-modules.js';
import { ModuleCache } from '../src/guest/module-cache.js';
import { FERRY_TIERING_BUDGET, tieringBudget } from '../src/guest/tiering.js';

useSharedCache();

/** A stdout file for a guest: its path and a host fd the guest writes to. */
function stdoutFile(tag: string): { path: string; fd: number } {
  const p = path.join(tmpDir(tag), 'stdout');
  return { path: p, fd: fs.openSync(p, 'w') };
}

test('memtouch fills and verifies 256 MiB under Ferry', async () => {
  const out = stdoutFile('mt256');
  const guest = await Guest.start({
    module: guestModule('memtouch'),
    args: ['memtouch', '--mib', '256', '--seconds', '0.01'],
    stdio: { stdout: out.fd },
  });
  const exit = await guest.exited;
  fs.closeSync(out.fd);
  const text = readText(out.path);
  assert.deepEqual(exit, { code: 0, reason: 'exit' }, text);
  assert.match(text, /^START pages=65536 /m);
  assert.match(text, /^VERIFY OK 65536$/m);
  assert.ok(guest.memory.buffer.byteLength >= 256 * 1024 * 1024, 'the guest memory holds the working set');
});

test('memtouch paused and resumed 100 times verifies, and its SEQ lines have no gap or repeat', async () => {
  const work = tmpDir('mt-pauses');
  const out = stdoutFile('mt-pauses-out');
  const guest = await Guest.start({
    module: guestModule('memtouch'),
    args: ['memtouch', '--mib', '16', '--report-ms', '5', '--verify-file', '/work/verify'],
    preopens: [{ guestPath: '/work', hostPath: work }],
    stdio: { stdout: out.fd },
  });
  let pausedEvents = 0;
  guest.on('paused', () => pausedEvents++);
  await waitFor('the first SEQ line', () => seqNumbers(readText(out.path)).length > 0);
  for (let i = 0; i < 100; i++) {
    await guest.pause();
    assert.equal(guest.status, 'paused');
    if (i % 25 === 0) {
      // A capture of a paused guest survives encoding and validation unchanged.
      const state = guest.capture();
      assert.deepEqual(decodeGuestState(encodeGuestState(state)), state);
      assert.ok(state.exec.unwind, 'a paused guest has an unwound stack');
    }
    guest.resume();
    assert.equal(guest.status, 'running');
    await sleep(i % 4); // vary where the next pause lands
  }
  assert.equal(pausedEvents, 100);
  const seqBefore = seqNumbers(readText(out.path)).length;
  await waitFor('more SEQ lines after the last resume', () => seqNumbers(readText(out.path)).length > seqBefore + 2);
  fs.writeFileSync(path.join(work, 'verify'), '');
  const exit = await guest.exited;
  fs.closeSync(out.fd);
  const text = readText(out.path);
  assert.deepEqual(exit, { code: 0, reason: 'exit' }, text);
  assert.match(text, /^VERIFY OK 4096$/m);
  const seq = seqNumbers(text);
  assert.ok(seq.length > 3);
  assertConsecutive(seq);
});

/** compute's RESULT from the original module under node:wasi (no Ferry instrumentation). */
async function computeUninstrumented(iterations: number): Promise<string> {
  const out = stdoutFile('compute-plain');
  const wasi = new WASI({ version: 'preview1', args: ['compute', '--iterations', String(iterations)], stdout: out.fd, returnOnExit: true });
  const instance = await WebAssembly.instantiate(await WebAssembly.compile(guestModule('compute') as Uint8Array<ArrayBuffer>), wasi.getImportObject() as WebAssembly.Imports);
  assert.equal(wasi.start(instance), 0);
  fs.closeSync(out.fd);
  const m = /^RESULT ([0-9a-f]{16})$/m.exec(readText(out.path));
  assert.ok(m, `uninstrumented compute printed no RESULT: ${readText(out.path)}`);
  return m[1]!;
}

/** Runs compute to its end; with `pauses`, pauses and resumes it as often as it can meanwhile. */
async function runCompute(iterations: number, pauses: boolean): Promise<{ result: string; pauses: number; exit: GuestExit }> {
  const out = stdoutFile('compute');
  const guest = await Guest.start({ module: guestModule('compute'), args: ['compute', '--iterations', String(iterations)], stdio: { stdout: out.fd } });
  let count = 0;
  let ended = false;
  void guest.exited.then(() => (ended = true));
  while (pauses && !ended) {
    try {
      await guest.pause();
    } catch (err) {
      if ((err as { code?: string }).code === 'guest-ended') break; // it finished while we asked
      throw err;
    }
    count++;
    guest.resume();
    if (count % 8 === 0) await sleep(1);
  }
  const exit = await guest.exited;
  fs.closeSync(out.fd);
  const m = /^RESULT ([0-9a-f]{16})$/m.exec(readText(out.path));
  assert.ok(m, `compute printed no RESULT: ${readText(out.path)}`);
  return { result: m[1]!, pauses: count, exit };
}

test('compute paused and resumed many times prints the same RESULT as an uninterrupted run', async () => {
  // About a second of guest time (~0.2 s at 30000 could end before 10 pauses landed on a starved
  // main thread); the pauses themselves only make the run longer.
  const iterations = 200000;
  const plain = await runCompute(iterations, false);
  assert.deepEqual(plain.exit, { code: 0, reason: 'exit' });
  const paused = await runCompute(iterations, true);
  assert.deepEqual(paused.exit, { code: 0, reason: 'exit' });
  assert.ok(paused.pauses >= 10, `only ${paused.pauses} pauses landed before compute finished`);
  assert.equal(paused.result, plain.result);
  // And a different iteration count gives a different result (the check can fail).
  const other = await runCompute(iterations + 1, false);
  assert.notEqual(other.result, plain.result);
  // The instrumentation (safepoints, amortised loop checks, Asyncify) changes no result: the
  // original module under Node's own WASI computes the same.
  assert.equal(await computeUninstrumented(iterations), plain.result);
});

test('stop() on a paused guest ends it without running more guest code', async () => {
  const out = stdoutFile('mt-stop');
  const guest = await Guest.start({ module: guestModule('memtouch'), args: ['memtouch', '--mib', '4', '--report-ms', '2'], stdio: { stdout: out.fd } });
  await waitFor('a SEQ line', () => seqNumbers(readText(out.path)).length > 0);
  await guest.pause();
  const size = fs.fstatSync(out.fd).size;
  const exit = await guest.stop();
  assert.deepEqual(exit, { code: null, reason: 'stopped' });
  assert.equal(guest.status, 'stopped');
  await sleep(50);
  assert.equal(fs.fstatSync(out.fd).size, size, 'a stopped guest wrote nothing more');
  assert.throws(() => guest.resume(), /cannot resume a guest that is stopped/);
  await assert.rejects(guest.pause(), /cannot pause: the guest has stopped/);
  fs.closeSync(out.fd);
});

test('a guest adopts a spare worker started before it (as `ferry run` does), pauses, resumes and ends normally', async () => {
  startSpareWorker();
  const work = tmpDir('spare-work');
  const out = stdoutFile('spare');
  // It runs until the test writes its verify file (no --seconds): the pause below cannot find it ended.
  const guest = await Guest.start({
    module: guestModule('memtouch'), args: ['memtouch', '--mib', '4', '--report-ms', '20', '--verify-file', '/work/verify'],
    preopens: [{ guestPath: '/work', hostPath: work }], stdio: { stdout: out.fd },
  });
  assert.equal(takeSpareWorker(), null, 'the guest took the spare worker (no second thread started)');
  await waitFor('the first SEQ line', () => seqNumbers(readText(out.path)).length > 0);
  await guest.pause();
  assert.ok(guest.capture().exec.unwind, 'paused at a safepoint on the spare thread');
  guest.resume();
  const seqBefore = seqNumbers(readText(out.path)).length;
  await waitFor('a SEQ line after the resume', () => seqNumbers(readText(out.path)).length > seqBefore);
  fs.writeFileSync(path.join(work, 'verify'), '');
  const exit = await guest.exited;
  fs.closeSync(out.fd);
  assert.deepEqual(exit, { code: 0, reason: 'exit' });
  assert.match(readText(out.path), /^VERIFY OK /m);
});

test('guests run the one-file bundle of the worker that `npm run build` makes, and never a bundle older than worker.js', () => {
  // npm test builds first (package.json), so here the bundle exists and is fresh: every guest of
  // the suite ran from it.
  assert.match(guestWorkerScript().pathname, /\/worker\.boot\.cjs$/, 'the bundle, through the boot script that loads it with its code cache');
  const dir = tmpDir('bundle-pick');
  const plain = path.join(dir, 'worker.js');
  const bundle = path.join(dir, 'worker.bundle.cjs');
  const url = (p: string) => new URL(`file://${p}`);
  fs.writeFileSync(plain, '');
  assert.equal(bundleIfFresh(url(bundle), url(plain)).pathname, plain, 'no bundle: the plain script');
  fs.writeFileSync(bundle, '');
  fs.utimesSync(plain, new Date(1000_000), new Date(1000_000));
  assert.equal(bundleIfFresh(url(bundle), url(plain)).pathname, bundle, 'a bundle made after the script');
  fs.utimesSync(bundle, new Date(500_000), new Date(500_000));
  assert.equal(bundleIfFresh(url(bundle), url(plain)).pathname, plain, 'a bundle older than the script (tsc ran after it) is stale');
});

test('the Wasm tier-up budget guests get: raised by default, set by FERRY_WASM_TIERING_BUDGET, never over one node was started with', () => {
  assert.equal(tieringBudget({}, []), FERRY_TIERING_BUDGET);
  assert.equal(tieringBudget({ FERRY_WASM_TIERING_BUDGET: '5000000' }, []), 5_000_000);
  assert.equal(tieringBudget({ FERRY_WASM_TIERING_BUDGET: '0' }, []), null, '0 leaves V8 its own');
  assert.equal(tieringBudget({}, ['--wasm-tiering-budget=100']), null, 'a budget on the command line wins');
  assert.equal(tieringBudget({ NODE_OPTIONS: '--wasm-tiering-budget=100' }, []), null, 'and one in NODE_OPTIONS');
  for (const bad of ['lots', '-1', '1.5']) assert.throws(() => tieringBudget({ FERRY_WASM_TIERING_BUDGET: bad }, []), /FERRY_WASM_TIERING_BUDGET must be/);
});

test('guests of the same module share one compiled module, kept for the next (at most KEPT_MODULES of them)', async () => {
  const cache = new ModuleCache();
  const mod = await cache.load(guestModule('memtouch'));
  // Other modules push a module out once KEPT_MODULES were used after it.
  const others = Array.from({ length: KEPT_MODULES }, (_, i) => ({ ...mod, entryDir: `${mod.entryDir}-other-${i}` }));
  others.forEach((m) => compiledModule(m));
  assert.equal(keptModule(mod), undefined);
  const out = stdoutFile('compiled');
  const guest = await Guest.start({ module: guestModule('memtouch'), args: ['memtouch', '--mib', '1', '--seconds', '0.1'], stdio: { stdout: out.fd } });
  assert.deepEqual(await guest.exited, { code: 0, reason: 'exit' });
  fs.closeSync(out.fd);
  const first = keptModule(mod);
  assert.ok(first, 'a started guest left its compiled module for the next');
  assert.equal(compiledModule(await cache.load(guestModule('memtouch'))), first, 'the next guest gets it');
  // The same entry instrumented with other settings (another process, FERRY_ESCAPE=0) is another module.
  const other = { ...mod, meta: { ...mod.meta, escape: !mod.meta.escape } };
  assert.equal(keptModule(other), undefined, 'the entry instrumented otherwise is not the kept module');
  others.forEach((m) => compiledModule(m));
  assert.equal(keptModule(mod), undefined, 'the least recently used module was dropped');
  // Two guests at once on the shared module each run on their own instance.
  const outs = [stdoutFile('shared-a'), stdoutFile('shared-b')];
  const guests = await Promise.all(outs.map((out) => Guest.start({ module: guestModule('memtouch'), args: ['memtouch', '--mib', '4', '--seconds', '0.2', '--report-ms', '20'], stdio: { stdout: out.fd } })));
  for (const [i, g] of guests.entries()) {
    assert.deepEqual(await g.exited, { code: 0, reason: 'exit' });
    fs.closeSync(outs[i]!.fd);
    assert.match(readText(outs[i]!.path), /^VERIFY OK /m);
  }
});
