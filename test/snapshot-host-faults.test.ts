// Host faults while a snapshot is written never end the guest. A `ferry run --api-sock` guest
// (fileio reading a 24 MiB file into a 24 MiB buffer, round after round: its stdout is the same
// bytes on every run) is snapshotted onto storage that fails:
//  - ENOSPC: a 8 MiB tmpfs this test mounts;
//  - EROFS: a read-only bind mount;
//  - EIO: an ext2 file system on a loop device whose capacity is cut under it after mounting
//    (the block layer then fails every write past the new end: "attempt to access beyond end of
//    device", a real EIO on fsync). Device-mapper's `error` target is not available here (no
//    /dev/mapper/control in this kernel's container).
// `ferry snapshot` must exit 6 naming the cause, the partial snapshot must be gone (or lack its
// manifest), and the guest must run on (--resume) or stay paused and resume; its output must be
// byte-identical to an undisturbed run's. Two more faults are made in-process at the writer's file
// system boundary (snapshotWriteHooks): EACCES is INJECTED (this test runs as root, which no
// permission bit stops), and the snapshot directory is really removed (rm -r) after the first
// memory write. Also here: a control-API client that hangs up mid-request, and a guest whose
// stdout file is on a full file system. The `ferry` processes run with
// --unhandled-rejections=strict: a promise rejected without a handler ends them, and fails the test.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '../src/api/client.js';
import { Guest } from '../src/guest/guest.js';
import { SnapshotSession } from '../src/snapshot/session.js';
import { snapshotWriteHooks } from '../src/snapshot/writer.js';
import { FerryProc } from './fixtures/migration/ferry-procs.js';
import { until } from './snapshot-helpers.js';

const FILEIO = new URL('../../guests/build/fileio.wasm', import.meta.url);
const COMPUTE = new URL('../../guests/build/compute.wasm', import.meta.url);
const GUEST_ARGS = ['--dir', '/data', '--read-into', '24', '--rounds', '40', '--interval-ms', '100'];

process.env['NODE_OPTIONS'] = `${process.env['NODE_OPTIONS'] ?? ''} --unhandled-rejections=strict`.trim();

const sh = (cmd: string, ...args: string[]) => execFileSync(cmd, args, { stdio: 'pipe' }).toString().trim();

/** Mounts made by this file, undone in reverse order in after() even when a test failed. */
const undo: Array<() => void> = [];
function cleanupMounts(): void {
  for (const f of undo.splice(0).reverse()) {
    try {
      f();
    } catch {
      /* keep undoing the rest */
    }
  }
}

let root: string;
let reference: string;

before(async () => {
  root = mkdtempSync(join(tmpdir(), 'ferry-hostfault-'));
  // The undisturbed run.
  const work = join(root, 'ref-data');
  mkdirSync(work);
  const out = join(root, 'ref.out');
  const p = new FerryProc('reference', ['run', FILEIO.pathname, '--dir', `${work}:/data`, '--stdout', out, '--', ...GUEST_ARGS]);
  assert.equal(await p.exitWithin(300_000), 0, p.err);
  reference = readFileSync(out, 'utf8');
  assert.match(reference, /^BLOB created 25165824\nREAD OK 1\n(READ OK \d+\n)+$/);
  assert.match(reference, /^READ OK 40$/m);
});

after(() => {
  cleanupMounts();
  rmSync(root, { recursive: true, force: true });
});

interface Running {
  proc: FerryProc;
  sock: string;
  out: string;
}

async function startGuest(name: string): Promise<Running> {
  const work = join(root, `${name}-data`);
  mkdirSync(work);
  const sock = join(root, `${name}.sock`);
  const out = join(root, `${name}.out`);
  const proc = new FerryProc(name, ['run', FILEIO.pathname, '--dir', `${work}:/data`, '--stdout', out, '--api-sock', sock, '--', ...GUEST_ARGS]);
  await until('READ OK 2 from the guest', () => /^READ OK 2$/m.test(existsSync(out) ? readFileSync(out, 'utf8') : '') || !proc.running, 300_000);
  assert.ok(proc.running, proc.err);
  return { proc, sock, out };
}

