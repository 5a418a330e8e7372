// Real WASI programs (C, compiled with clang for wasm32-wasi inside the test) run against src/wasi.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Wasi, WasiExit, type Preopen, type WasiHooks } from '../src/wasi/wasi.js';

const FIXTURES = fileURLToPath(new URL('../../test/fixtures/wasi/', import.meta.url));
const BUILD = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-wasi-build-'));
const modules = new Map<string, WebAssembly.Module>();

function compile(name: string, reactor = false): WebAssembly.Module {
  const cached = modules.get(name);
  if (cached) return cached;
  const out = path.join(BUILD, `${name}.wasm`);
  const flags = ['--target=wasm32-wasi', '-O2', ...(reactor ? ['-mexec-model=reactor'] : []), path.join(FIXTURES, `${name}.c`), '-o', out];
  execFileSync('clang', flags, { stdio: 'pipe' });
  const mod = new WebAssembly.Module(fs.readFileSync(out));
  modules.set(name, mod);
  return mod;
}

const noPause: WasiHooks = { pauseRequested: () => false, unwind: () => { throw new Error('unexpected unwind'); } };

function tmpDir(tag: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `ferry-wasi-${tag}-`));
}

interface RunResult { stdout: string; code: number }

/** Runs a command module's _start with stdout bound to a host file; returns its output and exit code. */
function runCommand(name: string, opts: { args?: string[]; env?: Record<string, string>; preopens?: Preopen[] } = {}): RunResult {
  const dir = tmpDir('out');
  const outPath = path.join(dir, 'stdout');
  const outFd = fs.openSync(outPath, 'w');
  const wasi = new Wasi({ args: opts.args ?? [name], env: opts.env ?? {}, preopens: opts.preopens ?? [], stdio: { stdin: 0, stdout: outFd, stderr: 2 } }, noPause);
  let code = 0;
  try {
    const instance = new WebAssembly.Instance(compile(name), { wasi_snapshot_preview1: wasi.imports });
    wasi.setMemory(instance.exports.memory as WebAssembly.Memory);
    try {
      (instance.exports._start as () => void)();
    } catch (err) {
      if (!(err instanceof WasiExit)) throw err;
      code = err.code;
    }
  } finally {
    wasi.close();
    fs.closeSync(outFd);
  }
  return { stdout: fs.readFileSync(outPath, 'utf8'), code };
}

test('hello world reaches the bound stdout file', () => {
  const r = runCommand('hello');
  assert.equal(r.stdout, 'hello, ferry\n');
  assert.equal(r.code, 0);
});

test('args and env are visible to the guest', () => {
  const r = runCommand('args_env', { args: ['prog', 'one', 'two words', 'ünï'], env: { FERRY_A: 'alpha=1', OTHER: 'x' } });
  assert.equal(r.stdout, 'argc=4\nargv[0]=prog\nargv[1]=one\nargv[2]=two words\nargv[3]=ünï\nFERRY_A=alpha=1\nenvc=2\n');
});

test('file create/write/seek/read/readdir/rename/unlink under a preopen', () => {
  const data = tmpDir('data');
  const r = runCommand('files', { preopens: [{ guestPath: '/data', hostPath: data }] });
  assert.equal(r.code, 0);
  assert.equal(r.stdout, [
    'mkdir=0', 'open=1', 'write=8', 'seek=2', 'read=3 cde', 'tell=5', 'end=8', 'size=8', 'excl1=1', 'excl2=-1 errno=EEXIST',
    'entry=a.txt', 'entry=b.txt', 'rename=0', 'unlink=0', 'missing=-1 errno=ENOENT', 'append=2', '',
  ].join('\n'));
  assert.deepEqual(fs.readdirSync(path.join(data, 'sub')), ['c.txt']);
  assert.equal(fs.readFileSync(path.join(data, 'sub', 'c.txt'), 'utf8'), 'abcdefghXY');
});

test('escapes from the preopen are refused', () => {
  const base = tmpDir('escape');
  const data = path.join(base, 'data');
  const outside = path.join(base, 'outside');
  fs.mkdirSync(path.join(data, 'sub'), { recursive: true });
  fs.mkdirSync(outside);
  fs.writeFileSync(path.join(base, 'secret.txt'), 'secret');
  fs.writeFileSync(path.join(outside, 'secret.txt'), 'secret');
  fs.writeFileSync(path.join(data, 'inside.txt'), 'ok');
  fs.symlinkSync(outside, path.join(data, 'out'));                          // directory link leading out
  fs.symlinkSync(path.join(outside, 'secret.txt'), path.join(data, 'outlink')); // file link leading out
  const r = runCommand('escape', { preopens: [{ guestPath: '/data', hostPath: data }] });
  const lines = Object.fromEntries(r.stdout.trim().split('\n').map((l) => l.split(' -> ') as [string, string]));
  assert.equal(lines['/data/inside.txt'], 'OPENED');
  for (const p of ['/data/../secret.txt', '/data/sub/../../secret.txt', '/data/out/secret.txt', '/data/outlink', '/etc/passwd']) {
    assert.notEqual(lines[p], 'OPENED', `${p} must not open`);
    assert.ok(lines[p] !== undefined, `${p} was tried`);
  }
  assert.equal(lines['/data/out/secret.txt'], 'ENOTCAPABLE');
  assert.equal(lines['/data/outlink'], 'ENOTCAPABLE');
});

