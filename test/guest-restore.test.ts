// Capture → restore in a NEW process: a guest is paused and captured here, its memory image and
// encoded state are written to files, the guest here is stopped, and a fresh node process
// (test/fixtures/guest/restore-guest.ts) rebuilds it from those files and the original module.
// The guests' own output proves the continuation: SEQ numbers continue without a gap or repeat,
// memtouch verifies every page, fileio's files continue at their offsets, clocks never go back.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import {
  GUESTS,
  RESTORE_SCRIPT,
  assertConsecutive,
  compileFixture,
  guestModule,
  readText,
  seqNumbers,
  sleep,
  tmpDir,
  useSharedCache,
  waitFor,
} from './fixtures/guest/helpers.js';
import type { RestoreSpec } from './fixtures/guest/restore-guest.js';
import { Guest } from '../src/guest/guest.js';
import { encodeGuestState, type GuestState } from '../src/state/guest-state.js';
import { runtimePageRuns, unwoundEnd, withoutRuns } from '../src/state/exec-state.js';
import type { Preopen } from '../src/wasi/wasi.js';

useSharedCache();

interface Moved {
  /** stdout of the guest on the old side (closed, final). */
  before: string;
  /** stdout path of the restored guest in the new process. */
  afterPath: string;
  /** The new process's exit code, once it ends. */
  exitCode: Promise<number>;
  stderr: () => string;
}

/**
 * Starts `modulePath` here, waits for `ready(stdout)`, pauses, captures, writes memory + state to
 * files, stops the guest (checking it prints nothing more), and restores it in a new process.
 * `editState` may change the captured state first (to simulate another host).
 */
async function moveToNewProcess(opts: {
  modulePath: string;
  args: string[];
  preopens?: Preopen[];
  ready: (stdout: string) => boolean;
  editState?: (s: GuestState) => void;
  /** May change the memory image the new process gets (the old guest is stopped by then). */
  editMemory?: (image: Uint8Array, s: GuestState) => void;
}): Promise<Moved> {
  const dir = tmpDir('restore');
  const outPath = path.join(dir, 'stdout.before');
  const outFd = fs.openSync(outPath, 'w');
  const module = fs.readFileSync(opts.modulePath);
  const guest = await Guest.start({ module, args: opts.args, preopens: opts.preopens ?? [], stdio: { stdout: outFd } });
  await waitFor('the guest to get going', () => opts.ready(readText(outPath)));
  await guest.pause();
  const state = guest.capture();
  const sizeAtCapture = fs.fstatSync(outFd).size;
  const exit = await guest.stop();
  assert.deepEqual(exit, { code: null, reason: 'stopped' });
  await sleep(30);
  assert.equal(fs.fstatSync(outFd).size, sizeAtCapture, 'the old guest printed nothing after the capture');
  fs.closeSync(outFd);
  opts.editState?.(state);

  const spec: RestoreSpec = {
    module: opts.modulePath,
    state: path.join(dir, 'state.json'),
    memory: path.join(dir, 'memory.bin'),
    stdout: path.join(dir, 'stdout.after'),
    preopens: opts.preopens ?? [],
  };
  fs.writeFileSync(spec.state, encodeGuestState(state));
  const image = new Uint8Array(guest.memory.buffer, 0, state.memory.bytes);
  opts.editMemory?.(image, state);
  fs.writeFileSync(spec.memory, image);
  fs.writeFileSync(spec.stdout, '');
  const specPath = path.join(dir, 'spec.json');
  fs.writeFileSync(specPath, JSON.stringify(spec));
  const child = spawn(process.execPath, [RESTORE_SCRIPT, specPath], { stdio: ['ignore', 'ignore', 'pipe'], env: process.env });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exitCode = new Promise<number>((resolve) => child.on('exit', (code, signal) => resolve(code ?? (signal ? 128 : -1))));
  return { before: readText(outPath), afterPath: spec.stdout, exitCode, stderr: () => stderr };
}

