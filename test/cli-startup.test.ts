// The control commands start fast (issue 17): they load neither commander nor anything heavy
// (Binaryen, the guest runtime, the migration engine, snapshots, the addon, zod, cli-progress, the
// CLI's bundle) — checked by recording every module a real `ferry` process loads, not by timing it
// (the time is in bench/cli.bench.ts); the fast path answers exactly as the full program does;
// --version; the full program runs from its one-file bundle, whose modules still find their files.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { fastPath } from '../src/cli/fast-path.js';
import { FERRY_BIN, REPO, tmpDir } from './fixtures/guest/helpers.js';

const RECORD = fileURLToPath(new URL('./fixtures/cli/record-loads.js', import.meta.url));

interface Run { code: number; stdout: string; stderr: string; loads: string[] }

function ferry(args: string[], env: Record<string, string> = {}): Promise<Run> {
  const loadsFile = path.join(tmpDir('loads'), 'loads.txt');
  fs.writeFileSync(loadsFile, '');
  return new Promise((resolve) => {
    execFile(process.execPath, ['--import', RECORD, FERRY_BIN, ...args], { env: { ...process.env, ...env, FERRY_TEST_LOADS: loadsFile }, timeout: 60_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      const loads = fs.readFileSync(loadsFile, 'utf8').split('\n').filter(Boolean);
      resolve({ code, stdout, stderr, loads });
    });
  });
}

/** The full program: commander and its modules one by one, or the bundle of them (scripts/bundle.mjs). */
const FULL_PROGRAM = /node_modules\/commander\/|\/dist\/src\/cli\/main\.bundle\.cjs$/;
const HEAVY = [FULL_PROGRAM, /node_modules\/binaryen\//, /node_modules\/zod\//, /node_modules\/cli-progress\//, /\/dist\/src\/(guest|migration|snapshot|memory|sys|wasi|state)\//, /\/api\/(server|schemas|guest-controller)\.js$/];

test('the fast path takes exactly the control commands it knows, and leaves everything else to the full program', () => {
  for (const argv of [
    ['status', '--api-sock', '/s'],
    ['pause', '--api-sock=/s'],
    ['resume', '--api-sock', '/s', '--json'],
    ['stop', '--json', '--api-sock', '/s'],
    ['snapshot', '--api-sock', '/s', '--to', 'd', '--diff-from', 'p', '--resume', '--json'],
    ['migrate', '--api-sock', '/s', '--cancel'],
    ['--version'],
    ['-V'],
  ]) assert.notEqual(fastPath(argv), null, argv.join(' '));
  for (const argv of [
    [],
    ['status'],
    ['status', '--help'],
    ['status', '--api-sock', '/s', '--json', '--json'],
    ['status', '--api-sock'],
    ['status', '--api-sock', '--json'],
    ['status', '--api-sock', '/s', '--verbose'],
    ['status', '--api-sock', '/s', '--', 'x'],
    ['status', '-h'],
    ['snapshot', '--api-sock', '/s'],
    ['migrate', '--api-sock', '/s'],
    ['migrate', '--api-sock', '/s', '--cancel', '--to', 'h:1'],
    ['run', 'x.wasm'],
    ['--version', 'status'],
  ]) assert.equal(fastPath(argv), null, argv.join(' '));
});

test('status, pause, resume, stop, snapshot and migrate --cancel load nothing heavy', async () => {
  const sock = path.join(tmpDir('startup'), 'nobody.sock');
  for (const args of [
    ['status', '--api-sock', sock],
    ['pause', '--api-sock', sock],
    ['resume', '--api-sock', sock],
    ['stop', '--api-sock', sock, '--json'],
    ['snapshot', '--api-sock', sock, '--to', path.join(path.dirname(sock), 'snap')],
    ['migrate', '--api-sock', sock, '--cancel'],
    ['--version'],
  ]) {
    const r = await ferry(args);
    assert.ok(r.loads.some((u) => u.endsWith('/bin/ferry.js')), `the hook recorded the process's modules: ${r.loads.join(' ')}`);
    const heavy = r.loads.filter((u) => HEAVY.some((re) => re.test(u)));
    assert.deepEqual(heavy, [], `ferry ${args.join(' ')} loaded ${heavy.join(', ')}`);
    if (args[0] !== '--version') {
      assert.notEqual(r.code, 0, 'no guest listens');
      assert.match(r.stderr, /no Ferry guest listening on/);
    }
  }
  // The check can fail: the full program (run --help) loads commander's code.
  const full = await ferry(['run', '--help']);
  assert.ok(full.loads.some((u) => FULL_PROGRAM.test(u)));
});

test('the fast path and the full program answer alike (a repeated flag sends a command to the full program)', async () => {
  const sock = path.join(tmpDir('startup-same'), 'nobody.sock');
  for (const [fast, full] of [
    [['status', '--api-sock', sock, '--json'], ['status', '--api-sock', sock, '--json', '--json']],
    [['snapshot', '--api-sock', sock, '--to', '/tmp/x'], ['snapshot', '--api-sock', sock, '--to', '/tmp/x', '--resume', '--resume']],
  ]) {
    const a = await ferry(fast!);
    const b = await ferry(full!);
    assert.ok(!a.loads.some((u) => FULL_PROGRAM.test(u)) && b.loads.some((u) => FULL_PROGRAM.test(u)), 'one run took each path');
    assert.deepEqual([a.code, a.stdout, a.stderr], [b.code, b.stdout, b.stderr]);
  }
  const cancel = await ferry(['migrate', '--api-sock', sock, '--cancel']);
  assert.equal(cancel.code, 1);
  assert.equal(cancel.stderr, `ferry: no Ferry guest listening on ${sock}\n`);
});

test('ferry --version and -V print the package version; the help lists prepare and --version', async () => {
  const version = (JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as { version: string }).version;
  for (const flag of ['--version', '-V']) {
    const r = await ferry([flag]);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, `${version}\n`);
  }
  const help = await ferry(['--help']);
  assert.match(help.stdout, /-V, --version\s+print the package version/);
  assert.match(help.stdout, /prepare \[options\] <module>/);
});

