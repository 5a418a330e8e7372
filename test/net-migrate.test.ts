// Issue 16, stage 3: a serving guest keeps its TCP clients through `ferry migrate`. The kvserver
// guest runs under `ferry run --listen` in host A's namespace of the three-namespace topology
// (fixtures/net/topology.ts), with 32 checked clients and one slow reader in the client namespace
// (fixtures/net/kv-clients.ts). Real ferry processes, run with `ip netns exec`:
//   - a destination in B that cannot take the service address (no such interface) refuses the
//     source at SETUP, and one without Feature.SOCKETS (FERRY_MOVE_SOCKETS=0) is left right after
//     HELLO_ACK: nothing moved, the guest keeps serving on A, no client sees an error;
//   - a destination whose --on-acquire hook fails, or that dies there (inside the downtime,
//     before COMMIT): the source takes the address back and thaws the sockets, and the guest
//     carries on at A;
//   - a migration A → B (postcopy, then in a second test precopy) with --service-address on
//     both sides: every connection carries on with every answer right, none is reset, and a new
//     connection is served by B;
//   - in the second test the guest then goes back B → A (postcopy) from B's own control API,
//     with the same clients running throughout, and a new connection is served by A.
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
const A_ADDR = `${NET}.2`;
const B_ADDR = `${NET}.3`;
const PORT = 6391;
const CLIENT_COUNT = 32;
const inNs = (ns: string) => ['ip', 'netns', 'exec', ns];

useSharedCache();

type Summary = { ops: number; slowBytes: number; slowRead: number; errors: string[]; resets: string[] };

/**
 * kvserver on A with the checked clients; `before` runs failed attempts while they go on; then the
 * migration with `mode` flags, and the clients' verdict.
 */
async function migrateServingGuest(
  t: { diagnostic: (s: string) => void },
  modeFlags: string[],
  before: (sb: ReturnType<typeof makeSandbox>, clients: Proc, ops: number) => Promise<number>,
  backFlags: string[] | null = null,
): Promise<void> {
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
    ops = await before(sb, clients, ops);

    // B's destination serves a control API of its own: the guest it receives can move on from there.
    const sockB = path.join(sb.dir, 'b.sock');
    const dest = await startDestination(sb, ['--tls-psk', sb.keyFile, '--service-address', `${SERVICE}/24@eth0`, '--api-sock', sockB], { host: B_ADDR, prefix: inNs(NS.b) });
    procs.push(dest.proc);
    const moved = await runMigrate(sb, dest.port, [...modeFlags, '--service-address', `${SERVICE}/24@eth0`], sb.keyFile, 60_000, B_ADDR);
    assert.equal(moved.code, 0, `ferry migrate succeeded: ${JSON.stringify(moved.json)}\n${moved.stderr.slice(-2000)}\n${source.err.slice(-2000)}\n${dest.proc.err.slice(-2000)}`);
    assert.equal(await source.exitWithin(20_000), 0, 'the source ends once its guest has moved');
    ops = await moreAnswers(clients, ops, 600);
    assert.deepEqual(await clients.ask('probe'), { probe: true }, 'a new connection is served (by B: A has ended)');
    const legs = [`A → B ${String(moved.json['mode'])}, downtime ${String(moved.json['downtimeMs'])} ms`];

    if (backFlags) {
      // B → A with the same clients: A takes the guest back with a `ferry run --incoming` of its own.
      const home = await startDestination(sb, ['--tls-psk', sb.keyFile, '--service-address', `${SERVICE}/24@eth0`], { host: A_ADDR, prefix: inNs(NS.a) });
      procs.push(home.proc);
      const back = await migrateOnceReady({ ...sb, sock: sockB }, home.port, [...backFlags, '--service-address', `${SERVICE}/24@eth0`]);
      assert.equal(back.code, 0, `ferry migrate B → A succeeded: ${JSON.stringify(back.json)}\n${back.stderr.slice(-2000)}\n${dest.proc.err.slice(-2000)}\n${home.proc.err.slice(-2000)}`);
      assert.equal(await dest.proc.exitWithin(20_000), 0, 'B ends once the guest has moved back');
      ops = await moreAnswers(clients, ops, 600);
      assert.deepEqual(await clients.ask('probe'), { probe: true }, 'a new connection is served (by A: B has ended)');
      legs.push(`B → A ${String(back.json['mode'])}, downtime ${String(back.json['downtimeMs'])} ms`);
    }

    const { summary } = await clients.ask<{ summary: Summary }>('stop');
    assert.deepEqual(summary.errors, [], 'every answer was right');
    assert.deepEqual(summary.resets, [], 'no connection was reset or closed');
    assert.ok(summary.slowBytes >= 8 << 20, `the slow client read whole large values (${summary.slowRead} bytes in all)`);
    // With FERRY_TRACE=switchover both sides print where the downtime went.
    for (const line of `${source.err}\n${dest.proc.err}`.split('\n')) if (line.startsWith('ferry trace')) t.diagnostic(line);
    t.diagnostic(`${summary.ops} answers checked, ${summary.slowBytes >> 20} MiB read by the slow client; ${legs.join('; ')}`);
  } catch (err) {
    // Whatever failed, the error carries what every ferry process said (a flake must be readable from the log).
    const said = procs.map((p) => `--- ${p.name} stderr:\n${p.err.slice(-1500)}`).join('\n');
    if (err instanceof Error) err.message += `\n${said}`;
    throw err;
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
}

