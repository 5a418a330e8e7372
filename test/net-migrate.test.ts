// Issue 16, stage 3: a serving guest keeps its TCP clients through `ferry migrate`. The kvserver
// guest runs under `ferry run --listen` in host A's namespace of the three-namespace topology
// (fixtures/net/topology.ts), with 32 checked clients and one slow reader in the client namespace
// (fixtures/net/kv-clients.ts). Real ferry processes, run with `ip netns exec`:
//   - a destination in B that cannot take the service address (no such interface) refuses the
//     source at SETUP: nothing moved, the guest keeps serving on A, no client sees an error;
//   - a postcopy migration A → B with --service-address on both sides: every connection carries
//     on with every answer right, none is reset, and a new connection is served by B.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { useSharedCache } from './fixtures/guest/helpers.js';
import { makeTopology, removeTopology } from './fixtures/net/topology.js';
import { moreAnswers, Proc } from './fixtures/net/ns-proc.js';
import { GUESTS, killAll, makeSandbox, runMigrate, spawnFerry, startDestination, type FerryProc } from './fixtures/migration/ferry-procs.js';

const CLIENTS = fileURLToPath(new URL('./fixtures/net/kv-clients.js', import.meta.url));
const tag = String(process.pid % 100000);
const NS = { client: `f16gc-${tag}`, a: `f16ga-${tag}`, b: `f16gb-${tag}` };
const NET = '10.81.0';
const SERVICE = `${NET}.10`;
const B_ADDR = `${NET}.3`;
const PORT = 6391;
const CLIENT_COUNT = 32;
const inNs = (ns: string) => ['ip', 'netns', 'exec', ns];

useSharedCache();

type Summary = { ops: number; slowBytes: number; slowRead: number; errors: string[]; resets: string[] };

test('ferry migrate moves a serving guest A → B in postcopy with its 32 clients; a destination without the interface is refused first', { skip: process.getuid?.() !== 0 && 'needs root (network namespaces)', timeout: 100_000 }, async (t) => {
  makeTopology(NS, NET, SERVICE);
  const sb = makeSandbox();
  const procs: FerryProc[] = [];
  let clients: Proc | null = null;
  try {
    const source = spawnFerry('source', ['run', path.join(GUESTS, 'kvserver.wasm'), '--api-sock', sb.sock, '--listen', `${SERVICE}:${PORT}`], inNs(NS.a));
    procs.push(source);
    await source.waitFor(/kvserver: serving fd/, 'kvserver to listen on A', 30_000, 'out');
    clients = new Proc('clients', NS.client, CLIENTS, [SERVICE, String(PORT), String(CLIENT_COUNT)]);
    assert.deepEqual(await clients.next(), { connected: CLIENT_COUNT + 1 });
    let ops = await moreAnswers(clients, 0, 300);

    // The destination lacks the interface: refused at SETUP, before anything moved.
    const lacking = await startDestination(sb, ['--tls-psk', sb.keyFile, '--max-refused', '1', '--service-address', `${SERVICE}/24@eth9`], { host: B_ADDR, prefix: inNs(NS.b) });
    procs.push(lacking.proc);
    const refused = await runMigrate(sb, lacking.port, ['--mode', 'postcopy', '--service-address', `${SERVICE}/24@eth0`], sb.keyFile, 30_000, B_ADDR);
    assert.notEqual(refused.code, 0, 'the migration failed');
    assert.match(JSON.stringify(refused.json) + refused.stderr, /eth9/, 'the refusal names the missing interface');
    ops = await moreAnswers(clients, ops, 300);
    await lacking.proc.exitWithin(10_000).catch(() => lacking.proc.kill());

    // The migration.
    const dest = await startDestination(sb, ['--tls-psk', sb.keyFile, '--service-address', `${SERVICE}/24@eth0`], { host: B_ADDR, prefix: inNs(NS.b) });
    procs.push(dest.proc);
    const moved = await runMigrate(sb, dest.port, ['--mode', 'postcopy', '--service-address', `${SERVICE}/24@eth0`], sb.keyFile, 60_000, B_ADDR);
    assert.equal(moved.code, 0, `ferry migrate succeeded: ${JSON.stringify(moved.json)}\n${moved.stderr.slice(-2000)}\n${source.err.slice(-2000)}\n${dest.proc.err.slice(-2000)}`);
    assert.equal(await source.exitWithin(20_000), 0, 'the source ends once its guest has moved');
    ops = await moreAnswers(clients, ops, 600);
    assert.deepEqual(await clients.ask('probe'), { probe: true }, 'a new connection is served (by B: A has ended)');

    const { summary } = await clients.ask<{ summary: Summary }>('stop');
    assert.deepEqual(summary.errors, [], 'every answer was right');
    assert.deepEqual(summary.resets, [], 'no connection was reset or closed');
    t.diagnostic(`${summary.ops} answers checked, ${summary.slowBytes >> 20} MiB read by the slow client; downtime ${String(moved.json['downtimeMs'])} ms (${String(moved.json['mode'])})`);
  } finally {
    if (clients) {
      clients.end();
      if (clients.proc.exitCode === null) {
        const timer = setTimeout(() => clients?.proc.kill('SIGKILL'), 5000);
        await new Promise((r) => clients?.proc.once('exit', r));
        clearTimeout(timer);
      }
    }
    killAll(...procs);
    removeTopology(NS);
  }
});
