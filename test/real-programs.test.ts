// The third-party programs of guests/third-party/ (SQLite shell, bzip2, cmark, GNU bc) on small
// inputs, each: its output under Ferry equals node:wasi's byte for byte after one pause/resume in
// the middle of its run (in-process Guest), and after one postcopy migration in the middle of
// its run between two `ferry` processes on loopback (source's and destination's stdout files
// concatenated). Assertions are on bytes and states, never on timing; the delays only aim the
// pause and the migration at the middle of the run, and the test checks they landed there.
import { strict as assert } from 'node:assert';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, describe, test } from 'node:test';
import { realPrograms, writeInputs, type RealProgram } from '../bench/fixtures/real-programs.js';
import { Guest } from '../src/guest/guest.js';
import { ModuleCache } from '../src/guest/module-cache.js';
import { ApiClient } from '../src/api/client.js';
import { FERRY_BIN, killAll, makeSandbox, runMigrate, spawnFerry, startDestination, useFileCache, type FerryProc } from './fixtures/migration/ferry-procs.js';
import { pausedUnlessEnded } from './fixtures/guest/helpers.js';

const cacheDir = useFileCache('real-programs');
const WASI_RUN = fileURLToPath(new URL('../bench/fixtures/wasi-run.js', import.meta.url));
const sha = (b: Uint8Array): string => createHash('sha256').update(b).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// Small: each program runs for a fraction of a second under node:wasi. The migration runs a
// larger size: the source is paused as soon as its API answers, but the migration lets it run
// again through precopy, so enough of its run must be left for the switchover to land in it.
// cmark renders the whole document and writes it in one fd_write, which node:wasi cannot do
// past about 6 MiB (guests/third-party/README.md), and at sizes it can, its run under Ferry can
// end before the switchover: its migration runs four times that size, and its reference is an
// unmigrated `ferry run` of the same input (the pause test above ties Ferry to node:wasi).
const SCALE = 0.06;
const MIGRATION_SCALE: Record<string, number> = { sqlite3: 0.4, bzip2: 0.4, cmark: 4, bc: 0.4 };
const FERRY_REFERENCE = new Set(['cmark']);
const root = mkdtempSync(join(tmpdir(), 'ferry-real-'));
after(() => rmSync(root, { recursive: true, force: true }));

interface Reference {
  bytes: Buffer;
  ms: number; // node:wasi, whole process
}

function reference(p: RealProgram, work: string, under: 'node:wasi' | 'ferry run' = 'node:wasi'): Reference {
  const out = join(work, '..', 'reference.out');
  const t0 = performance.now();
  const argv = under === 'node:wasi'
    ? ['--no-warnings', WASI_RUN, p.wasm, work, out, ...p.args]
    : [FERRY_BIN, 'run', p.wasm, '--dir', `${work}:/work`, '--stdin', '/dev/null', '--stdout', out, '--', ...p.args.slice(1)];
  const r = spawnSync(process.execPath, argv, { stdio: ['ignore', 'ignore', 'pipe'], timeout: 300_000 });
  const ms = performance.now() - t0;
  assert.equal(r.status, 0, `${p.name} under ${under}: ${r.stderr}`);
  const bytes = readFileSync(out);
  assert.ok(bytes.length > 0, `${p.name} printed nothing`);
  return { bytes, ms };
}

