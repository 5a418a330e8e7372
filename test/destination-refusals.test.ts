// A real `ferry run --incoming` destination (real TLS: a pre-shared key, then mutual certificates)
// receives peers that are not its source, in parallel where they do not depend on each other:
// random bytes, an HTTP request, TLS clients with the wrong key or an untrusted certificate, a
// Ferry client without TLS (bulk and urgent), a connection that sends nothing until the
// destination's deadline closes it, authenticated sources that fail SETUP (a guest path not
// mapped here; silence), 200 connect/close cycles, and — while a real migration runs —
// a second, authenticated source (bulk and urgent channels of another session). After each it must
// still be waiting (or migrating), have counted and logged every refusal, not have grown its
// memory without bound, and the real migration must complete and verify.
import { strict as assert } from 'node:assert';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ApiClient } from '../src/api/client.js';
import { connect, newSessionId, TransportError, type Security } from '../src/migration/transport/index.js';
import { FERRY_BIN, FerryProc, killAll, makeSandbox, runMigrate, startDestination, startSource, useFileCache, verifyGuest, type Sandbox } from './fixtures/migration/ferry-procs.js';
import { makePkiFiles, type PkiFiles } from './fixtures/migration/pki.js';

useFileCache('destination-refusals');

const HOST = '127.0.0.1';
/** The destination's --handshake-timeout in these tests (seconds): the silent peer waits this long. */
const HANDSHAKE_S = 3;

type Sec = 'tls-psk' | 'tls-cert';

/** Connects, writes `bytes`, and resolves once the destination closed the connection. */
function sendUntilClosed(port: number, bytes: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: HOST, port }, () => s.write(bytes));
    s.on('error', () => undefined); // a reset is a close too
    s.on('data', () => undefined);
    s.once('close', () => resolve());
    setTimeout(() => reject(new Error('the destination never closed a connection that sent garbage')), 60_000).unref();
  });
}

/** A connection that sends nothing: resolves when the destination closes it (its deadline). */
function silentUntilClosed(port: number): Promise<{ closedByPeer: boolean }> {
  return new Promise((resolve, reject) => {
    let ended = false;
    const s = net.connect({ host: HOST, port });
    s.on('error', () => undefined);
    s.on('end', () => (ended = true)); // the destination's FIN
    s.once('close', () => resolve({ closedByPeer: ended || s.destroyed }));
    setTimeout(() => reject(new Error('the destination never closed a silent connection')), 60_000).unref();
  });
}

function connectClose(port: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port }, () => s.destroy());
    s.on('error', () => undefined);
    s.once('close', () => resolve());
  });
}

function rssKiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m![1]);
}

async function refusedCount(api: ApiClient): Promise<number> {
  return Number((await api.migration())?.['refused'] ?? NaN);
}

/** Lines the destination has logged so far that begin `ferry: refused `. */
function refusedLines(dst: FerryProc): number {
  return dst.err.split('\n').filter((l) => l.startsWith('ferry: refused ')).length;
}

/**
 * Waits until the destination counts `atLeast` refusals and its stderr, which reaches this
 * process through a pipe and may lag the API's counter, holds as many refusal lines.
 */
