// One established TCP connection moved between hosts with TCP_REPAIR (src/net/tcp-image.ts), on a
// topology the test builds: three network namespaces — a client, host A and host B — the client's
// bridge joined to each host by a veth pair; the service address starts on A. The server on A has
// read part of the client's stream and left the rest unread (receive queue), and filled its send
// buffer towards a client that reads as fast as A's link (limited to 8 Mbit/s) brings the bytes,
// so that sent-unacknowledged and unsent bytes are both there. Then:
//   - moved: address off A, repair mode on A, dump; address on B, restore, gratuitous ARP, resume;
//     B serves the rest (the image's send buffer made too small for its queue, on purpose). Every
//     byte of both streams arrives once and in order, and nothing resets.
//   - rolled back: the same up to the dump, then the address back on A and repair mode off: A
//     serves the rest (what a migration that fails before its commit does).
// Needs root, `ip` and `tc` (scripts/ensure-test-deps.sh installs iproute2).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ip, makeTopology, removeTopology } from './fixtures/net/topology.js';

const PEER = fileURLToPath(new URL('./fixtures/net/tcp-peer.js', import.meta.url));
const tag = String(process.pid % 100000);
const NS = { client: `f16c-${tag}`, a: `f16a-${tag}`, b: `f16b-${tag}` };
const SERVICE = '10.78.0.10';
const PORT = 7800;
const UP = 6 << 20;
const DOWN = 6 << 20;
const READ_FIRST = 512 << 10;

function teardown(): void {
  removeTopology(NS);
}

function setup(): void {
  makeTopology(NS, '10.78.0', SERVICE);
  // A sends at 8 Mbit/s: its send buffer stays full while the client reads, and the segments in
  // the queue and on the way are sent and not yet acknowledged when the test dumps the connection.
  execFileSync('tc', ['-n', NS.a, 'qdisc', 'add', 'dev', 'eth0', 'root', 'tbf', 'rate', '8mbit', 'burst', '32kb', 'latency', '400ms']);
}

/** A peer process in a namespace; its JSON reports, in order. */
class Peer {
  readonly proc: ChildProcessWithoutNullStreams;
  private lines: unknown[] = [];
  private waiters: Array<() => void> = [];
  stderr = '';
  exited: Promise<number | null>;