for (const p of realPrograms(SCALE)) {
  describe(`${p.name} (${p.kind})`, () => {
    const work = join(root, p.name, 'work');
    writeInputs(p, work);

    test('runs under Ferry, paused and resumed mid-run: output byte-identical to node:wasi', async () => {
      const ref = reference(p, work);
      await new ModuleCache(cacheDir).load(readFileSync(p.wasm)); // instrument outside the run
      const outPath = join(root, p.name, 'paused.out');
      // Paused as soon as it runs, not after a delay: a small input may end within tens of ms under
      // Ferry (cmark here: ~50 ms). On a starved machine the guest can still end before the request
      // reaches it (the pause then rejects with 'guest-ended'): that run proves nothing about a pause,
      // so the program runs again, a few times at most.
      const ATTEMPTS = 5;
      for (let attempt = 1; ; attempt++) {
        const fd = openSync(outPath, 'w');
        try {
          const guest = await Guest.start({ module: readFileSync(p.wasm), args: p.args, stdio: { stdout: fd }, preopens: [{ guestPath: '/work', hostPath: work }], cache: new ModuleCache(cacheDir) });
          if (!(await pausedUnlessEnded(guest))) {
            assert.ok(attempt < ATTEMPTS, `the guest ended before the pause reached it in ${ATTEMPTS} runs: the run is too short to test`);
            continue;
          }
          const before = statSync(outPath).size;
          await sleep(100);
          assert.equal(statSync(outPath).size, before, 'a paused guest wrote output');
          guest.resume();
          const exit = await guest.exited;
          assert.deepEqual(exit, { reason: 'exit', code: 0 });
          break;
        } finally {
          closeSync(fd);
        }
      }
      assert.equal(sha(readFileSync(outPath)), sha(ref.bytes), 'output after a pause differs from node:wasi');
    });

    test('migrates mid-run (postcopy, two ferry processes): source + destination output byte-identical', { timeout: 480_000 }, async () => {
      const big = realPrograms(MIGRATION_SCALE[p.name] ?? 0.5).find((q) => q.name === p.name)!;
      const refWork = join(root, p.name, 'migration-reference', 'work');
      writeInputs(big, refWork);
      const ref = reference(big, refWork, FERRY_REFERENCE.has(p.name) ? 'ferry run' : 'node:wasi');
      const sb = makeSandbox();
      const procs: FerryProc[] = [];
      try {
        writeInputs(big, sb.srcWork);
        writeInputs(big, sb.dstWork); // the same inputs on both hosts, as shared storage would give
        const srcOut = join(sb.dir, 'src.out');
        const dstOut = join(sb.dir, 'dst.out');
        const { proc: dst, port } = await startDestination(sb, ['--tls-psk', sb.keyFile, '--stdin', '/dev/null', '--stdout', dstOut]);
        procs.push(dst);
        const src = spawnFerry('source', ['run', big.wasm, '--api-sock', sb.sock, '--dir', `${sb.srcWork}:/work`, '--stdin', '/dev/null', '--stdout', srcOut, '--', ...big.args.slice(1)]);
        procs.push(src);
        // Pause it as soon as its API answers (it is then somewhere in its run) and migrate; the
        // source runs it on through precopy and pauses it again at the switchover.
        const api = new ApiClient(sb.sock);
        for (let i = 0; ; i++) {
          const paused = await api.pause().then(() => true, () => false);
          if (paused) break;
          if (!src.running) throw new Error(`the source ended before it could be paused: the run is too short to test\n${src.err}`);
          if (i > 3000) throw new Error(`the source never served its API:\n${src.err}`);
          await sleep(10);
        }
        const info = await api.info();
        assert.equal(info.state, 'paused');
        const { code, json, stderr } = await runMigrate(sb, port, ['--mode', 'postcopy', '--verify']);
        assert.equal(code, 0, `migrate failed: ${JSON.stringify(json)} ${stderr}\n${src.err}`);
        assert.equal(json['verified'], true);
        assert.equal(await src.exitWithin(30_000), 0, 'the source exits 0 after the move');
        assert.equal(await dst.exitWithin(120_000), 0, `the destination guest ends with 0: ${dst.err.slice(-2000)}`);
        const joined = Buffer.concat([readFileSync(srcOut), readFileSync(dstOut)]);
        assert.ok(statSync(dstOut).size > 0 || ref.bytes.length === statSync(srcOut).size, 'the destination ran the rest');
        assert.equal(sha(joined), sha(ref.bytes), `output across the migration differs (source ${statSync(srcOut).size} + destination ${statSync(dstOut).size} bytes, reference ${ref.bytes.length})`);
      } finally {
        killAll(...procs);
        sb.cleanup();
      }
    });
  });
}
