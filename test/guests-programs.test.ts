// The guest programs in guests/build/, run under Node's own WASI (node:wasi). These tests check
// each program's flags and output contract, which tests and benchmarks of the other layers rely on.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync, rmSync, openSync, closeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WASI } from 'node:wasi';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const wasmPath = (name: string): string => join(repoRoot, 'guests', 'build', `${name}.wasm`);

// Runs a module in a child Node process so the test can act while the guest runs (wasi.start
// blocks its thread). Preopens come in as JSON in the environment. returnOnExit is off: Node 20's
// unwinding proc_exit path was seen to crash V8 after runs with 32+ MiB of guest memory, while
// exiting the process with the guest's code is plain.
const RUNNER = `
import { WASI } from 'node:wasi';
import { readFileSync } from 'node:fs';
const [file, ...args] = process.argv.slice(1);
const preopens = JSON.parse(process.env.GUEST_PREOPENS ?? '{}');
const wasi = new WASI({ version: 'preview1', args: ['guest', ...args], env: {}, preopens, returnOnExit: false });
const instance = await WebAssembly.instantiate(new WebAssembly.Module(readFileSync(file)), wasi.getImportObject());
process.exitCode = wasi.start(instance);
`;

interface GuestRun {
  lines: string[];                 // stdout lines so far
  stderr: () => string;
  exit: Promise<number | null>;
  waitFor: (pred: (line: string) => boolean) => Promise<string>;
}

function runGuest(name: string, args: string[], preopens: Record<string, string> = {}, timeoutMs = 60_000): GuestRun {
  const child = spawn(process.execPath, ['--no-warnings', '--input-type=module', '-e', RUNNER, wasmPath(name), ...args], {
    env: { ...process.env, GUEST_PREOPENS: JSON.stringify(preopens) },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const waiters: Array<{ pred: (l: string) => boolean; resolve: (l: string) => void }> = [];
  let partial = '';
  let err = '';
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    partial += chunk;
    let nl: number;
    while ((nl = partial.indexOf('\n')) >= 0) {
      const line = partial.slice(0, nl);
      partial = partial.slice(nl + 1);
      lines.push(line);
      for (let i = waiters.length - 1; i >= 0; i--) {
        if (waiters[i]!.pred(line)) { waiters[i]!.resolve(line); waiters.splice(i, 1); }
      }
    }
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => { err += chunk; });
  // A guard against a hung guest, not a timing assertion: the test fails on the exit code.
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const exit = new Promise<number | null>((res) => child.on('close', (code) => { clearTimeout(timer); res(code); }));
  const waitFor = (pred: (l: string) => boolean): Promise<string> => {
    const seen = lines.find(pred);
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise<string>((res, rej) => {
      waiters.push({ pred, resolve: res });
      void exit.then((code) => rej(new Error(`guest exited (${code}) before the expected line; stdout:\n${lines.join('\n')}\nstderr:\n${err}`)));
    });
  };
  return { lines, stderr: () => err, exit, waitFor };
}

function seqNumbers(lines: string[]): number[] {
  return lines.filter((l) => l.startsWith('SEQ ')).map((l) => Number(/^SEQ (\d+)/.exec(l)![1]));
}

function assertConsecutiveFromOne(seqs: number[]): void {
  assert.ok(seqs.length > 0, 'no SEQ lines');
  seqs.forEach((n, i) => assert.equal(n, i + 1, `SEQ lines not consecutive: ${seqs.join(',')}`));
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'ferry-guests-'));
}