  constructor(ns: string, args: string[]) {
    this.proc = spawn('ip', ['netns', 'exec', ns, process.execPath, PEER, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    // Reports can be megabytes (an image): look for the end of a line only in what just came.
    let parts: string[] = [];
    this.proc.stdout.setEncoding('utf8').on('data', (d: string) => {
      for (let nl = d.indexOf('\n'); nl >= 0; nl = d.indexOf('\n')) {
        parts.push(d.slice(0, nl));
        d = d.slice(nl + 1);
        const line = JSON.parse(parts.join('')) as Record<string, unknown>;
        parts = [];
        if (process.env['FERRY_TEST_DEBUG']) process.stderr.write(`${(performance.now() / 1000).toFixed(2)} [${args[0]}] ${JSON.stringify(line).slice(0, 120)}\n`);
        this.lines.push(line);
        for (const w of this.waiters.splice(0)) w();
      }
      if (d.length > 0) parts.push(d);
    });
    this.proc.stderr.setEncoding('utf8').on('data', (d: string) => {
      this.stderr += d;
      process.stderr.write(`[${args[0]}] ${d}`);
    });
    this.exited = new Promise((resolve) => this.proc.on('exit', (code) => {
      resolve(code);
      for (const w of this.waiters.splice(0)) w();
    }));
  }

  /** The next report that has `key`. */
  async next<T extends Record<string, unknown>>(key: string): Promise<T> {
    for (;;) {
      const i = this.lines.findIndex((l) => typeof l === 'object' && l !== null && key in l);
      if (i >= 0) return this.lines.splice(i, 1)[0] as T;
      if (this.proc.exitCode !== null) throw new Error(`peer exited (${this.proc.exitCode}) before reporting ${key}: ${this.stderr}`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
  }

  send(line: string): void {
    this.proc.stdin.write(line + '\n');
  }
}

async function connectionReady(): Promise<{ server: Peer; client: Peer; full: { consumed: number; written: number; bad: number } }> {
  const server = new Peer(NS.a, ['serve', SERVICE, String(PORT), String(UP), String(DOWN), String(READ_FIRST)]);
  await server.next('listening'); // before the client connects
  const client = new Peer(NS.client, ['client', SERVICE, String(PORT), String(UP), String(DOWN)]);
  await client.next('connected');
  const full = await server.next<{ consumed: number; written: number; bad: number }>('full');
  assert.equal(full.bad, 0, 'the up stream is right up to the dump');
  return { server, client, full };
}

test('an established connection moves from host A to host B with TCP_REPAIR, every byte once and in order', { skip: process.getuid?.() !== 0 && 'needs root (network namespaces)', timeout: 60_000 }, async () => {
  setup();
  const procs: Peer[] = [];
  try {
    const { server, client } = await connectionReady();
    procs.push(server, client);
    // First A hears nothing more for the service (no ACK can shrink its send queue, no byte can
    // join its receive queue after the dump), then repair mode freezes the socket.
    ip('-n', NS.a, 'addr', 'del', `${SERVICE}/24`, 'dev', 'eth0');
    server.send('repair');
    await server.next('repaired');
    server.send('dump');
    const dumped = await server.next<{ image: { sendQueue: string; sentBytes: number; recvQueue: string; timestamp: number | null; sndbuf: number }; consumed: number; written: number }>('image');
    const sendQueue = Buffer.from(dumped.image.sendQueue, 'base64').length;
    const recvQueue = Buffer.from(dumped.image.recvQueue, 'base64').length;
    // What the case is about: data in flight both ways at the dump.
    assert.ok(dumped.image.sentBytes > 0, 'bytes sent and not yet acknowledged');
    assert.ok(sendQueue > 0 && recvQueue > 0, `both queues hold bytes (send ${sendQueue}, receive ${recvQueue})`);
    ip('-n', NS.b, 'addr', 'add', `${SERVICE}/24`, 'dev', 'eth0');
    const restorer = new Peer(NS.b, ['restore', 'eth0', SERVICE, String(UP), String(DOWN)]);
    procs.push(restorer);
    // Injected: the image names a send buffer far smaller than its queue. The same bytes can take
    // more buffer memory on B than they did on A (per-buffer overhead, other segment sizes); a
    // restore sized only by the image met a full buffer (sendmsg EAGAIN) after the commit once.
    // B must make room, whatever the image says, and lose nothing.
    dumped.image.sndbuf = 4608;
    restorer.send(JSON.stringify(dumped));
    await restorer.next('restored');
    // The gratuitous ARP moved the client's neighbour entry to B at once (it still named A's
    // address, reachable, and would have for up to half a minute).
    const macOf = (ns: string) => /link\/ether ([0-9a-f:]{17})/.exec(ip('-n', ns, 'link', 'show', 'eth0'))![1];
    assert.match(ip('-n', NS.client, 'neigh', 'show', SERVICE), new RegExp(`lladdr ${macOf(NS.b)}`), 'the client sends to B');
    server.send('close');
    await server.next('closed');
    assert.equal(await server.exited, 0, server.stderr);
    const end = await client.next<{ done: boolean; received: number; downBad: number; upSent: number; error: string | null }>('done');
    assert.deepEqual(end, { done: true, received: DOWN, downBad: 0, upSent: UP, error: null }, 'the client got the whole down stream, right, with no error');
    const served = await restorer.next<{ bad: number }>('done');
    assert.equal(served.bad, 0, 'B read the rest of the up stream, every byte right');
    assert.equal(await restorer.exited, 0, restorer.stderr);
  } finally {
    for (const p of procs) if (p.proc.exitCode === null) p.proc.kill();
    teardown();
  }
});

test('a dumped connection rolls back: the address returns to A, repair mode ends, A serves on', { skip: process.getuid?.() !== 0 && 'needs root (network namespaces)', timeout: 60_000 }, async () => {
  setup();
  const procs: Peer[] = [];
  try {
    const { server, client } = await connectionReady();
    procs.push(server, client);
    ip('-n', NS.a, 'addr', 'del', `${SERVICE}/24`, 'dev', 'eth0');
    server.send('repair');
    await server.next('repaired');
    server.send('dump');
    await server.next('image');
    // The destination failed before the commit: everything goes back on A.
    ip('-n', NS.a, 'addr', 'add', `${SERVICE}/24`, 'dev', 'eth0');
    server.send('resume');
    const end = await client.next<{ done: boolean; received: number; downBad: number; upSent: number; error: string | null }>('done');
    assert.deepEqual(end, { done: true, received: DOWN, downBad: 0, upSent: UP, error: null });
    const served = await server.next<{ bad: number }>('done');
    assert.equal(served.bad, 0);
    assert.equal(await server.exited, 0, server.stderr);
  } finally {
    for (const p of procs) if (p.proc.exitCode === null) p.proc.kill();
    teardown();
  }
});
