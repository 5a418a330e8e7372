// Network services as guests (issue 16, first stage): guests/build/kvserver.wasm, a Redis-protocol
// key-value server, serves real TCP clients on loopback through a listening socket the runtime
// preopens (`listen`). Every answer is checked; a pause in the middle of the traffic holds every
// client's answers back and the resume lets them all continue; a snapshot keeps the listener and
// resets the connections (the peer sees a reset, the restored guest gets ECONNRESET).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { GUESTS, readText, tmpDir, useSharedCache, waitFor } from './fixtures/guest/helpers.js';
import { Guest } from '../src/guest/guest.js';
import { FILETYPE } from '../src/wasi/constants.js';

useSharedCache();

const MODULE = path.join(GUESTS, 'kvserver.wasm');

type Reply = { type: '+' | '-' | ':'; value: string } | { type: '$'; value: Buffer | null } | { type: '*'; value: number };

/** A pipelining RESP client: replies are matched to requests in order. */
class RespClient {
  readonly socket: net.Socket;
  private buf: Buffer = Buffer.alloc(0);
  private waiting: { resolve: (r: Reply) => void; reject: (e: Error) => void }[] = [];
  error: Error | null = null;
  answers = 0;
  /** Requests written so far: answers can never pass it. */
  sent = 0;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length === 0 ? d : Buffer.concat([this.buf, d]);
      for (;;) {
        const r = this.parse();
        if (r === null) break;
        this.answers++;
        this.waiting.shift()?.resolve(r);
      }
    });
    socket.on('error', (e) => this.fail(e));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  static connect(port: number): Promise<RespClient> {
    return new Promise((resolve, reject) => {
      const s = net.connect(port, '127.0.0.1', () => resolve(new RespClient(s)));
      s.once('error', reject);
    });
  }

  private fail(e: Error): void {
    this.error ??= e;
    for (const w of this.waiting.splice(0)) w.reject(e);
  }

  private parse(): Reply | null {
    const nl = this.buf.indexOf('\r\n');
    if (nl < 0) return null;
    const type = String.fromCharCode(this.buf[0]!);
    const line = this.buf.subarray(1, nl).toString('latin1');
    if (type === '$') {
      const n = Number(line);
      if (n < 0) {
        this.buf = this.buf.subarray(nl + 2);
        return { type: '$', value: null };
      }
      if (this.buf.length < nl + 2 + n + 2) return null;
      const value = Buffer.from(this.buf.subarray(nl + 2, nl + 2 + n));
      this.buf = this.buf.subarray(nl + 2 + n + 2);
      return { type: '$', value };
    }
    this.buf = this.buf.subarray(nl + 2);
    if (type === '*') return { type: '*', value: Number(line) };
    if (type !== '+' && type !== '-' && type !== ':') throw new Error(`bad reply type ${type}`);
    return { type, value: line };
  }

  send(...args: string[]): Promise<Reply> {
    if (this.error) return Promise.reject(this.error);
    const p = new Promise<Reply>((resolve, reject) => this.waiting.push({ resolve, reject }));
    this.sent++;
    this.socket.write(`*${args.length}\r\n` + args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join(''));
    return p;
  }

  close(): void {
    this.socket.removeAllListeners('close');
    this.socket.destroy();
  }
}

/** What BIG n seed returns: byte i is 'a' + (i * 7 + seed) % 26. */
function bigValue(n: number, seed: number): Buffer {
  const b = Buffer.alloc(n);
  for (let i = 0; i < n; i++) b[i] = 97 + ((i * 7 + seed) % 26);
  return b;
}

async function startServer(tag: string): Promise<{ guest: Guest; port: number; stdout: string; stderr: string; module: Uint8Array }> {
  const dir = tmpDir(tag);
  const stdout = path.join(dir, 'stdout');
  const stderr = path.join(dir, 'stderr');
  const out = fs.openSync(stdout, 'w');
  const err = fs.openSync(stderr, 'w');
  const module = fs.readFileSync(MODULE);
  const guest = await Guest.start({ module, args: ['kvserver'], listen: [{ host: '127.0.0.1', port: 0 }], stdio: { stdout: out, stderr: err } });
  // The guest writes to these host fds until it ends.
  void guest.exited.then(() => {
    fs.closeSync(out);
    fs.closeSync(err);
  });
  const [addr] = guest.listening;
  assert.ok(addr !== undefined && addr.port > 0 && addr.address === '127.0.0.1', 'the guest listens on a port of its own');
  // kvserver finds its socket with fstat(S_ISSOCK) on fds 3..: fd 3 (no directories preopened).
  await waitFor('kvserver to start', () => readText(stdout).includes('kvserver: serving fd 3'));
  return { guest, port: addr.port, stdout, stderr, module };
}

function expect(r: Reply, type: Reply['type'], value: string | null, what: string): void {
  const got = r.type === '$' ? (r.value === null ? null : r.value.toString('latin1')) : String(r.value);
  assert.deepEqual({ type: r.type, value: got }, { type, value }, what);
}