test('memtouch captured here continues in a new process: SEQ continues, VERIFY OK', async () => {
  const work = tmpDir('mt-move');
  const moved = await moveToNewProcess({
    modulePath: path.join(GUESTS, 'memtouch.wasm'),
    args: ['memtouch', '--mib', '32', '--report-ms', '10', '--verify-file', '/work/verify'],
    preopens: [{ guestPath: '/work', hostPath: work }],
    ready: (out) => seqNumbers(out).length >= 5,
  });
  const seqBefore = seqNumbers(moved.before);
  assert.ok(seqBefore.length >= 5);
  await waitFor('SEQ lines from the restored guest', () => seqNumbers(readText(moved.afterPath)).length >= 5, 90_000);
  fs.writeFileSync(path.join(work, 'verify'), '');
  const code = await moved.exitCode;
  const after = readText(moved.afterPath);
  assert.equal(code, 0, `${after}\n${moved.stderr()}`);
  assert.doesNotMatch(after, /^START/m, 'the restored guest did not start over');
  assert.match(after, /^VERIFY OK 8192$/m);
  assertConsecutive([...seqBefore, ...seqNumbers(after)]);
});

test('a resume reads the unwound stack only as far as the unwind wrote: the rest of the buffer zeroed, memtouch continues', async () => {
  const work = tmpDir('mt-unwound');
  let zeroed = 0;
  const moved = await moveToNewProcess({
    modulePath: path.join(GUESTS, 'memtouch.wasm'),
    args: ['memtouch', '--mib', '8', '--report-ms', '10', '--verify-file', '/work/verify'],
    preopens: [{ guestPath: '/work', hostPath: work }],
    ready: (out) => seqNumbers(out).length >= 3,
    editMemory: (image, state) => {
      const pages = image.length / 4096;
      const end = unwoundEnd(state.exec, image);
      const { ptr, size } = state.exec.unwind!;
      assert.ok(end !== undefined && end > ptr + 8 && end < ptr + size, `the unwind wrote ${end! - ptr} of ${size} bytes`);
      const kept = new Set(runtimePageRuns(state.exec, pages, end).flatMap(([a, b]) => Array.from({ length: b - a }, (_, i) => a + i)));
      for (let p = Math.floor(ptr / 4096); p < (ptr + size) / 4096; p++) {
        if (kept.has(p)) continue;
        image.fill(0, p * 4096, (p + 1) * 4096);
        zeroed++;
      }
    },
  });
  assert.ok(zeroed >= 32, `most of the 64 KiB-multiple unwind buffer is left out (${zeroed} pages)`);
  await waitFor('SEQ lines from the restored guest', () => seqNumbers(readText(moved.afterPath)).length >= 3, 90_000);
  fs.writeFileSync(path.join(work, 'verify'), '');
  const code = await moved.exitCode;
  const after = readText(moved.afterPath);
  assert.equal(code, 0, `${after}\n${moved.stderr()}`);
  assert.match(after, /^VERIFY OK 2048$/m);
  assertConsecutive([...seqNumbers(moved.before), ...seqNumbers(after)]);
});

test('the unwound end is read as an address: an unwind buffer above 2 GiB keeps only the pages it wrote', () => {
  // A 2 GiB + 64 KiB memory, committed lazily: only the page written here is ever backed.
  const mem = new WebAssembly.Memory({ initial: 32769, maximum: 32769 });
  const image = new Uint8Array(mem.buffer);
  const ptr = 2 ** 31 + 4096; // the buffer's header: where its data ends, then its limit
  const end = ptr + 8 + 300;
  new DataView(mem.buffer).setUint32(ptr, end, true);
  const exec = { unwind: { ptr, size: 16 * 4096 } } as Parameters<typeof unwoundEnd>[0];
  assert.equal(unwoundEnd(exec, image), end);
  const pages = image.length / 4096;
  assert.deepEqual(runtimePageRuns(exec, pages, unwoundEnd(exec, image)), [[0, 1], [ptr / 4096, ptr / 4096 + 1]]);
});