async function snapshotFails(g: Running, to: string, resume: boolean, cause: RegExp): Promise<string> {
  const snap = new FerryProc('snapshot', ['snapshot', '--api-sock', g.sock, '--to', to, ...(resume ? ['--resume'] : [])]);
  const code = await snap.exitWithin(120_000);
  assert.equal(code, 6, `ferry snapshot exits 6: ${snap.out}${snap.err}`);
  assert.match(snap.err, cause, 'the cause is named');
  assert.ok(!existsSync(join(to, 'manifest.json')), 'no manifest: the snapshot is not taken for a finished one');
  return snap.err;
}

/** The guest after a failed snapshot: running (resume) or paused, then resumed; its output as undisturbed. */
async function guestContinues(g: Running, resumed: boolean): Promise<void> {
  const api = new ApiClient(g.sock);
  const info = await api.info();
  assert.equal(info.state, resumed ? 'running' : 'paused', `the guest is ${info.state}`);
  if (!resumed) {
    const out = readFileSync(g.out, 'utf8');
    await api.resume();
    assert.ok(g.proc.running);
    assert.notEqual(out, reference, 'the guest was stopped mid-way (else this proves nothing)');
  }
  assert.equal(await g.proc.exitWithin(300_000), 0, g.proc.err);
  assert.doesNotMatch(g.proc.err, /unhandled|Error:/i);
  assert.equal(readFileSync(g.out, 'utf8'), reference, 'byte-identical to the undisturbed run');
}

