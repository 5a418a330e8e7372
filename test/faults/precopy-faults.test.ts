// Faults injected BEFORE the switchover (precopy), through the FaultProxy between real ferry
// processes, with TLS-PSK and with --insecure. Every one must end the same way: `ferry migrate`
// fails cleanly (exit 6, or 3 for "did not converge"), the source guest never stopped and goes on
// printing, the destination exits non-zero without ever running the guest — and, after all of
// them, the source guest verifies every page of its memory (VERIFY OK).
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '../../src/api/client.js';
import { FerryProc, killAll, makeSandbox, startSource, useFileCache, verifyGuest, type Sandbox } from '../fixtures/migration/ferry-procs.js';
import { InjectionTally, SECURITIES, migrateOutcome, startDestinationWith, startMigrate, waitForMigration, type Security } from './harness.js';
import { FaultProxy, type FaultKind } from './proxy.js';

useFileCache('faults');
// Every fault here is placed in precopy's stream on the bulk channel (its byte offsets are that
// stream's): the source keeps precopy in JavaScript. Native precopy's stream has faults of its
// own (native-precopy-faults.test.ts). The ferry processes inherit this environment.
process.env['FERRY_NATIVE_PRECOPY'] = '0';

const GUEST_MIB = 32;
const GUEST_ARGS = ['--mib', String(GUEST_MIB), '--rate', '2000', '--report-ms', '100', '--verify-file', '/work/verify'];
const MIGRATE_ARGS = ['--mode', 'precopy', '--max-bandwidth', '16M', '--verify'];
const KiB = 1024;
const MiB = 1024 * KiB;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Ctx {
  proxy: FaultProxy;
  sb: Sandbox;
  sec: Security;
}

interface Case {
  name: string;
  kind: FaultKind;
  /** Arms the fault (before or while the migration runs). */
  inject(ctx: Ctx): Promise<void>;
  /**
   * The fault is a partition that outlives the migration: the destination cannot learn that the
   * source gave up (Ferry has no idle timeout) until the partition ends, so end it first.
   */
  partition?: boolean;
}

/** Once precopy has started pass 1, the destination's only bulk message to come is the switchover's PONG. */
const inPass1 = (sb: Sandbox) => waitForMigration(sb.sock, (s) => s.state === 'precopy' && Number(s['pass']) >= 1, 'precopy pass 1');

const cases: Case[] = [
  {
    name: 'cut the bulk channel early (64 KiB in)',
    kind: 'cut',
    inject: async ({ proxy }) => proxy.inject({ kind: 'cut', connection: 'bulk', direction: 'to-destination', at: { atByte: 64 * KiB } }),
  },
  {
    name: 'cut the bulk channel mid precopy (12 MiB in)',
    kind: 'cut',
    inject: async ({ proxy }) => proxy.inject({ kind: 'cut', connection: 'bulk', direction: 'to-destination', at: { atByte: 12 * MiB } }),
  },
  {
    name: 'cut just before completion (the switchover barrier held, then the connection cut)',
    kind: 'cut',
    async inject({ proxy, sb }) {
      await inPass1(sb);
      proxy.inject({ kind: 'stall', connection: 'bulk', direction: 'to-source', stallMs: Infinity });
      await waitForMigration(sb.sock, (s) => s.state === 'switchover', 'the switchover');
      await sleep(200);
      proxy.inject({ kind: 'cut', connection: 'bulk', direction: 'to-destination' });
    },
  },
  {
    name: 'corrupt one byte of the bulk stream early (64 KiB in)',
    kind: 'corrupt',
    inject: async ({ proxy }) => proxy.inject({ kind: 'corrupt', connection: 'bulk', direction: 'to-destination', at: { atByte: 64 * KiB + 7 } }),
  },
  {
    name: 'corrupt one byte of the bulk stream mid precopy (8 MiB in)',
    kind: 'corrupt',
    inject: async ({ proxy }) => proxy.inject({ kind: 'corrupt', connection: 'bulk', direction: 'to-destination', at: { atByte: 8 * MiB + 1234 } }),
  },
  {
    name: "corrupt the destination's switchover answer (bulk, to the source)",
    kind: 'corrupt',
    async inject({ proxy, sb }) {
      await inPass1(sb);
      proxy.inject({ kind: 'corrupt', connection: 'bulk', direction: 'to-source', at: { afterBytes: 14 } });
    },
  },
  {
    name: 'stall the bulk channel for ever mid precopy; the operator cancels',
    kind: 'stall',
    partition: true,
    async inject({ proxy, sb }) {
      proxy.inject({ kind: 'stall', connection: 'bulk', direction: 'to-destination', at: { atByte: 4 * MiB }, stallMs: Infinity });
      await proxy.allFired(60_000);
      await sleep(1000);
      await new ApiClient(sb.sock).cancelMigration();
    },
  },
];

const tally = new InjectionTally('faults before the switchover');

for (const sec of SECURITIES) {
  describe(`faults before the switchover (${sec})`, () => {
    let sb: Sandbox;
    let src: FerryProc;
    const procs: FerryProc[] = [];
    before(async () => {
      sb = makeSandbox();
      src = await startSource(sb, 'memtouch.wasm', GUEST_ARGS, '512M', 3);
      procs.push(src);
    });
    after(() => {
      killAll(...procs);
      sb.cleanup();
    });

    for (const c of cases) {
      test(c.name, async () => {
        const { proc: dst, port } = await startDestinationWith(sb, sec);
        procs.push(dst);
        const proxy = await FaultProxy.start('127.0.0.1', port);
        try {
          tally.tried(c.kind);
          const seqBefore = src.seqs().length;
          const mig = startMigrate(sb, proxy.port, sec, MIGRATE_ARGS);
          procs.push(mig);
          const armed = c.inject({ proxy, sb, sec });
          const out = await migrateOutcome(mig);
          await armed;
          assert.ok(proxy.injections().some((r) => r.kind === c.kind), `the ${c.kind} never happened: ${proxy.describe().join('; ')}`);
          assert.ok(out.code === 6 || out.code === 3, `ferry migrate exit ${out.code} (want 6 or 3): ${JSON.stringify(out.json)}`);
          assert.ok(out.json['error'], 'the JSON names the error');
          // The source guest never stopped: running, and printing more.
          assert.equal((await new ApiClient(sb.sock).info()).state, 'running');
          await src.waitFor(new RegExp(`^SEQ ${seqBefore + 3} `, 'm'), 'more SEQ lines on the source', 30_000);
          if (c.partition) await proxy.close();
          assert.notEqual(await dst.exitWithin(30_000), 0, 'the destination exits non-zero');
          assert.equal(dst.out, '', 'the destination never ran the guest');
          tally.survived(c.kind);
        } finally {
          await proxy.close();
        }
      });
    }

    test('the source guest verifies every page after all of these failures', async () => {
      assert.equal(await verifyGuest(src, sb.srcWork), `VERIFY OK ${(GUEST_MIB * MiB) / 4096}`);
      assert.equal(await src.exitWithin(60_000), 0);
    });
  });
}
