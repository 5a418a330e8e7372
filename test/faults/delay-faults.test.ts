// Faults a migration must simply ride out: latency on every channel in both directions (precopy
// and postcopy), a short stall early in precopy, and the urgent channel cut during precopy (a
// precopy migration never needs it; a postcopy one notices after the switchover and reconnects)
// or as it opens (the source opens it again).
// Each must complete with matching digests, the guest's own VERIFY OK on the destination, and an
// unbroken SEQ sequence.
import { strict as assert } from 'node:assert';
import { after, describe, test } from 'node:test';
import { FerryProc, killAll, makeSandbox, useFileCache, type Sandbox } from '../fixtures/migration/ferry-procs.js';
import { nativeFaultsEnabled } from '../../src/migration/dataplane/connect.js';
import { nativePrecopyEnabled } from '../../src/migration/dataplane/precopy-plane.js';
import { InjectionTally, SECURITIES, assertGuestMoved, migrateOutcome, proxiedPair, startMigrate, waitForMigration } from './harness.js';
import { FaultProxy, type FaultKind } from './proxy.js';

useFileCache('faults');

const GUEST_MIB = 32;
const GUEST_PAGES = (GUEST_MIB * 1024 * 1024) / 4096;
const GUEST_ARGS = ['--mib', String(GUEST_MIB), '--rate', '2000', '--random', '--report-ms', '100', '--verify-file', '/work/verify'];

interface Case {
  name: string;
  kind: FaultKind;
  mode: 'precopy' | 'postcopy';
  inject(proxy: FaultProxy, sb: Sandbox): Promise<void>;
  /** What else must be true of the connections once the migration has completed. */
  check?(proxy: FaultProxy): void;
}

/** The connection precopy's pages travel on (the source, spawned from here, sees the same environment). */
const precopyStream = nativeFaultsEnabled() && nativePrecopyEnabled() ? 'dataplane' : 'bulk';

/** Latency on the first session's connections (all three with the native fault path), both directions, from the first byte. */
async function delayEverything(proxy: FaultProxy): Promise<void> {
  for (const connection of nativeFaultsEnabled() ? (['bulk', 'urgent', 'dataplane'] as const) : (['bulk', 'urgent'] as const)) {
    for (const direction of ['to-destination', 'to-source'] as const) {
      proxy.inject({ kind: 'delay', connection, direction, delayMs: 2, at: { atByte: 0 } });
    }
  }
}

const cases: Case[] = [
  { name: 'precopy with 2 ms added to every chunk, both channels, both directions', kind: 'delay', mode: 'precopy', inject: delayEverything },
  { name: 'postcopy with 2 ms added to every chunk, both channels, both directions', kind: 'delay', mode: 'postcopy', inject: delayEverything },
  {
    // Precopy's stream is on the data plane connection where precopy is native (--max-bandwidth
    // caps it there too), else on the bulk channel: the stall is on whichever carries it.
    name: `precopy with its stream (${precopyStream}) stalled for 1.5 s early (256 KiB in)`,
    kind: 'stall',
    mode: 'precopy',
    inject: async (proxy) => proxy.inject({ kind: 'stall', connection: precopyStream, direction: 'to-destination', at: { atByte: 256 * 1024 }, stallMs: 1500 }),
  },
  {
    name: 'precopy with the urgent channel cut during pass 1 (precopy never uses it)',
    kind: 'cut',
    mode: 'precopy',
    async inject(proxy, sb) {
      await waitForMigration(sb.sock, (s) => s.state === 'precopy' && Number(s['pass']) >= 1, 'precopy pass 1');
      proxy.inject({ kind: 'cut', connection: 'urgent', direction: 'to-destination' });
    },
  },
  {
    name: 'postcopy with the urgent channel cut during its precopy pass',
    kind: 'cut',
    mode: 'postcopy',
    async inject(proxy, sb) {
      await waitForMigration(sb.sock, (s) => s.state === 'precopy', 'precopy pass 0');
      proxy.inject({ kind: 'cut', connection: 'urgent', direction: 'to-destination' });
    },
  },
  {
    // The stream starts on the bulk channel while the urgent one is still opening: a failed
    // opening is tried again before the switchover needs it.
    name: 'postcopy with the urgent channel cut as it opens (opened again)',
    kind: 'cut',
    mode: 'postcopy',
    inject: async (proxy) => proxy.inject({ kind: 'cut', connection: 'urgent', direction: 'to-destination', at: { atByte: 0 } }),
    check(proxy) {
      const urgent = proxy.channels().filter((c) => c === 'urgent').length;
      assert.ok(urgent >= 2, `the urgent channel was opened again (connections: ${proxy.channels().join(',')})`);
    },
  },
];

if (nativeFaultsEnabled()) {
  cases.push({
    // Opened right after the bulk channel's handshake, like the urgent channel tried again on failure.
    name: 'postcopy with the data plane connection cut as it opens (opened again)',
    kind: 'cut',
    mode: 'postcopy',
    inject: async (proxy) => proxy.inject({ kind: 'cut', connection: 'dataplane', direction: 'to-destination', at: { atByte: 0 } }),
    check(proxy) {
      const opened = proxy.channels().filter((c) => c === 'dataplane').length;
      assert.ok(opened >= 2, `the data plane connection was opened again (connections: ${proxy.channels().join(',')})`);
    },
  });
}

const tally = new InjectionTally('faults a migration rides out');

for (const sec of SECURITIES) {
  describe(`faults a migration rides out (${sec})`, () => {
    const procs: FerryProc[] = [];
    const sandboxes: Sandbox[] = [];
    after(() => {
      killAll(...procs);
      for (const sb of sandboxes) sb.cleanup();
    });

    for (const c of cases) {
      test(c.name, async () => {
        const sb = makeSandbox();
        sandboxes.push(sb);
        const { src, dst, proxy } = await proxiedPair(sb, sec, GUEST_ARGS, procs);
        try {
          tally.tried(c.kind);
          // Postcopy cases need the postcopy phase: the 1 µs target keeps a starved guest from ending
          // as a stop-and-copy. Precopy cases keep the default target (they must converge).
          const downtime = c.mode === 'postcopy' ? ['--downtime-target', '0.001'] : [];
          const mig = startMigrate(sb, proxy.port, sec, ['--mode', c.mode, ...downtime, '--max-bandwidth', '16M', '--verify']);
          procs.push(mig);
          const armed = c.inject(proxy, sb);
          const out = await migrateOutcome(mig, 90_000);
          await armed;
          assert.ok(proxy.injections().some((r) => r.kind === c.kind), `the ${c.kind} never happened: ${proxy.describe().join('; ')}`);
          assert.equal(out.code, 0, `ferry migrate exit ${out.code}: ${JSON.stringify(out.json)}\n${out.stderr.slice(-1500)}`);
          assert.equal(out.json['mode'], c.mode);
          assert.equal(out.json['verified'], true, 'memory digests match on both sides');
          await assertGuestMoved(sb, src, dst, GUEST_PAGES);
          c.check?.(proxy);
          tally.survived(c.kind);
        } catch (err) {
          (err as Error).message += `\n--- injections ---\n${proxy.describe().join('\n')}\n--- source stderr ---\n${src.err.slice(-2000)}\n--- destination stderr ---\n${dst.err.slice(-2000)}`;
          throw err;
        } finally {
          await proxy.close();
          killAll(src, dst);
        }
      });
    }
  });
}