test('kvserver answers PING, SET, GET, INCR, DEL and BIG over a --listen socket', async () => {
  const { guest, port } = await startServer('kv-basic');
  try {
    const c = await RespClient.connect(port);
    expect(await c.send('PING'), '+', 'PONG', 'PING');
    expect(await c.send('SET', 'k', 'v1'), '+', 'OK', 'SET');
    expect(await c.send('GET', 'k'), '$', 'v1', 'GET');
    expect(await c.send('GET', 'missing'), '$', null, 'GET of a missing key');
    expect(await c.send('INCR', 'n'), ':', '1', 'INCR of a missing key');
    expect(await c.send('INCR', 'n'), ':', '2', 'INCR');
    expect(await c.send('INCR', 'k'), '-', 'ERR value is not an integer or out of range', 'INCR of a string');
    expect(await c.send('DEL', 'k', 'n', 'missing'), ':', '2', 'DEL counts what it removed');
    expect(await c.send('GET', 'k'), '$', null, 'GET after DEL');
    // 8 MiB: far more than the socket buffers hold, so the server writes it in many partial sends.
    const big = await c.send('BIG', String(8 << 20), '5');
    assert.equal(big.type, '$');
    assert.ok(Buffer.isBuffer(big.value) && big.value.equals(bigValue(8 << 20, 5)), 'every byte of an 8 MiB reply');
    expect(await c.send('NOSUCH'), '-', 'ERR unknown command or wrong number of arguments', 'unknown command');
    c.close();
    await guest.pause();
    const fds = guest.capture().wasi.fds;
    const listener = fds.find((f) => f.kind === 'listener');
    assert.deepEqual(listener?.socket, { family: 4, address: '127.0.0.1', port, peer: null });
    assert.equal(listener?.filetype, FILETYPE.SOCKET_STREAM);
    assert.match(guest.movabilityProblems().join('\n'), new RegExp(`fd 3 listens on 127\\.0\\.0\\.1:${port}: live migration does not move listening sockets`));
    guest.resume();
  } finally {
    await guest.stop();
  }
});

test('32 concurrent clients keep every answer right across a pause in the middle of their traffic, one of them reading slowly', async () => {
  const { guest, port } = await startServer('kv-pause');
  const CLIENTS = 32;
  const clients = await Promise.all(Array.from({ length: CLIENTS }, () => RespClient.connect(port)));
  let stop = false;
  let ops = 0;
  const failures: string[] = [];
  const check = (ok: boolean, what: string) => {
    if (!ok) failures.push(what);
  };
  // Each client: SET, GET, INCR on keys of its own, and every 16th round a BIG value; every answer checked.
  const loops = clients.map(async (c, i) => {
    let round = 0;
    while (!stop) {
      round++;
      const v = `v${i}-${round}-${'x'.repeat(round % 100)}`;
      const replies = await Promise.all([c.send('SET', `key${i}`, v), c.send('GET', `key${i}`), c.send('INCR', `count${i}`)]);
      check(replies[0]!.type === '+' && replies[0]!.value === 'OK', `client ${i} round ${round}: SET`);
      check(replies[1]!.type === '$' && replies[1]!.value?.toString() === v, `client ${i} round ${round}: GET`);
      check(replies[2]!.type === ':' && replies[2]!.value === String(round), `client ${i} round ${round}: INCR`);
      if (round % 16 === 0) {
        const n = 100_000 + i;
        const big = await c.send('BIG', String(n), String(round));
        check(big.type === '$' && Buffer.isBuffer(big.value) && big.value.equals(bigValue(n, round)), `client ${i} round ${round}: BIG`);
      }
      ops += 3;
    }
    return round;
  });
  // The slow reader: asks for 4 MiB values and reads them in small sips, so the server's send
  // queue to it stays full (and the server keeps serving everyone else meanwhile).
  const slow = await RespClient.connect(port);
  let slowRounds = 0;
  const slowLoop = (async () => {
    while (!stop) {
      const seed = slowRounds;
      const p = slow.send('BIG', String(4 << 20), String(seed));
      const sip = setInterval(() => {
        slow.socket.pause();
        setTimeout(() => slow.socket.resume(), 20);
      }, 25);
      const big = await p.finally(() => clearInterval(sip));
      check(big.type === '$' && Buffer.isBuffer(big.value) && big.value.equals(bigValue(4 << 20, seed)), `slow client round ${seed}: BIG`);
      slowRounds++;
    }
  })();
  try {
    // Every client answered at least once: the guest has accepted all of them (the count below).
    await waitFor('traffic from every client', () => ops >= 3000 && slowRounds >= 1 && clients.every((c) => c.answers > 0), 120_000);
    await guest.pause();
    // Paused: nothing is answered. Requests sent now wait in the kernel's buffers. Answers the guest
    // wrote before the pause may still be on their way to the clients (the kernel delivers them,
    // Node reads them later), so only the requests written up to now can be answered until the resume.
    const sentAtPause = clients.map((c) => c.sent);
    const probe = await RespClient.connect(port); // the listener's backlog takes it while the guest is paused
    const pong = probe.send('PING');
    const state = guest.capture();
    // The probe waits in the listener's backlog: the paused guest has not accepted it.
    assert.equal(state.wasi.fds.filter((f) => f.kind === 'socket').length, CLIENTS + 1, 'every accepted connection is in the captured state');
    assert.ok(guest.movabilityProblems().some((p) => /is a TCP connection 127\.0\.0\.1:\d+ <-> 127\.0\.0\.1:\d+: live migration does not move connections/.test(p)));
    await new Promise((r) => setTimeout(r, 300));
    const early = clients.flatMap((c, i) => (c.answers > sentAtPause[i]! ? [`client ${i}: ${c.answers} answers to ${sentAtPause[i]} requests sent before the pause`] : []));
    assert.deepEqual(early, [], 'no request written during the pause is answered before the resume');
    assert.equal(probe.answers, 0);
    guest.resume();
    expect(await pong, '+', 'PONG', 'the connection made while paused is served after the resume');
    probe.close();
    const target = ops + 3000;
    await waitFor('traffic after the resume', () => ops >= target && slowRounds >= 2, 120_000);
  } catch (err) {
    stop = true;
    for (const c of [...clients, slow]) c.close();
    await guest.stop();
    throw err;
  } finally {
    stop = true;
  }
  const rounds = await Promise.all(loops);
  await slowLoop;
  assert.deepEqual(failures, [], 'every answer is right');
  assert.deepEqual(clients.map((c) => c.error), clients.map(() => null), 'no client saw an error');
  assert.ok(rounds.every((r) => r > 0));
  for (const c of [...clients, slow]) c.close();
  await guest.stop();
});

