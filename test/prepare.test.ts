// `ferry prepare` instruments ahead of time into the module cache; a progress bar shows on a
// terminal only; and a destination never instruments between a migration's pause and its resume:
// with a cold cache of its own it instruments the module it receives while the pages stream in,
// and answers the source's pause barrier only once that is done (the order of its trace lines).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FERRY_BIN, GUESTS, tmpDir } from './fixtures/guest/helpers.js';
import { killAll, makeSandbox, runMigrate, spawnFerry, startSource, useFileCache, verifyGuest, type FerryProc } from './fixtures/migration/ferry-procs.js';
import { ApiClient } from '../src/api/client.js';
import { checkExposition, valueOf } from './fixtures/prometheus-format.js';

useFileCache('prepare');

interface Run { code: number; stdout: string; stderr: string }

function run(cmd: string, args: string[], env: Record<string, string>): Promise<Run> {
  return new Promise((resolve) => {
    execFile(cmd, args, { env: { ...process.env, ...env }, timeout: 300_000 }, (err, stdout, stderr) => {
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : -1) : 0, stdout, stderr });
    });
  });
}

test('ferry prepare: instruments into a cold cache and says where; the second time it is cached; --json', async () => {
  const cache = tmpDir('prepare-cache');
  const env = { FERRY_CACHE_DIR: cache };
  const compute = path.join(GUESTS, 'compute.wasm');
  const first = await run(process.execPath, [FERRY_BIN, 'prepare', compute, '--json'], env);
  assert.equal(first.code, 0, first.stderr);
  const r = JSON.parse(first.stdout) as Record<string, unknown>;
  assert.equal(r['fromCache'], false);
  assert.equal(r['cacheDir'], cache);
  assert.equal(r['entry'], path.join(cache, 'modules', String(r['hash'])));
  assert.equal(r['sourceBytes'], fs.statSync(compute).size);
  assert.equal(fs.statSync(String(r['instrumented'])).size, r['instrumentedBytes']);
  assert.ok(Number(r['instrumentMs']) > 0);
  assert.equal(first.stderr, '', 'no progress bar when stderr is not a terminal');
  const second = await run(process.execPath, [FERRY_BIN, 'prepare', compute], env);
  assert.equal(second.code, 0, second.stderr);
  assert.equal(second.stdout, `${compute}: already prepared (${(Number(r['sourceBytes']) / 1024).toFixed(1)} KiB -> ${(Number(r['instrumentedBytes']) / 1024).toFixed(1)} KiB)\n${String(r['entry'])}\n`);
  // A module Ferry cannot run is refused with exit 4, as by ferry run.
  const notWasm = path.join(cache, 'not.wasm');
  fs.writeFileSync(notWasm, 'hello');
  const refused = await run(process.execPath, [FERRY_BIN, 'prepare', notWasm], env);
  assert.equal(refused.code, 4);
  assert.match(refused.stderr, /module refused: not a valid WebAssembly module/);
});

test('a progress bar on a terminal while instrumenting (script(1) gives ferry a pty)', async (t) => {
  if (!fs.existsSync('/usr/bin/script')) return t.skip('script(1) is not installed');
  const cache = tmpDir('prepare-tty');
  const cmd = `${JSON.stringify(process.execPath)} ${JSON.stringify(FERRY_BIN)} prepare ${JSON.stringify(path.join(GUESTS, 'compute.wasm'))}`;
  const r = await run('/usr/bin/script', ['-qec', cmd, '/dev/null'], { FERRY_CACHE_DIR: cache });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /instrumenting compute\.wasm \(\d+ KiB\) \|[█░]+\| \S+\s+step \d\/6/);
  assert.match(r.stdout, /compute\.wasm: instrumented in [\d.]+ s/);
});

test('a destination with a cold cache instruments before the switchover, never between pause and resume', async () => {
  const sb = makeSandbox();
  const procs: FerryProc[] = [];
  try {
    const dstCache = tmpDir('prepare-dst-cache'); // empty: the destination must instrument
    const dsock = path.join(sb.dir, 'dst.sock');
    const dst = spawnFerry('destination', ['run', '--incoming', '127.0.0.1:0', '--tls-psk', sb.keyFile, '--dir', `${sb.dstWork}:/work`, '--api-sock', dsock], [
      'env', `FERRY_CACHE_DIR=${dstCache}`, 'FERRY_TRACE=phases',
    ]);
    procs.push(dst);
    const [, port] = await dst.waitFor(/waiting for a migration on \S*:(\d+)\n/, 'the destination to listen', 30_000, 'err');
    const src = await startSource(sb, 'memtouch.wasm', ['--mib', '8', '--report-ms', '50', '--verify-file', '/work/verify'], '64M');
    procs.push(src);
    const { code, json, stderr } = await runMigrate(sb, Number(port), ['--mode', 'postcopy', '--verify']);
    assert.equal(code, 0, `migrate failed: ${stderr}\n${dst.err}`);
    assert.equal(json['verified'], true);
    const lines = dst.err.split('\n');
    const first = (re: RegExp) => lines.findIndex((l) => re.test(l));
    const instrumenting = first(/phase module instrumenting/);
    const ready = first(/phase module ready \(instrumented in \d+ ms\)/);
    const prepared = first(/phase guest prepared/);
    const barrier = first(/phase pause barrier answered/);
    const switchover = first(/phase switchover \+/);
    assert.ok(instrumenting >= 0 && ready > instrumenting, `the destination instrumented the module it received:\n${dst.err}`);
    assert.ok(prepared > ready, `the guest was prepared after instrumenting:\n${dst.err}`);
    assert.ok(barrier > prepared, `the source could pause only after that:\n${dst.err}`);
    assert.ok(switchover > barrier, `the switchover followed:\n${dst.err}`);
    assert.equal(lines.slice(barrier).some((l) => /instrument/.test(l)), false, 'nothing about instrumentation after the pause barrier');
    assert.ok(fs.readdirSync(path.join(dstCache, 'modules')).length === 1, 'the module is in the destination cache');
    // The destination's metrics after the move.
    const fams = checkExposition(await new ApiClient(dsock).metrics());
    assert.deepEqual(fams.problems, []);
    assert.ok(valueOf(fams.families, 'ferry_migration_received_bytes_total')! > 8 * 1048576 * 0.9);
    assert.ok(valueOf(fams.families, 'ferry_migration_received_pages_total')! >= 2048);
    assert.equal(valueOf(fams.families, 'ferry_guest_state', { state: 'running' }), 1);
    assert.match(await verifyGuest(dst, sb.dstWork), /^VERIFY OK \d+$/);
  } finally {
    killAll(...procs);
    sb.cleanup();
  }
});
