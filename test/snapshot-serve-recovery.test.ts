// What serve-snapshot gains from sharing the live source's sender: after the commit a lost
// connection is recovered (same session, the destination's RECEIVED_SET, the rest sent again), and
// faults are answered by the urgent channel's own thread. A snapshot is served through a FaultProxy
// (the injected fault is the only stand-in here: real sockets, real ferry destination, real guest)
// into `ferry run --incoming`; the guest must carry on there with every page right (VERIFY OK, the
// digest checked by serveSnapshot) and SEQ continuing where the snapshot was taken.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Guest } from '../src/guest/guest.js';
import { SnapshotSession } from '../src/snapshot/index.js';
import { serveSnapshot } from '../src/snapshot/serve.js';
import { MEMTOUCH, ferry, fileText, seqNumbers, until } from './snapshot-helpers.js';
import { FaultProxy, type FaultSpec } from './faults/proxy.js';

const MIB = 32;
const KiB = 1024;
let tmp: string;
let snap: string;
let lastSeq: number;

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), 'ferry-snapserve-rec-'));
  const work = join(tmp, 'src-work');
  mkdirSync(work);
  const outPath = join(tmp, 'src.out');
  // Random rewrites at a steady rate: on the destination most of them hit pages still pending.
  const guest = await Guest.start({
    module: readFileSync(MEMTOUCH),
    args: ['memtouch', '--mib', String(MIB), '--random', '--rate', '3000', '--report-ms', '50', '--verify-file', '/work/verify'],
    preopens: [{ hostPath: work, guestPath: '/work' }],
    stdio: { stdout: openSync(outPath, 'w') },
    maxMemoryBytes: 256 << 20,
  });
  await until('memtouch to report', () => seqNumbers(outPath).length >= 3);
  snap = join(tmp, 'snap');
  await new SnapshotSession(guest).take({ to: snap });
  const seq = seqNumbers(outPath);
  lastSeq = seq[seq.length - 1]!;
});
after(() => rmSync(tmp, { recursive: true, force: true }));

async function serveThroughFault(name: string, faults: FaultSpec[]) {
  const dstWork = join(tmp, `${name}-work`);
  mkdirSync(dstWork);
  const dstOut = join(tmp, `${name}.out`);
  const dest = ferry(['run', '--incoming', '127.0.0.1:0', '--insecure', '--dir', `${dstWork}:/work`, '--stdout', dstOut]);
  let port = 0;
  await until('the destination to listen', () => {
    const m = /waiting for a migration on [^\s]+:(\d+)/.exec(dest.stderr());
    if (m) port = Number(m[1]);
    return port > 0;
  });
  const proxy = await FaultProxy.start('127.0.0.1', port);
  try {
    for (const f of faults) proxy.inject(f);
    const report = await serveSnapshot(snap, { host: '127.0.0.1', port: proxy.port, security: { kind: 'insecure' }, recoverTimeoutS: 60 });
    await proxy.allFired(1000);
    await until('the destination guest to report', () => seqNumbers(dstOut).length >= 2);
    writeFileSync(join(dstWork, 'verify'), '');
    assert.equal(await dest.exit, 0, dest.stderr());
    const seq = seqNumbers(dstOut);
    assert.equal(seq[0], lastSeq + 1, 'SEQ continues where the snapshot was taken');
    assert.match(fileText(dstOut), /VERIFY OK \d+/);
    return { report, connections: proxy.connectionCount, channels: proxy.channels() };
  } finally {
    await proxy.close();
    if (dest.child.exitCode === null) dest.child.kill('SIGKILL');
  }
}

test('serve-snapshot recovers a bulk channel cut in postcopy', async () => {
  // Byte 4 MiB of the bulk stream lies past the module, the layout and the runtime's pages: in
  // the postcopy push of the 32 MiB the snapshot holds.
  const { report, connections, channels } = await serveThroughFault('bulk-cut', [
    { kind: 'cut', connection: 'bulk', direction: 'to-destination', at: { atByte: 4096 * KiB } },
  ]);
  assert.equal(report.verified, true);
  assert.equal(report.outages, 1, 'one connection lost and recovered');
  assert.equal(connections, 4, `both channels connected again (${channels.join(',')})`);
  assert.ok(report.pagesPushed + report.pagesRequested >= report.pages - report.pagesBeforeCommit, 'every pending page was sent');
});

test('serve-snapshot answers faults on its urgent thread and recovers an urgent channel cut', async () => {
  // Slow bulk stream: the guest on the destination faults on many pending pages meanwhile, and the
  // urgent channel is cut after 64 KiB of answers.
  const { report, connections } = await serveThroughFault('urgent-cut', [
    { kind: 'delay', connection: 'bulk', direction: 'to-destination', delayMs: 5 },
    { kind: 'cut', connection: 'urgent', direction: 'to-destination', at: { afterBytes: 64 * KiB } },
  ]);
  assert.equal(report.verified, true);
  assert.ok(report.pagesRequested > 0, 'faults were answered on the urgent channel');
  assert.equal(report.outages, 1);
  assert.equal(connections, 4);
});
