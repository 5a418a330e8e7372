// A snapshot as a migration source: `ferry serve-snapshot` into `ferry run --incoming --insecure` on
// loopback; the guest continues on the destination and every page arrives (digest verified).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Guest } from '../src/guest/guest.js';
import { SnapshotSession } from '../src/snapshot/index.js';
import { MEMTOUCH, ferry, ferryDone, fileText, seqNumbers, until } from './snapshot-helpers.js';

let tmp: string;
before(() => {
  tmp = mkdtempSync(join(tmpdir(), 'ferry-snapserve-'));
});
after(() => rmSync(tmp, { recursive: true, force: true }));

test('serve-snapshot starts a saved guest on a ferry run --incoming destination', async () => {
  const srcWork = join(tmp, 'src-work');
  const dstWork = join(tmp, 'dst-work');
  mkdirSync(srcWork);
  mkdirSync(dstWork);
  const outPath = join(tmp, 'src.out');
  const guest = await Guest.start({
    module: readFileSync(MEMTOUCH),
    args: ['memtouch', '--mib', '16', '--report-ms', '20', '--verify-file', '/work/verify'],
    preopens: [{ hostPath: srcWork, guestPath: '/work' }],
    stdio: { stdout: openSync(outPath, 'w') },
    maxMemoryBytes: 256 << 20,
  });
  await until('memtouch to report', () => seqNumbers(outPath).length >= 3);
  const snap = join(tmp, 'snap');
  await new SnapshotSession(guest).take({ to: snap });
  const srcSeq = seqNumbers(outPath);

  const dstOut = join(tmp, 'dst.out');
  const dest = ferry(['run', '--incoming', '127.0.0.1:0', '--insecure', '--dir', `${dstWork}:/work`, '--stdout', dstOut]);
  let port = 0;
  await until('the destination to listen', () => {
    const m = /waiting for a migration on [^\s]+:(\d+)/.exec(dest.stderr());
    if (m) port = Number(m[1]);
    return port > 0;
  });
  try {
    const served = await ferryDone(['serve-snapshot', snap, '--to', `127.0.0.1:${port}`, '--insecure', '--json']);
    assert.equal(served.code, 0, served.stderr);
    const report = JSON.parse(served.stdout) as { pages: number; pagesBeforeCommit: number; pagesRequested: number; pagesPushed: number };
    // (exit 0 already says the digests matched.) Every page the snapshot holds crossed exactly once:
    // with the state, pushed by the bulk stream, or asked for by a fault.
    assert.ok(report.pages > 0);
    assert.ok(report.pagesBeforeCommit > 0, 'the unwound stack travels with the state');
    assert.equal(report.pagesBeforeCommit + report.pagesPushed + report.pagesRequested, report.pages);

    await until('the destination guest to report', () => seqNumbers(dstOut).length >= 2);
    writeFileSync(join(dstWork, 'verify'), '');
    assert.equal(await dest.exit, 0, dest.stderr());
    const seq = seqNumbers(dstOut);
    assert.equal(seq[0], srcSeq[srcSeq.length - 1]! + 1, 'SEQ continues where the snapshot was taken');
    assert.match(fileText(dstOut), /VERIFY OK \d+/);
  } finally {
    if (dest.child.exitCode === null) dest.child.kill('SIGKILL');
  }
});

test('serve-snapshot refuses a missing snapshot and needs transport security', async () => {
  const r = await ferryDone(['serve-snapshot', join(tmp, 'nope'), '--to', '127.0.0.1:9', '--insecure']);
  assert.equal(r.code, 6);
  assert.match(r.stderr, /manifest\.json does not exist/);
  const s = await ferryDone(['serve-snapshot', join(tmp, 'nope'), '--to', '127.0.0.1:9']);
  assert.equal(s.code, 2);
  assert.match(s.stderr, /choose transport security/);
});
