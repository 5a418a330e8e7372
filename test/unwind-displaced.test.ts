// The Asyncify unwind buffer may lie on live guest data: Ferry grows fresh pages for it at the first
// pause, but wasi-libc's dlmalloc (clang 14's, no __heap_end) sizes its heap from memory.size() at
// its first malloc, so a guest whose first malloc comes after its first pause has its heap over
// those pages. Every later pause writes the unwound stack there; the bytes it overwrote must be put
// back when the rewind is done, locally and in a restored guest (ExecState.displaced).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { compileFixture, readText, tmpDir, useSharedCache, waitFor } from './fixtures/guest/helpers.js';
import { Guest } from '../src/guest/guest.js';
import { validateGuestState } from '../src/state/guest-state.js';

useSharedCache();

async function startHeapLate(tag: string): Promise<{ guest: Guest; outPath: string; client: net.Socket; clientErrors: Error[]; module: Buffer; block: [number, number] }> {
  const module = fs.readFileSync(compileFixture('heaplate'));
  const outPath = path.join(tmpDir(tag), 'stdout');
  const out = fs.openSync(outPath, 'w');
  const guest = await Guest.start({ module, args: ['heaplate'], listen: [{ host: '127.0.0.1', port: 0 }], stdio: { stdout: out } });
  void guest.exited.then(() => fs.closeSync(out));
  await waitFor('the blocking accept', () => readText(outPath).includes('READY'));
  // The first pause, before any malloc: it grows the unwind buffer's pages.
  await guest.pause();
  guest.resume();
  const client = net.connect(guest.listening[0]!.port, '127.0.0.1');
  // Recorded, not thrown uncaught: a test that expects none asserts it, with the guest's output beside it.
  const clientErrors: Error[] = [];
  client.on('error', (err) => clientErrors.push(err));
  await waitFor('the filled block', () => /FILLED \d+ \d+/.test(readText(outPath)));
  const [, at, bytes] = /FILLED (\d+) (\d+)/.exec(readText(outPath))!;
  return { guest, outPath, client, clientErrors, module, block: [Number(at), Number(at) + Number(bytes)] };
}

test('a pause whose unwind buffer lies in the heap leaves the heap as it was after the resume', async () => {
  const { guest, outPath, client, clientErrors, block } = await startHeapLate('heaplate-local');
  try {
    // Blocked in recv: pause (the unwind writes its data into the buffer), resume.
    await guest.pause();
    const { unwind } = guest.capture().exec;
    assert.ok(unwind !== null && unwind.ptr >= block[0] && unwind.ptr < block[1], 'the allocator took the unwind buffer into the block (the case under test)');
    guest.resume();
    client.write('x');
    assert.deepEqual(await guest.exited, { code: 0, reason: 'exit' });
    assert.match(readText(outPath), /BAD 0\n/, 'every byte of the block as the guest wrote it');
    assert.deepEqual(clientErrors, [], `the client saw no error: ${readText(outPath)}`);
  } finally {
    client.destroy();
    if (guest.status !== 'exited') await guest.stop();
  }
});

test('a guest restored from a state whose unwind overwrote heap bytes gets them back', async () => {
  const { guest, outPath, client, module } = await startHeapLate('heaplate-restore');
  let restored: Guest | null = null;
  try {
    await guest.pause();
    // Through the state's JSON form, as a snapshot or a migration carries it.
    const state = validateGuestState(JSON.parse(JSON.stringify(guest.capture())));
    const image = new Uint8Array(guest.memory.buffer, 0, state.memory.bytes).slice();
    // Stopping resets the connection, so the restored guest's recv fails (FAIL recv) and it exits;
    // its memory then shows whether the block came back whole.
    const outRestored = path.join(tmpDir('heaplate-restored'), 'stdout');
    // The stopped guest resets the connection: startHeapLate's listener records that error (not asserted here).
    await guest.stop();
    client.destroy();
    const memory = new WebAssembly.Memory({ initial: state.memory.bytes / 65536, maximum: state.memory.maxBytes / 65536, shared: true });
    new Uint8Array(memory.buffer).set(image);
    const fd = fs.openSync(outRestored, 'w');
    restored = await Guest.restore({ module, state, memory, stdio: { stdout: fd } });
    void restored.exited.then(() => fs.closeSync(fd));
    // Its recv (re-entered by the rewind) fails with ECONNRESET: exit 1 with FAIL recv.
    const exit = await restored.exited;
    assert.deepEqual(exit, { code: 1, reason: 'exit' }, readText(outRestored));
    const [, at, bytes] = /FILLED (\d+) (\d+)/.exec(readText(outPath))!;
    const block = new Uint8Array(memory.buffer, Number(at), Number(bytes));
    let bad = 0;
    for (let i = 0; i < block.length; i++) if (block[i] !== ((i * 131 + 7) >> 3) % 256) bad++;
    assert.equal(bad, 0, 'every byte of the block in the restored guest');
  } finally {
    client.destroy();
    if (guest.status !== 'exited' && guest.status !== 'stopped') await guest.stop();
    if (restored && restored.status !== 'exited') await restored.stop();
  }
});