test('memtouch fills 8 MiB, prints consecutive SEQ lines and verifies', async () => {
  const g = runGuest('memtouch', ['--mib', '8', '--rate', '20000', '--seconds', '0.6', '--report-ms', '50']);
  const code = await g.exit;
  assert.equal(code, 0, g.stderr());
  assert.match(g.lines[0] ?? '', /^START pages=2048 data_offset=\d+ reserve_offset=0 reserve_bytes=0$/);
  const seqLines = g.lines.filter((l) => l.startsWith('SEQ '));
  assertConsecutiveFromOne(seqNumbers(g.lines));
  const written = seqLines.map((l) => Number(/pages_written=(\d+)/.exec(l)![1]));
  assert.ok(written[0]! >= 2048, 'the fill counts every page once');
  for (let i = 1; i < written.length; i++) assert.ok(written[i]! >= written[i - 1]!, 'pages_written never decreases');
  assert.ok(written.at(-1)! > 2048, 'pages were rewritten after the fill');
  assert.equal(g.lines.at(-1), 'VERIFY OK 2048');
});

test('memtouch with the default 64 MiB runs and verifies', async () => {
  const g = runGuest('memtouch', ['--seconds', '0.3', '--report-ms', '100']);
  assert.equal(await g.exit, 0, g.stderr());
  assert.match(g.lines[0] ?? '', /^START pages=16384 /);
  assert.equal(g.lines.at(-1), 'VERIFY OK 16384');
});

test('memtouch --rounds stops by itself after the fill plus K passes', async () => {
  // No report interval passes, so without --rounds the guest would run until the guard kills it.
  const g = runGuest('memtouch', ['--mib', '1', '--rounds', '3', '--report-ms', '600000']);
  assert.equal(await g.exit, 0, g.stderr());
  assert.deepEqual(g.lines.slice(1), ['VERIFY OK 256']);
});