test('the full program runs from the one-file bundle npm run build makes (FERRY_CLI_BUNDLE=0: its modules one by one), and the bundled modules find their files where they were', async () => {
  const bundled = await ferry(['run', '--help']);
  assert.ok(bundled.loads.some((u) => u.endsWith('/dist/src/cli/main.bundle.cjs')), bundled.loads.join(' '));
  assert.ok(!bundled.loads.some((u) => /\/dist\/src\/cli\/(main|commands\/run)\.js$/.test(u)), 'none of the modules it was made from');
  const plain = await ferry(['run', '--help'], { FERRY_CLI_BUNDLE: '0' });
  assert.ok(plain.loads.some((u) => u.endsWith('/dist/src/cli/main.js')) && !plain.loads.some((u) => u.endsWith('main.bundle.cjs')));
  assert.deepEqual([bundled.code, bundled.stdout, bundled.stderr], [plain.code, plain.stdout, plain.stderr]);

  // Each module's own URL replaces import.meta.url in the bundles (CommonJS has none): every one
  // names a file that exists (a worker script, the package.json, bin/ferry.js, a page source module).
  for (const [name, least] of [['dist/src/cli/main.bundle.cjs', 10], ['dist/src/guest/worker.bundle.cjs', 2]] as const) {
    const file = path.join(REPO, name);
    const text = fs.readFileSync(file, 'utf8');
    const own = [...text.matchAll(/new URL\("([^"]+)", __ferryBundleUrl\)\.href/g)].map((m) => m[1]!);
    assert.ok(own.length >= least, `${name}: modules with their own URL: ${own.length}`);
    for (const rel of own) assert.ok(fs.existsSync(path.resolve(path.dirname(file), rel)), `${rel} (from ${name}'s folder) exists`);
    assert.ok(!text.includes('import.meta'), `${name}: no import.meta left`);
  }
});

test("a guest started by the bundled CLI runs on the thread bin/ferry.js started ahead (the bundle's copy of the spare registry finds it)", async () => {
  // Every thread loads this file's hooks (workers inherit --import) and records its script: one
  // guest thread's script when the guest adopted the spare; without the registry shared through
  // globalThis the bundle would find no spare and start a second thread.
  const r = await ferry(['run', path.join(REPO, 'guests/build/compute.wasm'), '--', '--iterations', '1000']);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.loads.filter((u) => u.endsWith('/dist/src/guest/worker.bundle.cjs')).length, 1, r.loads.join(' '));
  assert.equal(r.loads.filter((u) => u.endsWith('/dist/src/guest/worker.boot.cjs')).length, 1, 'through its boot script (its code cache)');
});