describe('a failed snapshot leaves the guest as it was', () => {
  test('ENOSPC (8 MiB tmpfs), without --resume: the guest stays paused, resumes, and its output is unchanged; a hung-up API client harms nothing', async () => {
    const mnt = join(root, 'small');
    mkdirSync(mnt);
    sh('mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mnt);
    undo.push(() => sh('umount', '-l', mnt));
    const g = await startGuest('enospc');
    // Control-API clients that go away mid-request: a half-sent body, and a request whose answer nobody reads.
    await new Promise<void>((resolve) => {
      const s = net.connect(g.sock, () => s.write('PUT /guest/snapshot HTTP/1.1\r\nHost: x\r\nContent-Length: 500\r\n\r\n{"to":'));
      s.on('error', () => undefined);
      setTimeout(() => (s.destroy(), resolve()), 100);
    });
    await new Promise<void>((resolve) => {
      const s = net.connect(g.sock, () => (s.write('GET /guest HTTP/1.1\r\nHost: x\r\n\r\n'), s.destroy(), resolve()));
      s.on('error', () => undefined);
    });
    const err = await snapshotFails(g, join(mnt, 'snap'), false, /ENOSPC|no space left/);
    assert.match(err, /the partial snapshot was removed; the guest is paused/);
    assert.deepEqual(readdirSync(mnt), [], 'nothing left on the full file system');
    await guestContinues(g, false);
  });

  test('EROFS (read-only bind mount), with --resume: the guest runs on', async () => {
    const src = join(root, 'rw');
    const ro = join(root, 'ro');
    mkdirSync(src);
    mkdirSync(ro);
    sh('mount', '--bind', src, ro);
    undo.push(() => sh('umount', '-l', ro));
    sh('mount', '-o', 'remount,bind,ro', ro);
    const g = await startGuest('erofs');
    const err = await snapshotFails(g, join(ro, 'snap'), true, /EROFS|read-only/);
    assert.match(err, /the guest runs on/);
    await guestContinues(g, true);
  });

  test('EIO (loop device cut under its file system), with --resume: the guest runs on', async () => {
    const base = join(root, 'eio');
    mkdirSync(base);
    sh('mount', '-t', 'tmpfs', '-o', 'size=80m', 'tmpfs', base);
    undo.push(() => sh('umount', '-l', base));
    const img = join(base, 'disk.img');
    writeFileSync(img, '');
    sh('truncate', '-s', '64M', img);
    sh('mkfs.ext2', '-q', '-F', img);
    const loop = sh('losetup', '-f', '--show', img);
    undo.push(() => sh('losetup', '-d', loop));
    const mnt = join(base, 'mnt');
    mkdirSync(mnt);
    sh('mount', '-o', 'errors=continue', loop, mnt);
    undo.push(() => sh('umount', '-l', mnt));
    // Load the block bitmaps (a large file written and removed), then cut the device to 2 MiB:
    // allocation still works from the cached bitmaps, every write-back past 2 MiB fails with EIO.
    sh('dd', 'if=/dev/zero', `of=${join(mnt, 'warm')}`, 'bs=1M', 'count=40', 'status=none', 'conv=fsync');
    rmSync(join(mnt, 'warm'));
    sh('sync');
    sh('truncate', '-s', '2M', img);
    sh('losetup', '-c', loop);
    const g = await startGuest('eio');
    const err = await snapshotFails(g, join(mnt, 'snap'), true, /EIO|i\/o error/i);
    assert.match(err, /the guest runs on/);
    await guestContinues(g, true);
  });

  test('a guest whose stdout file is on a full file system keeps running: its writes fail, it does not', async () => {
    const mnt = join(root, 'full');
    mkdirSync(mnt);
    sh('mount', '-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', mnt);
    undo.push(() => sh('umount', '-l', mnt));
    try {
      writeFileSync(join(mnt, 'filler'), Buffer.alloc(1024 * 1024));
    } catch {
      /* full now */
    }
    const p = new FerryProc('full-stdout', ['run', COMPUTE.pathname, '--stdout', join(mnt, 'out.txt'), '--', '--iterations', '2000']);
    const code = await p.exitWithin(300_000);
    assert.equal(code, 0, `the guest's own exit code (its printf failed with ENOSPC): ${p.err}`);
    assert.doesNotMatch(p.err, /unhandled|Error:|guest failed/i);
  });
});

describe('faults at the writer boundary (in-process)', () => {
  /** A fileio guest in this process, with a snapshot session; returns when it has read twice. */
  async function inProcess(name: string): Promise<{ guest: Guest; session: SnapshotSession; out: string; fd: number }> {
    const work = join(root, `${name}-data`);
    mkdirSync(work);
    const out = join(root, `${name}.out`);
    const fd = openSync(out, 'w');
    const guest = await Guest.start({ module: readFileSync(FILEIO), args: ['fileio', ...GUEST_ARGS], preopens: [{ guestPath: '/data', hostPath: work }], stdio: { stdout: fd } });
    await until('READ OK 2', () => /^READ OK 2$/m.test(readFileSync(out, 'utf8')), 300_000);
    return { guest, session: new SnapshotSession(guest), out, fd };
  }

  async function finishes(g: { guest: Guest; out: string; fd: number }): Promise<void> {
    const exit = await g.guest.exited;
    closeSync(g.fd);
    assert.deepEqual({ reason: exit.reason, code: exit.code }, { reason: 'exit', code: 0 });
    assert.equal(readFileSync(g.out, 'utf8'), reference, 'byte-identical to the undisturbed run');
  }

  test('EACCES (INJECTED at the writer boundary: root passes every permission check), without resume: paused, then resumed', async () => {
    const g = await inProcess('eacces');
    const to = join(root, 'eacces-snap');
    snapshotWriteHooks.beforeStep = (step, path) => {
      if (step === 'file' && path.endsWith('state.json')) throw Object.assign(new Error(`EACCES: permission denied, open '${path}' (injected)`), { code: 'EACCES', path });
    };
    try {
      await assert.rejects(g.session.take({ to, resume: false }), (e: Error) => /EACCES/.test(e.message) && /the partial snapshot was removed; the guest is paused/.test(e.message));
    } finally {
      snapshotWriteHooks.beforeStep = null;
    }
    assert.ok(!existsSync(to), 'the directory this snapshot made is gone');
    assert.equal(g.guest.status, 'paused');
    g.guest.resume();
    await finishes(g);
  });

  test('the snapshot directory removed mid-write (rm -r after the first memory write), with resume: the guest runs on', async () => {
    const g = await inProcess('removed');
    const to = join(root, 'removed-snap');
    let removed = false;
    snapshotWriteHooks.beforeStep = (step) => {
      if (step === 'write' && !removed) {
        removed = true;
        rmSync(to, { recursive: true, force: true });
      }
    };
    try {
      await assert.rejects(g.session.take({ to, resume: true }), (e: Error) => /ENOENT/.test(e.message) && /the guest runs on/.test(e.message));
    } finally {
      snapshotWriteHooks.beforeStep = null;
    }
    assert.ok(removed);
    assert.ok(!existsSync(join(to, 'manifest.json')));
    assert.equal(g.guest.status, 'running');
    // The session still works: a full snapshot now succeeds (and the guest runs on).
    const ok = await g.session.take({ to: join(root, 'after-snap'), resume: true });
    assert.equal(ok.kind, 'full');
    assert.ok(existsSync(join(root, 'after-snap', 'manifest.json')));
    await finishes(g);
  });
});
