// Every socket of a serving guest moved between hosts with TCP_REPAIR (src/net/socket-set.ts), on
// a topology the test builds and removes: three network namespaces — clients, host A, host B — the
// clients' bridge joined to each host by a veth pair; the service address starts on A. The
// kvserver guest runs on A (test/fixtures/net/guest-host.ts) with 32 clients that send requests
// one after another and check every answer, and one that reads 8 MiB values slowly, so the
// server's send queue towards it is full (test/fixtures/net/kv-clients.ts). Then:
//   - a move that fails before its commit: pause, one more client connects (it waits in the
//     accept queue), freeze (repair mode, dump, the queue taken), thaw: A carries on, the queued
//     client is served by A's guest;
//   - the move: pause, one more queued client, the address off A, freeze, A's guest ends (its
//     sockets close without a packet), the address on B with a gratuitous ARP, the sockets
//     re-created and resumed on B, the guest restored on B from A's state and memory: every
//     connection carries on, a new one is served by B.
// Done means zero errors, no reset, every answer right. This moves the guest's memory as a file,
// not with `ferry migrate`: the migration protocol does not carry socket images yet.
// Needs root, `ip` (scripts/ensure-test-deps.sh installs iproute2).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { tmpDir, useSharedCache } from './fixtures/guest/helpers.js';
import { ip, makeTopology, removeTopology } from './fixtures/net/topology.js';
import { moreAnswers, Proc } from './fixtures/net/ns-proc.js';

const HOST = fileURLToPath(new URL('./fixtures/net/guest-host.js', import.meta.url));
const CLIENTS = fileURLToPath(new URL('./fixtures/net/kv-clients.js', import.meta.url));
const tag = String(process.pid % 100000);
const NS = { client: `f16mc-${tag}`, a: `f16ma-${tag}`, b: `f16mb-${tag}` };
const SERVICE = '10.79.0.10';
const PORT = 6390;
const CLIENT_COUNT = 32;

useSharedCache();

function teardown(): void {
  removeTopology(NS);
}

function setup(): void {
  makeTopology(NS, '10.79.0', SERVICE);
}

test('every connection of a serving guest moves from host A to host B; a move that fails before its commit leaves them all on A', { skip: process.getuid?.() !== 0 && 'needs root (network namespaces)', timeout: 90_000 }, async (t) => {
  setup();
  const dir = tmpDir('socket-move');
  const procs: Proc[] = [];
  try {
    const a = new Proc('host A', NS.a, HOST, []);
    procs.push(a);
    await a.ask(`start ${SERVICE} ${PORT}`);
    const clients = new Proc('clients', NS.client, CLIENTS, [SERVICE, String(PORT), String(CLIENT_COUNT)]);
    procs.push(clients);
    assert.deepEqual(await clients.next(), { connected: CLIENT_COUNT + 1 });
    let ops = await moreAnswers(clients, 0, 300);

    // A move that fails before its commit: everything carries on at A.
    await a.ask('pause');
    await clients.ask('queue');
    const rolled = fs.mkdtempSync(path.join(dir, 'rolled-'));
    const first = await a.ask<{ connections: number; queued: number }>(`freeze ${rolled}`);
    assert.deepEqual({ ...first, sendQueued: undefined }, { ok: 'freeze', connections: CLIENT_COUNT + 1, queued: 1, sendQueued: undefined }, 'every connection and the queued one were frozen');
    await a.ask('thaw');
    ops = await moreAnswers(clients, ops, 300);

    // The move.
    await a.ask('pause');
    await clients.ask('queue');
    ip('-n', NS.a, 'addr', 'del', `${SERVICE}/24`, 'dev', 'eth0'); // A hears nothing more for the service
    const moved = fs.mkdtempSync(path.join(dir, 'moved-'));
    const frozen = await a.ask<{ connections: number; queued: number; sendQueued: number }>(`freeze ${moved}`);
    // The connection queued before the failed move was accepted by A's guest since.
    assert.deepEqual({ ...frozen, sendQueued: undefined }, { ok: 'freeze', connections: CLIENT_COUNT + 2, queued: 1, sendQueued: undefined });
    assert.ok(frozen.sendQueued > 64 << 10, `the send queue towards the slow client moves full (${frozen.sendQueued} bytes queued)`);
    await a.ask('stop');
    ip('-n', NS.b, 'addr', 'add', `${SERVICE}/24`, 'dev', 'eth0');
    const b = new Proc('host B', NS.b, HOST, []);
    procs.push(b);
    await b.ask(`restore ${moved} eth0 ${SERVICE}`);
    ops = await moreAnswers(clients, ops, 600);
    assert.deepEqual(await clients.ask('probe'), { probe: true }, 'a new connection is served (by B: A has stopped)');

    const { summary } = await clients.ask<{ summary: { ops: number; slowBytes: number; slowRead: number; errors: string[]; resets: string[] } }>('stop');
    assert.deepEqual(summary.errors, [], 'every answer was right');
    assert.deepEqual(summary.resets, [], 'no connection was reset or closed');
    assert.ok(summary.slowBytes >= 8 << 20, `the slow client read whole large values (${summary.slowRead} bytes in all)`);
    t.diagnostic(`${summary.ops} answers checked, ${summary.slowBytes >> 20} MiB checked by the slow client, ${frozen.sendQueued} bytes in send queues at the move`);
  } finally {
    for (const p of procs) {
      p.end();
      if (p.proc.exitCode !== null) continue;
      // A failed run may leave a process waiting on something that will not come: it gets 5 s.
      const timer = setTimeout(() => p.proc.kill('SIGKILL'), 5000);
      await new Promise((r) => p.proc.once('exit', r));
      clearTimeout(timer);
    }
    teardown();
  }
});
