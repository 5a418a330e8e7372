// WASI sockets, blocking and not (test/fixtures/guest/sockecho.c through wasi-libc's accept, recv,
// send, fcntl and shutdown): a guest blocked in accept, in recv or in send pauses, is captured,
// resumes, and the call then completes exactly (no byte lost or repeated); non-blocking calls say EAGAIN.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { compileFixture, readText, tmpDir, useSharedCache, waitFor } from './fixtures/guest/helpers.js';
import { Guest } from '../src/guest/guest.js';

useSharedCache();

const SEND_BYTES = 8 << 20;

/** Pauses, checks the guest is captured where we think (its state names the call's socket), resumes. */
async function pauseResume(guest: Guest, expectSockets: number): Promise<void> {
  await guest.pause();
  assert.equal(guest.status, 'paused');
  const fds = guest.capture().wasi.fds;
  assert.equal(fds.filter((f) => f.kind === 'socket').length, expectSockets);
  guest.resume();
}

test('a guest blocked in accept, recv or send pauses and resumes exactly; non-blocking calls get EAGAIN', async () => {
  const modulePath = compileFixture('sockecho');
  const dir = tmpDir('sockecho');
  const outPath = path.join(dir, 'stdout');
  const out = fs.openSync(outPath, 'w');
  const guest = await Guest.start({ module: fs.readFileSync(modulePath), args: ['sockecho'], listen: [{ host: '127.0.0.1', port: 0 }], stdio: { stdout: out } });
  void guest.exited.then(() => fs.closeSync(out));
  const port = guest.listening[0]!.port;
  try {
    await waitFor('the fixture to reach its blocking accept', () => readText(outPath).includes('READY'));
    // Blocked in accept: pause and resume a few times; nothing was accepted.
    for (let i = 0; i < 3; i++) await pauseResume(guest, 0);
    assert.doesNotMatch(readText(outPath), /ACCEPTED/);

    const client = net.connect(port, '127.0.0.1');
    // Recorded, not thrown: a reset then fails the assertion at the end with the guest's output beside it.
    const clientErrors: Error[] = [];
    client.on('error', (err) => clientErrors.push(err));
    const received: Buffer[] = [];
    let receivedBytes = 0;
    // Until the test lets the big send through, the client stops reading as soon as the echo is in:
    // pausing only once the test has seen the echo would let the guest's 8 MiB send run on meanwhile.
    let holdAfterEcho = true;
    client.on('data', (d: Buffer) => {
      received.push(d);
      receivedBytes += d.length;
      if (holdAfterEcho && receivedBytes >= 8) client.pause();
    });
    // Listened for from the start: the guest's shutdown follows its last send at once, and an
    // 'end' emitted before a late listener was attached would leave the test waiting forever.
    const peerEnded = new Promise<void>((resolve) => client.once('end', () => resolve()));
    await waitFor('the accept', () => readText(outPath).includes('ACCEPTED'));
    // Blocked in recv (MSG_WAITALL, 8 bytes): half the bytes, a pause, the rest while paused.
    client.write('abcd');
    await pauseResume(guest, 1);
    await guest.pause();
    client.write('efgh');
    await new Promise((r) => setTimeout(r, 50));
    assert.doesNotMatch(readText(outPath), /ECHOED/, 'nothing runs while paused');
    guest.resume();
    await waitFor('the echo', () => readText(outPath).includes('ECHOED abcdefgh'));
    await waitFor('the non-blocking recv', () => readText(outPath).includes('NONBLOCK EAGAIN'));
    // The guest's line is in the file before this process's event loop has read the echo off the socket.
    await waitFor('the echo at the client', () => receivedBytes >= 8);
    assert.equal(Buffer.concat(received).subarray(0, 8).toString(), 'abcdefgh');

    // Blocked in send: 8 MiB to a client that does not read, so the send fills the buffers and waits.
    client.pause();
    await waitFor('the big send to start', () => readText(outPath).includes('NONBLOCK EAGAIN'));
    await new Promise((r) => setTimeout(r, 100));
    for (let i = 0; i < 3; i++) await pauseResume(guest, 1);
    assert.doesNotMatch(readText(outPath), /SENT/, 'the send is still blocked on the full buffers');
    holdAfterEcho = false;
    client.resume();
    await waitFor('every byte', () => receivedBytes >= 8 + SEND_BYTES);
    await waitFor('the send to finish', () => readText(outPath).includes(`SENT ${SEND_BYTES}`));
    const body = Buffer.concat(received).subarray(8);
    assert.equal(body.length, SEND_BYTES, 'no byte lost or repeated');
    const expected = Buffer.alloc(SEND_BYTES);
    for (let i = 0; i < SEND_BYTES; i++) expected[i] = 65 + (i % 23);
    let firstBad = -1;
    for (let i = 0; i < SEND_BYTES && firstBad < 0; i++) if (body[i] !== expected[i]) firstBad = i;
    assert.equal(firstBad, -1, 'every byte in order');
    // shutdown(SHUT_WR) from the guest: the client sees the end of the stream, then ends its side.
    await peerEnded;
    client.end();
    const exit = await guest.exited;
    assert.deepEqual(exit, { code: 0, reason: 'exit' }, readText(outPath));
    assert.match(readText(outPath), /PEER END 0/);
    assert.deepEqual(clientErrors, [], 'the client saw no error');
  } finally {
    await guest.stop();
  }
});