test('a snapshot keeps the listener and not the connections: the peer sees a reset, the restored guest gets ECONNRESET and listens again', { timeout: 180_000 }, async () => {
  const { guest, port, module } = await startServer('kv-snap');
  const old = await RespClient.connect(port);
  expect(await old.send('SET', 'kept', 'in-memory'), '+', 'OK', 'SET before the snapshot');
  await guest.pause();
  const state = guest.capture();
  const image = new Uint8Array(guest.memory.buffer, 0, state.memory.bytes).slice();
  const conn = state.wasi.fds.find((f) => f.kind === 'socket');
  assert.deepEqual(conn?.socket?.peer, { address: '127.0.0.1', port: old.socket.localPort }, 'the connection, with its peer, is in the state');
  assert.ok(state.wasi.fds.some((f) => f.kind === 'listener' && f.socket?.port === port));
  // Bounded: a peer that saw an orderly end (or nothing) instead of a reset fails here, naming what it saw.
  const seen: string[] = [];
  old.socket.once('end', () => seen.push('end of stream'));
  old.socket.once('close', () => seen.push('close'));
  const reset = new Promise<Error>((resolve, reject) => {
    old.socket.once('error', resolve);
    setTimeout(() => reject(new Error(`no reset within 30 s; the peer saw: ${seen.join(', ') || 'nothing'}`)), 30_000).unref();
  });
  await guest.stop();
  const err = (await reset) as NodeJS.ErrnoException;
  assert.equal(err.code, 'ECONNRESET', 'the peer of a connection of a stopped guest sees a reset');

  const dir = tmpDir('kv-restored');
  const stderrPath = path.join(dir, 'stderr');
  const errFd = fs.openSync(stderrPath, 'w');
  const memory = new WebAssembly.Memory({ initial: state.memory.bytes / 65536, maximum: state.memory.maxBytes / 65536, shared: true });
  new Uint8Array(memory.buffer).set(image);
  const restored = await Guest.restore({ module, state, memory, stdio: { stderr: errFd } });
  void restored.exited.then(() => fs.closeSync(errFd));
  try {
    assert.deepEqual(restored.listening, [{ family: 4, address: '127.0.0.1', port }]);
    // The guest was blocked in poll() on the listener and its connection: re-entered, it finds the
    // connection reset and drops it (recv fails with ECONNRESET).
    await waitFor('the restored guest to drop the reset connection', () => /closing client fd \d+: Connection reset by peer/.test(readText(stderrPath)));
    const fresh = await RespClient.connect(port);
    expect(await fresh.send('GET', 'kept'), '$', 'in-memory', 'the restored guest listens again at the same address, with its data');
    await restored.pause();
    const left = restored.capture().wasi.fds.filter((f) => f.kind === 'socket');
    assert.deepEqual(left.map((f) => f.socket?.peer?.port), [fresh.socket.localPort], 'only the new connection is left');
    restored.resume();
    fresh.close();
  } finally {
    await restored.stop();
  }
});