test('withoutRuns leaves the runtime\'s pages out of a DISCARD: whole runs, split runs, spans, ends', () => {
  assert.deepEqual(withoutRuns([[0, 2], [17, 18], [40, 60]], [[0, 1], [45, 50]]), [[1, 2], [17, 18], [40, 45], [50, 60]]);
  assert.deepEqual(withoutRuns([[5, 6]], [[0, 10]]), []);
  assert.deepEqual(withoutRuns([[5, 10]], []), [[5, 10]]);
  assert.deepEqual(withoutRuns([[1, 3], [4, 6], [7, 9], [12, 13]], [[2, 8], [12, 13]]), [[1, 2], [8, 9]], 'a cut across several runs');
  assert.deepEqual(withoutRuns([[1, 3], [4, 6]], [[3, 4]]), [[1, 3], [4, 6]], 'a cut between runs');
});

test('fileio captured mid-file continues at the right offsets in a new process', async () => {
  const data = tmpDir('fileio-move');
  const lines = 40;
  const input = Array.from({ length: lines }, (_, i) => `input-${i + 1}-${'x'.repeat(i % 7)}`);
  fs.writeFileSync(path.join(data, 'in.txt'), input.join('\n') + '\n');
  fs.writeFileSync(path.join(data, 'out.log'), 'PRELUDE\n'); // opened for append: must survive
  const moved = await moveToNewProcess({
    modulePath: path.join(GUESTS, 'fileio.wasm'),
    args: ['fileio', '--dir', '/data', '--lines', String(lines), '--interval-ms', '10'],
    preopens: [{ guestPath: '/data', hostPath: data }],
    ready: (out) => seqNumbers(out).length >= 8,
  });
  const code = await moved.exitCode;
  const after = readText(moved.afterPath);
  assert.equal(code, 0, `${after}\n${moved.stderr()}`);
  assert.ok(seqNumbers(after).length > 0, 'the restored guest did part of the work');
  const all = moved.before + after;
  assertConsecutive(seqNumbers(all));
  assert.equal(seqNumbers(all).length, lines);
  assert.match(after, new RegExp(`^DONE ${lines}$`, 'm'));
  // in.txt was read one byte at a time: the restored descriptor continued at its offset.
  assert.deepEqual([...all.matchAll(/^IN (.*)$/gm)].map((m) => m[1]), input);
  // out.log (append) holds every LINE n exactly once, in order, after what was there before.
  const log = fs.readFileSync(path.join(data, 'out.log'), 'utf8').split('\n').filter((l) => l !== '');
  assert.deepEqual(log, ['PRELUDE', ...Array.from({ length: lines }, (_, i) => `LINE ${i + 1}`)]);
});

test('the monotonic clock never goes backwards across a capture and a restore on a "host" whose clock is ahead', async () => {
  const wasm = compileFixture('clockloop');
  const n = 150;
  // The captured clock is moved one hour ahead, as if the source host had been up an hour longer:
  // the restored guest must continue from there, not from this host's (smaller) clock.
  const hourNs = 3_600_000_000_000n;
  let capturedNs = 0n;
  const moved = await moveToNewProcess({
    modulePath: wasm,
    args: ['clockloop', String(n), '3'],
    ready: (out) => (out.match(/^T /gm)?.length ?? 0) >= 20,
    editState: (s) => {
      capturedNs = BigInt(s.wasi.clocks.monotonicNs) + hourNs;
      s.wasi.clocks.monotonicNs = capturedNs.toString();
      if (s.wasi.pendingPoll) s.wasi.pendingPoll.deadlineNs = (BigInt(s.wasi.pendingPoll.deadlineNs) + hourNs).toString();
    },
  });
  const code = await moved.exitCode;
  const after = readText(moved.afterPath);
  assert.equal(code, 0, `${after}\n${moved.stderr()}`);
  const samples = [...(moved.before + after).matchAll(/^T (\d+) (\d+)$/gm)].map((m) => ({ i: Number(m[1]), ns: BigInt(m[2]!) }));
  assert.deepEqual(samples.map((s) => s.i), Array.from({ length: n }, (_, k) => k + 1), 'every sample exactly once');
  for (let k = 1; k < samples.length; k++) {
    assert.ok(samples[k]!.ns >= samples[k - 1]!.ns, `clock went back at sample ${samples[k]!.i}: ${samples[k - 1]!.ns} → ${samples[k]!.ns}`);
  }
  const firstAfter = [...after.matchAll(/^T (\d+) (\d+)$/gm)][0];
  assert.ok(firstAfter, 'the restored guest sampled the clock');
  assert.ok(BigInt(firstAfter[2]!) >= capturedNs, 'the restored clock continues from the captured value');
});