async function waitForRefused(api: ApiClient, atLeast: number, dst: FerryProc): Promise<number> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const n = await refusedCount(api);
    if (n >= atLeast && refusedLines(dst) >= n) return n;
    assert.ok(dst.running, `the destination exited while refusing peers:\n${dst.err.slice(-3000)}`);
    if (Date.now() > deadline) throw new Error(`only ${n} of ${atLeast} peers counted as refused (${refusedLines(dst)} logged):\n${dst.err.slice(-3000)}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** A Ferry client that must be refused: resolves with what it was refused with. */
async function refusedClient(port: number, security: Security, channel: 'bulk' | 'urgent'): Promise<TransportError> {
  try {
    const ch = await connect({ host: HOST, port, security, channel, sessionId: newSessionId(), timeoutMs: 30_000 });
    // An urgent channel is authenticated by the urgent thread, then dropped by the listener (busy):
    // it must be closed without a message.
    const next = await ch.recv().then(
      (m) => m,
      (e: unknown) => e,
    );
    ch.destroy();
    assert.ok(next === null || next instanceof Error, `an unwanted channel got ${JSON.stringify(next)}`);
    return new TransportError('CLOSED', `${HOST}:${port}`, 'closed after HELLO_ACK');
  } catch (err) {
    assert.ok(err instanceof TransportError, `a TransportError, got ${String(err)}`);
    return err;
  }
}

for (const sec of ['tls-psk', 'tls-cert'] as Sec[]) {
  describe(`a destination (${sec}) keeps waiting through stray peers`, () => {
    let sb: Sandbox;
    let pki: PkiFiles;
    const procs: FerryProc[] = [];

    before(() => {
      sb = makeSandbox();
      pki = makePkiFiles(sb.dir);
    });
    after(() => {
      killAll(...procs);
      sb.cleanup();
    });

    test('every stray peer is refused, logged and counted; a real migration then completes and verifies', async () => {
      const key = (f: string) => Buffer.from(readFileSync(f, 'utf8').trim(), 'hex');
      const r = (f: string) => readFileSync(f, 'utf8');
      const destFlags = sec === 'tls-psk' ? ['--tls-psk', sb.keyFile] : ['--tls-cert', pki.serverCert, '--tls-key', pki.serverKey, '--tls-ca', pki.ca];
      const srcFlags = sec === 'tls-psk' ? ['--tls-psk', sb.keyFile] : ['--tls-cert', pki.clientCert, '--tls-key', pki.clientKey, '--tls-ca', pki.ca];
      const good: Security = sec === 'tls-psk' ? { kind: 'psk', key: key(sb.keyFile) } : { kind: 'cert', cert: r(pki.clientCert), key: r(pki.clientKey), ca: r(pki.ca) };
      // Wrong credentials: another key; a client certificate from an unrelated CA; the other kind of TLS.
      const wrong: Security[] =
        sec === 'tls-psk'
          ? [{ kind: 'psk', key: key(sb.wrongKeyFile) }, { kind: 'cert', cert: r(pki.clientCert), key: r(pki.clientKey), ca: r(pki.ca) }]
          : [{ kind: 'cert', cert: r(pki.otherClientCert), key: r(pki.otherClientKey), ca: r(pki.ca) }, { kind: 'psk', key: key(sb.keyFile) }];
      const dstSock = join(sb.dir, 'dst.sock');
      const { proc: dst, port } = await startDestination(sb, [...destFlags, '--handshake-timeout', String(HANDSHAKE_S), '--api-sock', dstSock]);
      procs.push(dst);
      const api = new ApiClient(dstSock);
      const pid = dst.child.pid!;
      assert.equal(await refusedCount(api), 0);

      // ---- stray peers, side by side ----
      const rssBefore = rssKiB(pid);
      const silent = silentUntilClosed(port);
      const strays: Array<Promise<unknown>> = [
        sendUntilClosed(port, randomBytes(4096)),
        sendUntilClosed(port, Buffer.from('GET / HTTP/1.0\r\nHost: x\r\n\r\n')),
        ...wrong.flatMap((w) => [refusedClient(port, w, 'bulk'), refusedClient(port, w, 'urgent')]),
        refusedClient(port, { kind: 'insecure' }, 'bulk'),
        refusedClient(port, { kind: 'insecure' }, 'urgent'),
      ];
      const results = await Promise.all(strays);
      for (const e of results.slice(2)) assert.ok(e instanceof TransportError && e.code !== 'CONNECT_REFUSED', `refused, not unreachable: ${String(e)}`);
      const { closedByPeer } = await silent;
      assert.ok(closedByPeer, 'the destination closed the silent connection (its deadline)');
      // Authenticated sources that fail SETUP, one after the other (while one is in SETUP, the
      // destination admits no other session): a guest path this host does not map, and silence.
      const authenticated = () => connect({ host: HOST, port, security: good, channel: 'bulk', sessionId: newSessionId(), timeoutMs: 30_000 });
      const unmapped = await authenticated();
      await unmapped.sendMessage({ type: 'SETUP', moduleHash: '0'.repeat(64), moduleSize: 1000, memory: { bytes: 65536, maxBytes: 65536 }, preopens: ['/work', '/elsewhere'], mode: 'precopy' });
      await assert.rejects(unmapped.expect('SETUP_ACK', 30_000), (e: unknown) => e instanceof TransportError && e.code === 'REFUSED' && /"\/elsewhere", not mapped on this host/.test(e.message));
      unmapped.destroy();
      const mute = await authenticated();
      const end = await mute.recv().then(
        (m) => m,
        (e: unknown) => e,
      );
      assert.ok(end === null || end instanceof Error, `a source silent after HELLO is closed at its deadline, got ${JSON.stringify(end)}`);
      mute.destroy();
      const strayCount = strays.length + 1 + 2;
      await waitForRefused(api, strayCount, dst);
      assert.match(dst.err, /^ferry: refused 127\.0\.0\.1:\d+ \(SETUP\): migration refused: the guest needs preopened "\/elsewhere"/m);
      assert.match(dst.err, /^ferry: refused 127\.0\.0\.1:\d+ \(SETUP\): .*no SETUP within \d+ ms/m);
      assert.ok(dst.running, 'still waiting');
      assert.match(dst.err, /^ferry: refused 127\.0\.0\.1:\d+ \(preface\): no channel preface: the connection began with .*474554/m, 'the HTTP request is named');
      assert.match(dst.err, /^ferry: refused 127\.0\.0\.1:\d+ \(preface\): no channel preface within \d+ ms/m, 'the silent peer is named');
      assert.match(dst.err, /^ferry: refused 127\.0\.0\.1:\d+ \((TLS\/HELLO|urgent [^)]*)\): .*(TLS|certificate|key)/im, 'a wrong credential is named');

      // ---- 200 connect/close cycles, 10 at a time ----
      for (let i = 0; i < 20; i++) await Promise.all(Array.from({ length: 10 }, () => connectClose(port)));
      await waitForRefused(api, strayCount + 200, dst);
      const rssAfter = rssKiB(pid);
      assert.ok(rssAfter < rssBefore + 64 * 1024, `RSS grew from ${rssBefore} to ${rssAfter} KiB over ${strayCount + 200} refused peers`);
      assert.equal(refusedLines(dst), await refusedCount(api), 'one line per refused peer');
      const status = await api.migration();
      assert.equal(status?.state, 'connecting', 'still waiting for its source');
      assert.ok(dst.running);

      // ---- a real migration; a second authenticated source arrives while it runs ----
      const src = await startSource(sb, 'memtouch.wasm', ['--mib', '32', '--rate', '500', '--report-ms', '100', '--verify-file', '/work/verify'], '256M');
      procs.push(src);
      const migrating = runMigrate(sb, port, ['--mode', 'precopy', '--verify', '--max-bandwidth', '6M'], srcFlags);
      const deadline = Date.now() + 60_000;
      for (;;) {
        const s = await api.migration();
        if (s?.state === 'precopy' && Number(s.bytesReceived) > 1024 * 1024) break;
        if (Date.now() > deadline) throw new Error(`the migration never got going: ${JSON.stringify(s)}\n${dst.err.slice(-2000)}`);
        await new Promise((res) => setTimeout(res, 50));
      }
      const refusedBefore = await refusedCount(api);
      const second = await refusedClient(port, good, 'bulk');
      assert.equal(second.code, 'REFUSED', `the second source is refused: ${second.message}`);
      assert.match(second.message, /busy with another migration/);
      await refusedClient(port, good, 'urgent');
      const during = await api.migration();
      assert.equal(during?.state, 'precopy', `the first migration goes on: ${JSON.stringify(during)}`);
      assert.ok(Number(during?.['refused']) >= refusedBefore + 2, 'both channels of the second source counted');
      const { code, json } = await migrating;
      assert.equal(code, 0, `migrate: ${JSON.stringify(json)}`);
      assert.equal(json['verified'], true);
      await dst.waitFor(/^SEQ \d+ /m, 'the guest running on the destination', 60_000);
      assert.match(await verifyGuest(dst, sb.dstWork), /^VERIFY OK /);
      assert.equal(await dst.exitWithin(60_000), 0);
      assert.equal(await src.exitWithin(60_000), 0);
    });
  });
}

describe('destination limits and key files', () => {
  let sb: Sandbox;
  const procs: FerryProc[] = [];
  before(() => (sb = makeSandbox()));
  after(() => {
    killAll(...procs);
    sb.cleanup();
  });

  test('--max-refused N: the destination gives up after N refused peers, exit 6', async () => {
    const { proc: dst, port } = await startDestination(sb, ['--tls-psk', sb.keyFile, '--max-refused', '3']);
    procs.push(dst);
    for (let i = 0; i < 3; i++) await sendUntilClosed(port, Buffer.from('hello?\n'));
    assert.equal(await dst.exitWithin(30_000), 6);
    assert.match(dst.err, /gave up after 3 refused peer\(s\) \(--max-refused 3\)/);
    assert.equal(refusedLines(dst), 3);
  });

  test("a destination whose stderr reader went away (EPIPE on its refusal lines) keeps waiting", async () => {
    const sock = join(sb.dir, 'epipe.sock');
    const child = spawn(process.execPath, [FERRY_BIN, 'run', '--incoming', '127.0.0.1:0', '--tls-psk', sb.keyFile, '--api-sock', sock], { stdio: ['ignore', 'ignore', 'pipe'] });
    try {
      let err = '';
      child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
      const deadline = Date.now() + 30_000;
      while (!/waiting for a migration on \S*:(\d+)\n/.test(err)) {
        assert.ok(Date.now() < deadline && child.exitCode === null, `the destination did not start: ${err}`);
        await new Promise((r) => setTimeout(r, 50));
      }
      const port = Number(/waiting for a migration on \S*:(\d+)\n/.exec(err)![1]);
      child.stderr!.destroy(); // nobody reads its stderr any more: its next line fails with EPIPE
      await sendUntilClosed(port, Buffer.from('GET / HTTP/1.0\r\n\r\n'));
      await sendUntilClosed(port, Buffer.from('GET / HTTP/1.0\r\n\r\n'));
      const api = new ApiClient(sock);
      const until = Date.now() + 30_000;
      while ((await refusedCount(api)) < 2) {
        assert.ok(Date.now() < until, 'both refusals counted');
        await new Promise((r) => setTimeout(r, 50));
      }
      assert.equal(child.exitCode, null, 'still waiting');
      assert.equal((await api.migration())?.state, 'connecting');
    } finally {
      child.kill('SIGKILL');
    }
  });

  test('a key file other users can read is refused (exit 2), on both sides', async () => {
    const open = join(sb.dir, 'open.hex');
    writeFileSync(open, randomBytes(32).toString('hex'));
    chmodSync(open, 0o644);
    const dst = new FerryProc('destination', ['run', '--incoming', '127.0.0.1:0', '--tls-psk', open]);
    procs.push(dst);
    assert.equal(await dst.exitWithin(30_000), 2);
    assert.match(dst.err, /permissions 0644 let other users read this secret; refused \(chmod 600 /);
    const mig = new FerryProc('migrate', ['migrate', '--api-sock', sb.sock, '--to', '127.0.0.1:9', '--tls-psk', open]);
    procs.push(mig);
    assert.equal(await mig.exitWithin(30_000), 2);
    assert.match(mig.err, /permissions 0644/);
    chmodSync(open, 0o600);
    const ok = new FerryProc('destination', ['run', '--incoming', '127.0.0.1:0', '--tls-psk', open, '--max-refused', '1']);
    procs.push(ok);
    await ok.waitFor(/waiting for a migration on/, 'the destination to listen with a 0600 key', 30_000, 'err');
    ok.kill();
  });
});
