// `ferry run` and `ferry status|pause|resume|stop` end to end: real processes of bin/ferry.js,
// real modules (the built guests and C fixtures compiled with clang here), real unix sockets.
// Refusals exit 4 with a clear message, traps exit 5 naming the guest function, a guest's own
// exit code passes through, bad command lines exit 2.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { FERRY_BIN, GUESTS, compileFixture, readText, seqNumbers, tmpDir, useSharedCache, waitFor } from './fixtures/guest/helpers.js';

useSharedCache();

interface CliResult { code: number; stdout: string; stderr: string }

function ferry(args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [FERRY_BIN, ...args], { env: process.env, timeout: 120_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolve({ code, stdout, stderr });
    });
  });
}

test('a file that is not wasm is refused: exit 4, "not a valid WebAssembly module"', async () => {
  const p = path.join(tmpDir('cli-notwasm'), 'notwasm.wasm');
  fs.writeFileSync(p, '#!/bin/sh\necho hello\n');
  const r = await ferry(['run', p]);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /module refused: not a valid WebAssembly module/);
});

test('a module importing env.foo is refused: exit 4, naming the import', async () => {
  const r = await ferry(['run', compileFixture('import_env', ['-Wl,--allow-undefined'])]);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /module refused: module imports env\.foo, which Ferry does not provide/);
  assert.equal(r.stdout, '', 'the guest never ran');
});

test('a module whose initial memory exceeds --max-memory is refused: exit 4', async () => {
  const wasm = compileFixture('bigmem');
  const r = await ferry(['run', wasm, '--max-memory', '16M']);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /module refused: module needs [\d.]+ MiB of initial memory, more than the maximum of 16 MiB \(--max-memory\)/);
  // The same module runs with enough memory (the refusal is about the cap, not the module).
  const ok = await ferry(['run', wasm, '--max-memory', '128M']);
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout, '1\n');
});

test('a module already run through Asyncify is refused: give Ferry the original', async () => {
  const original = fs.readFileSync(compileFixture('exit7'));
  const binaryen = ((await import('binaryen')) as unknown as { default: BinaryenLike }).default;
  const mod = binaryen.readBinary(original);
  mod.runPasses(['asyncify']);
  const transformed: Uint8Array = mod.emitBinary();
  mod.dispose();
  const p = path.join(tmpDir('cli-asyncify'), 'asyncified.wasm');
  fs.writeFileSync(p, transformed);
  const r = await ferry(['run', p]);
  assert.equal(r.code, 4, r.stderr);
  assert.match(r.stderr, /module refused: module is already transformed by Asyncify .*give Ferry the original module/);
});

interface BinaryenLike {
  readBinary(b: Uint8Array): { runPasses(p: string[]): void; emitBinary(): Uint8Array; dispose(): void };
}

test("a guest's own exit code passes through: main returns 7 → ferry exits 7", async () => {
  const r = await ferry(['run', compileFixture('exit7')]);
  assert.equal(r.code, 7, r.stderr);
  assert.equal(r.stdout, 'bye\n');
});

test('a trap exits 5 and names the guest function', async () => {
  const r = await ferry(['run', compileFixture('trap')]);
  assert.equal(r.code, 5, r.stderr);
  assert.equal(r.stdout, 'about to trap\n');
  assert.match(r.stderr, /guest trapped: unreachable.*\(in guest function ferry_test_crash_here\)/);
});

test('bad command lines exit 2 with a message', async () => {
  const unknown = await ferry(['run', path.join(GUESTS, 'compute.wasm'), '--bogus-flag']);
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /unknown option '--bogus-flag'/);
  const size = await ferry(['run', path.join(GUESTS, 'compute.wasm'), '--max-memory', 'lots']);
  assert.equal(size.code, 2);
  assert.match(size.stderr, /--max-memory lots: expected a number/);
  const missing = await ferry(['run', '/nonexistent/x.wasm']);
  assert.equal(missing.code, 2);
  assert.match(missing.stderr, /cannot read module \/nonexistent\/x\.wasm: ENOENT/);
  const noModule = await ferry(['run']);
  assert.equal(noModule.code, 2);
  assert.match(noModule.stderr, /missing MODULE/);
  const env = await ferry(['run', path.join(GUESTS, 'compute.wasm'), '--env', 'NOEQUALS']);
  assert.equal(env.code, 2);
  assert.match(env.stderr, /--env NOEQUALS: expected K=V/);
});

test('--help mentions the exit codes', async () => {
  const r = await ferry(['--help']);
  assert.equal(r.code, 0);
  assert.match(r.stdout, /Exit codes:/);
  assert.match(r.stdout, /4 +module refused/);
  assert.match(r.stdout, /5 +the guest trapped/);
  assert.match(r.stdout, /130 +the guest was stopped/);
});

test('ferry run --api-sock with ferry status/pause/resume/stop --json, end to end', async () => {
  const dir = tmpDir('cli-api');
  const sock = path.join(dir, 'api.sock');
  const out = path.join(dir, 'stdout');
  const child = spawn(
    process.execPath,
    [FERRY_BIN, 'run', path.join(GUESTS, 'memtouch.wasm'), '--api-sock', sock, '--stdout', out, '--', '--mib', '4', '--report-ms', '5'],
    { stdio: ['ignore', 'ignore', 'pipe'], env: process.env },
  );
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  try {
    await waitFor('the control socket and the first SEQ line', () => fs.existsSync(sock) && seqNumbers(readText(out)).length > 0, 90_000);
    assert.equal(fs.statSync(sock).mode & 0o777, 0o600);

    const status = await ferry(['status', '--api-sock', sock, '--json']);
    assert.equal(status.code, 0, status.stderr);
    const info = JSON.parse(status.stdout) as { state: string; module: { path: string; hash: string }; memoryBytes: number; pid: number };
    assert.equal(info.state, 'running');
    assert.equal(info.pid, child.pid);
    assert.match(info.module.hash, /^[0-9a-f]{64}$/);
    assert.ok(info.memoryBytes >= 4 * 1024 * 1024);

    const pause = await ferry(['pause', '--api-sock', sock, '--json']);
    assert.equal(pause.code, 0, pause.stderr);
    assert.deepEqual(JSON.parse(pause.stdout), { ok: true });
    assert.equal(JSON.parse((await ferry(['status', '--api-sock', sock, '--json'])).stdout).state, 'paused');
    // Paused means paused: no SEQ line is printed meanwhile.
    const frozen = readText(out);
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(readText(out), frozen);

    const resume = await ferry(['resume', '--api-sock', sock, '--json']);
    assert.equal(resume.code, 0, resume.stderr);
    assert.equal(JSON.parse((await ferry(['status', '--api-sock', sock, '--json'])).stdout).state, 'running');
    const n = seqNumbers(readText(out)).length;
    await waitFor('SEQ lines after resume', () => seqNumbers(readText(out)).length > n);

    const stop = await ferry(['stop', '--api-sock', sock, '--json']);
    assert.equal(stop.code, 0, stop.stderr);
    assert.equal(await exited, 130, stderr);
    assert.ok(!fs.existsSync(sock), 'the socket is removed when ferry run ends');

    // Nobody listens any more: a clear error, exit 1.
    const gone = await ferry(['status', '--api-sock', sock]);
    assert.equal(gone.code, 1);
    assert.match(gone.stderr, /no Ferry guest listening on/);
  } finally {
    child.kill('SIGKILL');
  }
});
