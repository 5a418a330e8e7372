// End-to-end postcopy between real `ferry` processes on both fault paths: the native one (the
// default) and the JavaScript one (FERRY_NATIVE_FAULTS=0, kept so that both stay tested). A guest
// that rewrites its memory at full speed moves with postcopy, its faults served by the native
// threads (native/dataplane/) over the data plane connection or by the urgent channel's threads,
// and then checks every page of its memory itself. Assertions are on content only.
import { strict as assert } from 'node:assert';
import { after, before, describe, test } from 'node:test';
import { checkSequence } from '../src/cli/commands/demo.js';
import { killAll, makeSandbox, runMigrate, startDestination, startSource, useFileCache, verifyGuest, type FerryProc, type Sandbox } from './fixtures/migration/ferry-procs.js';

const MIB = 256;
// Every ferry process this file starts inherits these (FERRY_NATIVE_FAULTS is set per test, before
// its processes start).
process.env['FERRY_TRACE'] = 'phases';

useFileCache('migration-native-faults');

for (const path of ['native', 'javascript'] as const) {
  describe(`postcopy with the ${path} fault path, end to end`, () => {
    let sb: Sandbox;
    const procs: FerryProc[] = [];
    before(() => {
      sb = makeSandbox();
      if (path === 'native') delete process.env['FERRY_NATIVE_FAULTS'];
      else process.env['FERRY_NATIVE_FAULTS'] = '0';
    });
    after(() => {
      killAll(...procs);
      sb.cleanup();
      delete process.env['FERRY_NATIVE_FAULTS'];
    });

    test(`${MIB} MiB rewritten at full speed moves with postcopy; faults go through the ${path} path`, { timeout: 300_000 }, async () => {
      const src = await startSource(sb, 'memtouch.wasm', ['--mib', String(MIB), '--rate', '0', '--report-ms', '100', '--verify-file', '/work/verify'], '1G', 3);
      procs.push(src);
      const { proc: dst, port } = await startDestination(sb);
      procs.push(dst);
      // The cap (about 1 s a pass here) keeps even one dirty page above the 1 µs downtime target and
      // gives the guest time to dirty some: on a fast or idle run the pass cannot end as a stop-and-copy.
      const { code, json: r, stderr } = await runMigrate(sb, port, ['--mode', 'postcopy', '--downtime-target', '0.001', '--max-bandwidth', '256M'], sb.keyFile, 240_000);
      assert.equal(code, 0, `postcopy failed: ${stderr}`);
      assert.equal(r['mode'], 'postcopy');
      assert.ok(Number(r['bytesSent']) <= 2 * Number(r['memoryBytes']) * 1.005 + (1 << 20), `bytesSent ${r['bytesSent']}`);
      assert.equal(await src.exitWithin(30_000), 0);
      const pc = r['postcopy'] as { pagesRequested: number; pagesPushed: number; dataplane?: { pagesSent: number; bytesSent: number; bytesReceived: number } };
      if (path === 'native') {
        // Both sides ran the native threads (the feature was granted and the connection made).
        assert.match(src.err, /native answer thread started/);
        assert.match(dst.err, /native fault thread started/);
        // The answer thread's bytes are in the source's totals: every page it sent is 4 KiB of
        // payload on the data plane connection, and the bulk channel carried what was pushed.
        const dp = pc.dataplane;
        assert.ok(dp, 'the source reports what its native answer thread carried');
        assert.ok(dp.bytesSent >= dp.pagesSent * 4096, `data plane bytes ${dp.bytesSent} < ${dp.pagesSent} pages`);
        // The bulk stream after the commit went native too: the pages the destination counts as
        // pushed all came over the data plane.
        assert.ok(dp.pagesSent >= pc.pagesPushed, `the data plane sent ${dp.pagesSent} pages, fewer than the ${pc.pagesPushed} pushed`);
        // Totals add up: every page with contents on the TLS channel (precopy) plus the data plane's bytes.
        const tlsDataPages = Number(r['pagesSent']) - dp.pagesSent - Number(r['zeroPages']) - Number(r['skippedNeverTouchedPages']);
        assert.ok(Number(r['bytesSent']) >= dp.bytesSent + tlsDataPages * 4096, `bytesSent ${r['bytesSent']} < data plane ${dp.bytesSent} + ${tlsDataPages} pages on the bulk channel`);
      } else {
        assert.equal(pc.dataplane, undefined);
        assert.doesNotMatch(src.err, /native answer thread started/);
        assert.doesNotMatch(dst.err, /native fault thread started/);
      }
      await dst.waitFor(/^SEQ \d+ /m, 'a SEQ line from the destination', 60_000);
      assert.equal(await verifyGuest(dst, sb.dstWork), `VERIFY OK ${(MIB << 20) / 4096}`);
      assert.equal(await dst.exitWithin(60_000), 0);
      const seq = checkSequence(src.out, dst.out);
      assert.ok(seq.ok, `${seq.problem} (source ${seq.source}, destination ${seq.destination})`);
      process.stderr.write(`# ${path} postcopy: ${JSON.stringify(r['postcopy'])}\n`);
    });
  });
}