test('a restored guest is refused for a state of another module', async () => {
  const out = fs.openSync(path.join(tmpDir('mismatch'), 'stdout'), 'w');
  const guest = await Guest.start({ module: guestModule('memtouch'), args: ['memtouch', '--mib', '1', '--idle', '--report-ms', '5'], stdio: { stdout: out } });
  await guest.pause();
  const state = guest.capture();
  const memory = new WebAssembly.Memory({ initial: state.memory.bytes / 65536, maximum: state.memory.maxBytes / 65536, shared: true });
  await assert.rejects(Guest.restore({ module: guestModule('compute'), state, memory }), (err: Error) => {
    assert.match(err.message, /state belongs to module/);
    return true;
  });
  await guest.stop();
  fs.closeSync(out);
});

// A migration destination stages the state while the last pages arrive and says go at the commit.
// Go may come before the worker has even taken the launch (the word then holds Go, not Launch), or
// long after: both must run the guest exactly once, continuing its sequence.
for (const when of ['at once', 'after the staging'] as const) {
  test(`a staged restore told to go ${when} continues the guest`, async () => {
    const dir = tmpDir('staged');
    const beforePath = path.join(dir, 'before');
    const before = fs.openSync(beforePath, 'w');
    const args = ['memtouch', '--mib', '4', '--report-ms', '5'];
    const guest = await Guest.start({ module: guestModule('memtouch'), args, stdio: { stdout: before } });
    await waitFor('SEQ lines', () => seqNumbers(readText(beforePath)).length >= 3);
    await guest.pause();
    const state = guest.capture();
    await guest.stop();
    fs.closeSync(before);
    // Staged over empty memory, as a destination stages while the last pages still arrive: the
    // pages are put in only after staging, and staging must not have read or written any of them.
    const memory = new WebAssembly.Memory({ initial: state.memory.bytes / 65536, maximum: state.memory.maxBytes / 65536, shared: true });
    const afterPath = path.join(dir, 'after');
    const after = fs.openSync(afterPath, 'w');
    const prepared = await Guest.prepare({ module: guestModule('memtouch'), memory, maxMemoryBytes: state.memory.maxBytes });
    const staged = prepared.stageRestore(state, { stdio: { stdout: after } });
    if (when === 'after the staging') {
      await sleep(200);
      assert.equal(readText(afterPath), '', 'a staged guest runs no code before go()');
    }
    const view = new Uint8Array(memory.buffer, 0, state.memory.bytes);
    assert.equal(view.findIndex((b) => b !== 0), -1, 'staging wrote nothing to guest memory');
    view.set(new Uint8Array(guest.memory.buffer, 0, state.memory.bytes));
    const restored = await staged.go();
    await waitFor('SEQ lines from the restored guest', () => seqNumbers(readText(afterPath)).length >= 3);
    await restored.stop();
    fs.closeSync(after);
    assertConsecutive([...seqNumbers(readText(beforePath)), ...seqNumbers(readText(afterPath))]);
  });
}