/**
 * `ferry migrate` from a host that received the guest: refused (409 migration-in-progress) until
 * its incoming migration has completed, so asked again until then.
 */
async function migrateOnceReady(sb: ReturnType<typeof makeSandbox>, port: number, flags: string[]): Promise<Awaited<ReturnType<typeof runMigrate>>> {
  for (let tries = 0; ; tries++) {
    const r = await runMigrate(sb, port, flags, sb.keyFile, 60_000, A_ADDR);
    const code = (r.json['error'] as { code?: string } | undefined)?.code;
    if (code !== 'migration-in-progress' || tries === 100) return r;
    await new Promise((res) => setTimeout(res, 200));
  }
}

/** One migration attempt that must fail with `expect` while the guest keeps serving on A. */
async function failedAttempt(sb: ReturnType<typeof makeSandbox>, clients: Proc, ops: number, destFlags: string[], expect: RegExp, env: string[] = []): Promise<number> {
  const prefix = env.length > 0 ? [...inNs(NS.b), 'env', ...env] : inNs(NS.b);
  const dest = await startDestination(sb, ['--tls-psk', sb.keyFile, '--max-refused', '1', ...destFlags], { host: B_ADDR, prefix });
  try {
    const r = await runMigrate(sb, dest.port, ['--mode', 'postcopy', '--downtime-target', '0.001', '--service-address', `${SERVICE}/24@eth0`], sb.keyFile, 30_000, B_ADDR);
    assert.notEqual(r.code, 0, 'the migration failed');
    assert.match(JSON.stringify(r.json) + r.stderr, expect);
    return await moreAnswers(clients, ops, 300);
  } finally {
    dest.proc.kill();
  }
}

const ROOT_ONLY = process.getuid?.() !== 0 && 'needs root (network namespaces)';

test('ferry migrate moves a serving guest A → B in postcopy with its 32 clients; a destination without the interface or the SOCKETS feature, or whose acquire step fails or dies, leaves it serving on A', { skip: ROOT_ONLY, timeout: 100_000 }, async (t) => {
  // A tiny downtime target keeps the migration from converging in precopy: the commit is postcopy's.
  await migrateServingGuest(t, ['--mode', 'postcopy', '--downtime-target', '0.001'], async (sb, clients, ops) => {
    ops = await failedAttempt(sb, clients, ops, ['--service-address', `${SERVICE}/24@eth9`], /no interface eth9/);
    // A destination that does not move sockets (as an older ferry): stopped after HELLO_ACK.
    ops = await failedAttempt(sb, clients, ops, ['--service-address', `${SERVICE}/24@eth0`], /does not move sockets/, ['FERRY_MOVE_SOCKETS=0']);
    // Inside the downtime, after the source gave up the address and froze the sockets: the rollback.
    ops = await failedAttempt(sb, clients, ops, ['--service-address', `${SERVICE}/24@eth0`, '--on-acquire', 'echo acquire-refused >&2; exit 3'], /acquire-refused/);
    // The same moment, but the destination dies (an injected fault: its hook kills its own ferry
    // process) and the migration connection is cut instead of answered: the same rollback.
    return failedAttempt(sb, clients, ops, ['--service-address', `${SERVICE}/24@eth0`, '--on-acquire', 'kill -9 $PPID'], /"code":"transport".*the guest keeps running here/);
  });
});

test('ferry migrate moves a serving guest A → B in precopy with its 32 clients, and back B → A in postcopy', { skip: ROOT_ONLY, timeout: 150_000 }, async (t) => {
  await migrateServingGuest(t, ['--mode', 'precopy'], async (_sb, _clients, ops) => ops, ['--mode', 'postcopy', '--downtime-target', '0.001']);
});