test('poll_oneoff sleeps (usleep, nanosleep) last at least as asked', () => {
  const r = runCommand('sleep');
  const got = Object.fromEntries(r.stdout.trim().split('\n').map((l) => l.split('=') as [string, string]));
  assert.ok(Number(got.usleep_ms) >= 30, `usleep(30 ms) took ${got.usleep_ms} ms`);
  assert.ok(Number(got.nanosleep_ms) >= 20, `nanosleep(20 ms) took ${got.nanosleep_ms} ms`);
});

test('proc_exit surfaces as WasiExit with the code', () => {
  const r = runCommand('exit');
  assert.equal(r.code, 7);
  assert.equal(r.stdout, 'bye\n');
});

test('a file program captured mid-way continues after restore on a "new host" (other dir, fresh instance)', () => {
  const mod = compile('log', true);
  const hostA = tmpDir('hostA');
  const outA = fs.openSync(path.join(hostA, 'stdout'), 'w');
  const wasiA = new Wasi({ args: ['log'], env: {}, preopens: [{ guestPath: '/data', hostPath: path.join(hostA) }], stdio: { stdin: 0, stdout: outA, stderr: 2 } }, noPause);
  const a = new WebAssembly.Instance(mod, { wasi_snapshot_preview1: wasiA.imports });
  const memA = a.exports.memory as WebAssembly.Memory;
  wasiA.setMemory(memA);
  (a.exports._initialize as () => void)();
  const ex = a.exports as Record<string, (...args: number[]) => number | bigint>;
  const guestFd = ex.open_log!() as number;
  assert.ok(guestFd >= 3);
  for (let i = 0; i < 3; i++) assert.equal(ex.write_line!(i), 7);
  assert.equal(ex.offset!(), 21n);

  // Capture; the state must survive JSON. Move the files to another directory (the "new host").
  const state = JSON.parse(JSON.stringify(wasiA.capture()));
  assert.deepEqual(wasiA.movabilityProblems(), []);
  const memBytes = new Uint8Array(memA.buffer).slice();
  wasiA.close();
  fs.closeSync(outA);
  const hostB = tmpDir('hostB');
  fs.copyFileSync(path.join(hostA, 'log.txt'), path.join(hostB, 'log.txt'));
  fs.writeFileSync(path.join(hostA, 'log.txt'), 'host A must not be written again');

  const outB = fs.openSync(path.join(hostB, 'stdout'), 'w');
  const wasiB = Wasi.restore(state, { preopens: [{ guestPath: '/data', hostPath: hostB }], stdio: { stdin: 0, stdout: outB, stderr: 2 } }, noPause);
  const b = new WebAssembly.Instance(mod, { wasi_snapshot_preview1: wasiB.imports });
  const memB = b.exports.memory as WebAssembly.Memory;
  const grow = memBytes.length / 65536 - memB.buffer.byteLength / 65536;
  if (grow > 0) memB.grow(grow);
  new Uint8Array(memB.buffer).set(memBytes); // the guest's RAM, as a migration would place it
  wasiB.setMemory(memB);
  const exB = b.exports as Record<string, (...args: number[]) => number | bigint>;
  assert.equal(exB.offset!(), 21n, 'offset continues');
  for (let i = 3; i < 5; i++) assert.equal(exB.write_line!(i), 7);
  assert.equal(exB.offset!(), 35n);
  assert.equal(exB.read_back!(), 35);
  wasiB.close();
  fs.closeSync(outB);
  const expected = 'line 0\nline 1\nline 2\nline 3\nline 4\n';
  assert.equal(fs.readFileSync(path.join(hostB, 'log.txt'), 'utf8'), expected, 'no O_TRUNC on reopen; offsets continue');
  assert.equal(fs.readFileSync(path.join(hostB, 'stdout'), 'utf8'), expected, 'stdout rebound to the new host');
  assert.equal(fs.readFileSync(path.join(hostA, 'log.txt'), 'utf8'), 'host A must not be written again');
});