test('memtouch --verify-file under a preopen triggers verification', async () => {
  const dir = tempDir();
  try {
    const g = runGuest('memtouch', ['--mib', '8', '--idle', '--report-ms', '20', '--verify-file', '/work/verify'], { '/work': dir });
    await g.waitFor((l) => l.startsWith('SEQ 3 '));
    assert.ok(!g.lines.some((l) => l.startsWith('VERIFY')), 'verified before the file appeared');
    writeFileSync(join(dir, 'verify'), '');
    assert.equal(await g.exit, 0, g.stderr());
    assert.equal(g.lines.at(-1), 'VERIFY OK 2048');
    const seqLines = g.lines.filter((l) => l.startsWith('SEQ '));
    assertConsecutiveFromOne(seqNumbers(g.lines));
    for (const l of seqLines) assert.match(l, /pages_written=2048 gen=1$/, 'idle guest writes nothing after the fill');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('memtouch rejects bad arguments with exit 2 and a usage line', async () => {
  for (const args of [['--mib', 'x'], ['--bogus'], ['--mib'], ['--report-ms', '0'], ['--seconds', '-1'], ['--mib', '0']]) {
    const g = runGuest('memtouch', args);
    assert.equal(await g.exit, 2, `args ${args.join(' ')}`);
    assert.match(g.stderr(), /usage: memtouch/);
  }
});

// @types/node does not declare the WebAssembly global and tsconfig has no DOM lib: the little
// this file needs, typed here.
interface WasmMemory { buffer: ArrayBuffer }
interface WasmInstance { exports: Record<string, unknown> }
interface WasmGlobal {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: Record<string, Record<string, unknown>>) => WasmInstance;
}
const Wasm = (globalThis as unknown as { WebAssembly: WasmGlobal }).WebAssembly;

// In-process run: the test wraps the guest's stat import to reach into its memory between
// reports, which a child process would hide.
// The guest sees an empty preopened directory at /work. Every in-process run passes --seconds so
// that a broken wrapper ends in a failed assertion, not a hung test.
function runInProcess(name: string, args: string[], wrap: (imports: Record<string, unknown>, memory: () => WasmMemory) => void):
  { code: number; stdout: string; memory: WasmMemory } {
  const dir = tempDir();
  const outPath = join(dir, 'stdout');
  const outFd = openSync(outPath, 'w');
  const work = join(dir, 'work');
  mkdirSync(work);
  try {
    const wasi = new WASI({ version: 'preview1', args: [name, ...args], env: {}, preopens: { '/work': work }, stdout: outFd });
    const importObject = wasi.getImportObject() as { wasi_snapshot_preview1: Record<string, unknown> };
    const wasiImports = { ...importObject.wasi_snapshot_preview1 };
    // Our own proc_exit (not Node's returnOnExit path, see RUNNER): unwind with the exit code.
    class GuestExit { constructor(readonly code: number) {} }
    wasiImports.proc_exit = (code: number): never => { throw new GuestExit(code); };
    let instance: WasmInstance | null = null;
    const memory = (): WasmMemory => instance!.exports.memory as WasmMemory;
    wrap(wasiImports, memory);
    instance = new Wasm.Instance(new Wasm.Module(readFileSync(wasmPath(name))), { wasi_snapshot_preview1: wasiImports });
    let code: number;
    try {
      code = wasi.start(instance);
    } catch (err) {
      if (!(err instanceof GuestExit)) throw err;
      code = err.code;
    }
    return { code, stdout: readFileSync(outPath, 'utf8'), memory: memory() };
  } finally {
    closeSync(outFd);
    rmSync(dir, { recursive: true, force: true });
  }
}

test('memtouch verification catches a corrupted page', () => {
  let dataOffset = -1;
  const run = runInProcess('memtouch', ['--mib', '2', '--idle', '--report-ms', '1', '--seconds', '20', '--verify-file', '/work/x'], (imports, memory) => {
    const fdWrite = imports.fd_write as (...a: number[]) => number;
    // Read START's data_offset from the guest's own output as it is written.
    imports.fd_write = (fd: number, iovs: number, iovsLen: number, nwritten: number): number => {
      const view = new DataView(memory().buffer);
      for (let i = 0; i < iovsLen; i++) {
        const ptr = view.getUint32(iovs + i * 8, true);
        const len = view.getUint32(iovs + i * 8 + 4, true);
        const text = Buffer.from(memory().buffer, ptr, len).toString();
        const m = /data_offset=(\d+)/.exec(text);
        if (m) dataOffset = Number(m[1]);
      }
      return fdWrite(fd, iovs, iovsLen, nwritten);
    };
    let calls = 0;
    // stat("/work/x"): first call flips one byte of page 7, second call reports that the file exists.
    imports.path_filestat_get = (): number => {
      calls++;
      if (calls === 1) {
        assert.ok(dataOffset > 0);
        new Uint8Array(memory().buffer)[dataOffset + 7 * 4096 + 123]! ^= 0x40;
        return 44; // ENOENT
      }
      return 0;
    };
  });
  assert.equal(run.code, 1);
  assert.match(run.stdout, /\nVERIFY FAIL 1\n$/);
});

test('memtouch --reserve-mib grows memory past the touched pages and leaves the reserve zero', () => {
  const run = runInProcess('memtouch', ['--mib', '2', '--reserve-mib', '16', '--seconds', '0.05', '--report-ms', '10'], () => {});
  assert.equal(run.code, 0);
  const m = /START pages=512 data_offset=(\d+) reserve_offset=(\d+) reserve_bytes=(\d+)/.exec(run.stdout);
  assert.ok(m, run.stdout);
  const [dataOffset, reserveOffset, reserveBytes] = [Number(m[1]), Number(m[2]), Number(m[3])];
  assert.equal(reserveBytes, 16 * 1024 * 1024);
  assert.ok(reserveOffset >= dataOffset + 2 * 1024 * 1024, 'reserve lies after the working set');
  assert.ok(run.memory.buffer.byteLength >= reserveOffset + reserveBytes, 'memory really grew');
  const reserve = new Uint8Array(run.memory.buffer, reserveOffset, reserveBytes);
  assert.ok(reserve.every((b) => b === 0), 'nothing was written into the reserve');
  assert.match(run.stdout, /VERIFY OK 512\n$/);
});

test('compute prints a deterministic RESULT and rejects bad arguments', async () => {
  const a = runGuest('compute', ['--iterations', '2000']);
  const b = runGuest('compute', ['--iterations', '2000']);
  const c = runGuest('compute', ['--iterations', '2001']);
  assert.equal(await a.exit, 0);
  assert.equal(await b.exit, 0);
  assert.equal(await c.exit, 0);
  assert.match(a.lines[0] ?? '', /^RESULT [0-9a-f]{16}$/);
  assert.equal(a.lines[0], b.lines[0]);
  assert.notEqual(a.lines[0], c.lines[0]);
  const bad = runGuest('compute', ['--iterations', 'many']);
  assert.equal(await bad.exit, 2);
  assert.match(bad.stderr(), /usage: compute/);
});

test('fileio line mode appends numbered lines and echoes in.txt line by line', async () => {
  const dir = tempDir();
  try {
    writeFileSync(join(dir, 'in.txt'), 'alpha\nbeta gamma\n');
    const g = runGuest('fileio', ['--lines', '4', '--interval-ms', '1'], { '/data': dir });
    assert.equal(await g.exit, 0, g.stderr());
    assert.deepEqual(g.lines, ['IN alpha', 'SEQ 1', 'IN beta gamma', 'SEQ 2', 'SEQ 3', 'SEQ 4', 'DONE 4']);
    assert.equal(readFileSync(join(dir, 'out.log'), 'utf8'), 'LINE 1\nLINE 2\nLINE 3\nLINE 4\n');
    // A second run appends rather than truncates; no in.txt is fine.
    rmSync(join(dir, 'in.txt'));
    const g2 = runGuest('fileio', ['--dir', '/data', '--lines', '2', '--interval-ms', '0'], { '/data': dir });
    assert.equal(await g2.exit, 0, g2.stderr());
    assert.deepEqual(g2.lines, ['SEQ 1', 'SEQ 2', 'DONE 2']);
    assert.equal(readFileSync(join(dir, 'out.log'), 'utf8'), 'LINE 1\nLINE 2\nLINE 3\nLINE 4\nLINE 1\nLINE 2\n');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('fileio --read-into creates blob.bin, reads it into the buffer each round and catches a bad file', async () => {
  const dir = tempDir();
  try {
    const g = runGuest('fileio', ['--read-into', '2', '--rounds', '3', '--interval-ms', '0'], { '/data': dir });
    assert.equal(await g.exit, 0, g.stderr());
    assert.deepEqual(g.lines, ['BLOB created 2097152', 'READ OK 1', 'READ OK 2', 'READ OK 3']);
    const blob = readFileSync(join(dir, 'blob.bin'));
    assert.equal(blob.length, 2 * 1024 * 1024);
    for (const i of [0, 1, 255, 256, 1_000_003, blob.length - 1]) assert.equal(blob[i], (i * 31 + 7) & 255, `byte ${i}`);

    blob[1_500_000] = blob[1_500_000]! ^ 0xff;
    writeFileSync(join(dir, 'blob.bin'), blob);
    const bad = runGuest('fileio', ['--read-into', '2', '--rounds', '2', '--interval-ms', '0'], { '/data': dir });
    assert.equal(await bad.exit, 1);
    assert.deepEqual(bad.lines, ['BLOB exists 2097152', 'READ FAIL 1 1']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('fileio reports a missing directory as an I/O error and bad flags as usage errors', async () => {
  const g = runGuest('fileio', ['--dir', '/nowhere', '--lines', '1']);
  assert.equal(await g.exit, 3);
  assert.match(g.stderr(), /cannot open \/nowhere\/out\.log/);
  const bad = runGuest('fileio', ['--lines', '-3']);
  assert.equal(await bad.exit, 2);
  assert.match(bad.stderr(), /usage: fileio/);
});
