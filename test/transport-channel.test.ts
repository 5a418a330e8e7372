import { strict as assert } from 'node:assert';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import net from 'node:net';
import { Duplex } from 'node:stream';
import { randomBytes } from 'node:crypto';
import { before, describe, test } from 'node:test';
import { makePkiFiles, type PkiFiles } from './fixtures/migration/pki.js';
import {
  connect,
  listen,
  newSessionId,
  TransportError,
  FramedChannel,
  type MigrationListener,
  type Security,
} from '../src/migration/transport/index.js';
import { CHANNEL_PREFACE, decodeMessage, encodeMessage, Feature, FrameFlag, GO_AHEAD, WIRE_VERSION, WireError } from '../src/migration/wire/index.js';

const HOST = '127.0.0.1';

// A throwaway CA and certificates made with the openssl CLI.
type TestPki = { [K in keyof PkiFiles]: string };

/** The fixture's certificates, read into memory (the files are removed at once). */
function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-pki-'));
  try {
    const files = makePkiFiles(dir);
    return Object.fromEntries(Object.entries(files).map(([k, path]) => [k, readFileSync(path, 'utf8')])) as TestPki;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}


async function withListener<T>(security: Security, fn: (l: MigrationListener) => Promise<T>): Promise<T> {
  const l = await listen({ host: HOST, port: 0, security, handshakeTimeoutMs: 5000 });
  try {
    return await fn(l);
  } finally {
    await l.close();
  }
}

function nextRejection(l: MigrationListener): Promise<TransportError> {
  return once(l, 'rejected').then(([e]) => e as TransportError);
}

/** A raw TCP connection to the listener, with the channel preface sent and its go-ahead checked. */
async function rawConnect(l: MigrationListener, preface?: keyof typeof CHANNEL_PREFACE): Promise<net.Socket> {
  const raw = net.connect(l.port, HOST);
  await once(raw, 'connect');
  if (preface) {
    raw.write(Buffer.from([CHANNEL_PREFACE[preface]]));
    const [goAhead] = (await once(raw, 'data')) as [Buffer];
    assert.deepEqual([...goAhead], [GO_AHEAD]);
  }
  return raw;
}

describe('transport: insecure TCP', () => {
  test('round-trips messages and pages; counts bytes; clean close gives null', async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const sid = newSessionId();
      const [client, accepted] = await Promise.all([
        connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: sid }),
        l.accept(),
      ]);
      assert.equal(accepted.hello.channel, 'bulk');
      assert.ok(accepted.hello.sessionId.equals(sid));
      assert.equal(client.session?.features, Feature.POSTCOPY | Feature.RECOVERY | Feature.DIGEST | Feature.SOCKETS);
      const data = randomBytes(4096 * 3);
      await client.sendPages(8192, 3, 'data', data);
      await client.sendMessage({ type: 'PASS_END', pass: 0, dirtyPages: 3 });
      const server = accepted.channel;
      const f1 = await server.recvFrame();
      assert.equal(f1?.flags, 0, 'plain TCP frames carry a CRC');
      const m1 = decodeMessage(f1!);
      assert.ok(m1 && m1.type === 'PAGES' && m1.offset === 8192 && m1.count === 3 && m1.data!.equals(data));
      assert.deepEqual(await server.recv(), { type: 'PASS_END', pass: 0, dirtyPages: 3 });
      await client.close();
      assert.equal(await server.recv(), null);
      assert.ok(client.bytesSent >= data.length + 2 * 16 + 16 + 8);
      assert.equal(server.bytesReceived, client.bytesSent);
      server.destroy();
    });
  });

  test('connection refused names host:port', async () => {
    const probe = net.createServer();
    await new Promise<void>((r) => probe.listen(0, HOST, r));
    const port = (probe.address() as net.AddressInfo).port;
    await new Promise<void>((r) => probe.close(() => r()));
    await assert.rejects(
      connect({ host: HOST, port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId() }),
      (e: unknown) => e instanceof TransportError && e.code === 'CONNECT_REFUSED' && e.message.includes(`${HOST}:${port}`),
    );
  });

  test('handshake timeout when the peer never answers the preface, or HELLO', async () => {
    // One peer never answers at all; the other gives the go-ahead after the preface, then nothing.
    const silent = net.createServer((s) => s.on('data', () => undefined));
    const mute = net.createServer((s) => s.once('data', () => s.write(Buffer.from([GO_AHEAD]))));
    const ports: number[] = [];
    for (const server of [silent, mute]) {
      await new Promise<void>((r) => server.listen(0, HOST, r));
      ports.push((server.address() as net.AddressInfo).port);
    }
    try {
      // One timer covers the whole handshake: the HELLO case gets a long one, so that a process
      // stalled for a moment cannot time out still in the preface (the case then waits it out).
      for (const [port, phase, timeoutMs] of [[ports[0]!, /channel preface/, 300], [ports[1]!, /HELLO/, 5000]] as const) {
        await assert.rejects(
          connect({ host: HOST, port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId(), timeoutMs }),
          (e: unknown) => e instanceof TransportError && e.code === 'TIMEOUT' && phase.test(e.message) && e.message.includes(`${port}`),
        );
      }
    } finally {
      silent.close();
      mute.close();
    }
  });

  test('garbage instead of frames fails the channel with a WireError naming the offset', async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const rejected = nextRejection(l);
      const raw = await rawConnect(l, 'bulk');
      raw.write(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
      const err = await rejected;
      assert.ok((err as unknown) instanceof TransportError || (err as unknown) instanceof WireError);
      assert.match(err.message, /bad frame at byte 0: bad magic/);
      raw.destroy();
    });
  });

  test('a connection without the channel preface is refused, saying what it began with', async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const rejected = nextRejection(l);
      const raw = await rawConnect(l);
      raw.write(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
      const err = await rejected;
      assert.equal(err.code, 'PROTOCOL');
      assert.match(err.message, /no channel preface: the connection began with 18 byte\(s\) 474554202f204854/);
      raw.destroy();
    });
  });

  test('a connection that never sends its preface is reported once, as a timeout', async () => {
    const l = await listen({ host: HOST, port: 0, security: { kind: 'insecure' }, handshakeTimeoutMs: 200 });
    try {
      const reports: TransportError[] = [];
      l.on('rejected', (e) => reports.push(e));
      const raw = await rawConnect(l);
      await once(raw, 'close'); // the listener gave up and closed it
      await new Promise((r) => setImmediate(r));
      assert.deepEqual(reports.map((e) => e.code), ['TIMEOUT']);
      assert.match(reports[0]!.message, /no channel preface within 200 ms/);
    } finally {
      await l.close();
    }
  });

  test('connections past maxUnauthenticated are closed on arrival; a source gets in once the silent ones are gone', async () => {
    const l = await listen({ host: HOST, port: 0, security: { kind: 'insecure' }, maxUnauthenticated: 3, handshakeTimeoutMs: 60_000 });
    const silent: net.Socket[] = [];
    try {
      const reports: { code: string; phase: string }[] = [];
      l.on('rejected', (e: TransportError, phase: string) => reports.push({ code: e.code, phase }));
      for (let i = 0; i < 3; i++) silent.push(await rawConnect(l)); // each holds a slot, saying nothing
      // A flood of 5 more: every one is closed at once, before it can send anything.
      for (let i = 0; i < 5; i++) {
        const extra = await rawConnect(l);
        await once(extra, 'close');
      }
      assert.deepEqual(reports, Array.from({ length: 5 }, () => ({ code: 'REFUSED', phase: 'arrival' })));
      // An authenticating source is refused too while the slots are taken...
      await assert.rejects(connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId() }));
      // ...and admitted once the silent connections are gone.
      for (const s of silent.splice(0)) {
        s.destroy();
        await once(s, 'close');
      }
      while (reports.filter((r) => r.phase === 'preface').length < 3) await once(l, 'rejected');
      const ch = await connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId() });
      ch.destroy();
    } finally {
      for (const s of silent) s.destroy();
      await l.close();
    }
  });

  test('a HELLO naming another channel than the preface is refused', async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const rejected = nextRejection(l);
      const raw = await rawConnect(l, 'bulk');
      const hello = encodeMessage({ type: 'HELLO', version: WIRE_VERSION, channel: 'urgent', sessionId: newSessionId(), features: 0 }, { checksum: true });
      raw.write(Buffer.concat(hello));
      const err = await rejected;
      assert.equal(err.code, 'REFUSED');
      assert.match(err.message, /HELLO names the urgent channel, the connection's preface the bulk channel/);
      raw.destroy();
    });
  });

  test('a refused HELLO reaches the client as REFUSED', async () => {
    const l = await listen({ host: HOST, port: 0, security: { kind: 'insecure' }, checkHello: (h) => (h.channel === 'urgent' ? 'no urgent channel today' : null) });
    try {
      const rejected = nextRejection(l);
      await assert.rejects(
        connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'urgent', sessionId: newSessionId() }),
        (e: unknown) => e instanceof TransportError && e.code === 'REFUSED' && /no urgent channel today/.test(e.message),
      );
      assert.equal((await rejected).code, 'REFUSED');
    } finally {
      await l.close();
    }
  });

  test('a peer that closes: recv gives null, then sends fail', async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const [client, accepted] = await Promise.all([
        connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'urgent', sessionId: newSessionId() }),
        l.accept(),
      ]);
      const pending = client.recv();
      accepted.channel.destroy();
      assert.equal(await pending, null);
      await assert.rejects(client.sendMessage({ type: 'PING', nonce: 1 }), TransportError);
      await assert.rejects(client.expect('PONG'), (e: unknown) => e instanceof TransportError && e.code === 'CLOSED');
    });
  });

  test('a peer that resets the connection: RESET naming host:port', async () => {
    const rude = net.createServer((s) => s.once('data', () => s.resetAndDestroy()));
    await new Promise<void>((r) => rude.listen(0, HOST, r));
    const port = (rude.address() as net.AddressInfo).port;
    try {
      await assert.rejects(
        connect({ host: HOST, port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId() }),
        (e: unknown) => e instanceof TransportError && e.code === 'RESET' && e.message.includes(`${HOST}:${port}`) && /reset by peer/.test(e.message),
      );
    } finally {
      rude.close();
    }
  });

  test('bulk and urgent channels of one session are matched on one listener', async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const a = newSessionId();
      const b = newSessionId();
      const pairs = Promise.all([l.acceptSession(), l.acceptSession()]);
      // Interleave two sessions so matching must go by id, not by arrival order.
      const conns = [];
      conns.push(await connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: a }));
      conns.push(await connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'urgent', sessionId: b }));
      conns.push(await connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: b }));
      conns.push(await connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'urgent', sessionId: a }));
      const [first, second] = await pairs;
      assert.equal(first.sessionHex, b.toString('hex'));
      assert.equal(second.sessionHex, a.toString('hex'));
      // Without an urgentHandoff the listener authenticates urgent connections itself.
      const urgentOf = (p: typeof first) => {
        assert.ok(!('remote' in p.urgent), 'the urgent channel is held here');
        return p.urgent as FramedChannel;
      };
      for (const p of [first, second]) {
        assert.equal(p.bulk.session?.channel, 'bulk');
        assert.equal(urgentOf(p).session?.channel, 'urgent');
      }
      // The urgent pair really is connected to the urgent client: a request goes through.
      await conns[3]!.sendMessage({ type: 'PAGE_REQUEST', offset: 4096, count: 1 });
      assert.deepEqual(await urgentOf(second).recv(), { type: 'PAGE_REQUEST', offset: 4096, count: 1 });
      for (const c of conns) c.destroy();
      for (const p of [first, second]) {
        p.bulk.destroy();
        p.urgent.destroy();
      }
    });
  });

  test('a session starts on its bulk channel; its urgent channel joins before or after, by id', async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const early = newSessionId();
      const late = newSessionId();
      const other = newSessionId();
      const opts = { host: HOST, port: l.port, security: { kind: 'insecure' as const } };
      const conns = [];
      // Urgent first: acceptBulk hands both over.
      conns.push(await connect({ ...opts, channel: 'urgent', sessionId: early }));
      conns.push(await connect({ ...opts, channel: 'bulk', sessionId: early }));
      const first = await l.acceptBulk();
      assert.equal(first.sessionHex, early.toString('hex'));
      assert.equal((first.urgent as FramedChannel | null)?.session?.channel, 'urgent');
      // Bulk first: no urgent yet; acceptUrgent waits for this session's, passing another session's by.
      conns.push(await connect({ ...opts, channel: 'bulk', sessionId: late }));
      const second = await l.acceptBulk();
      assert.equal(second.sessionHex, late.toString('hex'));
      assert.equal(second.urgent, null);
      const joined = l.acceptUrgent(second.sessionHex);
      conns.push(await connect({ ...opts, channel: 'urgent', sessionId: other }));
      conns.push(await connect({ ...opts, channel: 'urgent', sessionId: late }));
      const urgent = (await joined) as FramedChannel;
      await conns[4]!.sendMessage({ type: 'PAGE_REQUEST', offset: 8192, count: 2 });
      assert.deepEqual(await urgent.recv(), { type: 'PAGE_REQUEST', offset: 8192, count: 2 }, 'the urgent channel of that session, not the other one');
      // The other session's urgent channel waits for its own bulk.
      conns.push(await connect({ ...opts, channel: 'bulk', sessionId: other }));
      const third = await l.acceptSession();
      assert.equal(third.sessionHex, other.toString('hex'));
      for (const c of [...conns, first.bulk, first.urgent!, second.bulk, urgent, third.bulk, third.urgent]) c.destroy();
    });
  });

  test('frames keep their order when pacing ends with paced frames still waiting (an idle channel writes at once)', { timeout: 20_000 }, async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const [client, accepted] = await Promise.all([
        connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId(), maxBandwidth: 256 * 1024 }),
        l.accept(),
      ]);
      try {
        // The first frame takes the 64 KiB burst; the next two wait for tokens when pacing is
        // lifted (as a switchover lifts it); frames sent after that must still come after them.
        const sends: Promise<void>[] = [];
        for (let pass = 0; pass < 3; pass++) sends.push(client.sendPages(pass * 65536, 16, 'data', Buffer.alloc(65536, pass)));
        client.setMaxBandwidth(undefined);
        for (let pass = 3; pass < 6; pass++) sends.push(client.sendMessage({ type: 'PASS_END', pass, dirtyPages: 0 }));
        await Promise.all(sends);
        const order: number[] = [];
        for (let i = 0; i < 6; i++) {
          const m = await accepted.channel.recv();
          order.push(m?.type === 'PAGES' ? m.offset / 65536 : m?.type === 'PASS_END' ? m.pass : -1);
        }
        assert.deepEqual(order, [0, 1, 2, 3, 4, 5]);
        await client.sendMessage({ type: 'PASS_END', pass: 6, dirtyPages: 0 }); // idle now: written at once
        assert.deepEqual(await accepted.channel.recv(), { type: 'PASS_END', pass: 6, dirtyPages: 0 });
      } finally {
        client.destroy();
        accepted.channel.destroy();
      }
    });
  });

  test('maxBandwidth slows the bulk channel down', async () => {
    await withListener({ kind: 'insecure' }, async (l) => {
      const [client, accepted] = await Promise.all([
        connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId(), maxBandwidth: 4 * 1024 * 1024 }),
        l.accept(),
      ]);
      const page = Buffer.alloc(4096 * 64);
      const t0 = performance.now();
      const drain = (async () => {
        let n = 0;
        while (n < 16) if ((await accepted.channel.recv())?.type === 'PAGES') n++;
      })();
      for (let i = 0; i < 16; i++) await client.sendPages(i * page.length, 64, 'data', page);
      await drain;
      // 4 MiB at 4 MiB/s with a 200 KiB burst: cannot finish in well under ~0.9 s on any machine.
      assert.ok(performance.now() - t0 > 700, `took only ${performance.now() - t0} ms`);
      client.destroy();
      accepted.channel.destroy();
    });
  });
});

describe('transport: TLS 1.3 with a pre-shared key', () => {
  const key = randomBytes(32);
  test('connects, carries frames, and bytesSent includes TLS overhead', async () => {
    await withListener({ kind: 'psk', key }, async (l) => {
      const [client, accepted] = await Promise.all([
        connect({ host: HOST, port: l.port, security: { kind: 'psk', key }, channel: 'bulk', sessionId: newSessionId() }),
        l.accept(),
      ]);
      const data = randomBytes(4096 * 256);
      const framedBytes = data.length + 16 + 16;
      const before = client.bytesSent;
      await client.sendPages(0, 256, 'data', data);
      const f = await accepted.channel.recvFrame();
      assert.equal(f?.flags, FrameFlag.NO_CRC, 'TLS channels leave integrity to TLS');
      const m = decodeMessage(f!);
      assert.ok(m.type === 'PAGES' && m.data!.equals(data));
      const wire = client.bytesSent - before;
      // Encrypted records carry a 5-byte header + 16-byte tag + content type per ≤16 KiB record.
      assert.ok(wire > framedBytes, `bytesSent grew by ${wire}, framed payload was ${framedBytes}`);
      assert.ok(wire >= framedBytes + Math.floor(framedBytes / 16384) * 21, `TLS overhead missing: ${wire - framedBytes} bytes`);
      assert.ok(client.bytesSent > client.payloadBytesSent);
      client.destroy();
      accepted.channel.destroy();
    });
  });

  test('batch() hands its frames to the socket in one write: all of them are in it before the event loop turns', async () => {
    await withListener({ kind: 'psk', key }, async (l) => {
      const [client, accepted] = await Promise.all([
        connect({ host: HOST, port: l.port, security: { kind: 'psk', key }, channel: 'bulk', sessionId: newSessionId() }),
        l.accept(),
      ]);
      try {
        const passEnd = (pass: number) => ({ type: 'PASS_END' as const, pass, dirtyPages: 0 });
        // Without batch(): the TLS socket takes the first frame and holds the second until a turn.
        let before = client.bytesSent;
        const plain = [client.sendMessage(passEnd(1)), client.sendMessage(passEnd(2))];
        const plainAtOnce = client.bytesSent - before;
        await Promise.all(plain);
        assert.ok(plainAtOnce < client.bytesSent - before, `unbatched, ${plainAtOnce} of ${client.bytesSent - before} bytes went at once`);
        before = client.bytesSent;
        const batched = client.batch(() => [client.sendMessage(passEnd(3)), client.sendMessage(passEnd(4))]);
        const batchedAtOnce = client.bytesSent - before;
        await Promise.all(batched);
        assert.equal(batchedAtOnce, client.bytesSent - before, 'batched, every byte went at once');
        for (let pass = 1; pass <= 4; pass++) assert.deepEqual(await accepted.channel.recv(), passEnd(pass));
      } finally {
        client.destroy();
        accepted.channel.destroy();
      }
    });
  });

  test('a wrong key is refused on both sides before any message', async () => {
    await withListener({ kind: 'psk', key }, async (l) => {
      const rejected = nextRejection(l);
      let accepted = false;
      void l.accept().then((c) => {
        accepted = true;
        c.channel.destroy();
      }, () => undefined);
      await assert.rejects(
        connect({ host: HOST, port: l.port, security: { kind: 'psk', key: randomBytes(32) }, channel: 'bulk', sessionId: newSessionId() }),
        (e: unknown) => e instanceof TransportError && e.code === 'TLS' && /pre-shared key/.test(e.message) && e.message.includes(`${l.port}`),
      );
      const serverErr = await rejected;
      assert.equal(serverErr.code, 'TLS');
      assert.match(serverErr.message, /pre-shared key/);
      assert.equal(accepted, false);
    });
  });

  test('a plain TCP client is refused by a PSK listener', async () => {
    await withListener({ kind: 'psk', key }, async (l) => {
      const rejected = nextRejection(l);
      await assert.rejects(connect({ host: HOST, port: l.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId(), timeoutMs: 3000 }), TransportError);
      assert.equal((await rejected).code, 'TLS');
    });
  });

  test('a short key is a clear input error', async () => {
    await assert.rejects(listen({ host: HOST, port: 0, security: { kind: 'psk', key: Buffer.alloc(4) } }), /at least 16 bytes/);
  });
});

describe('transport: TLS 1.3 with mutual certificates', () => {
  let pki: TestPki;
  before(() => {
    pki = makeTestPki();
  });

  const serverSec = (): Security => ({ kind: 'cert', cert: pki.serverCert, key: pki.serverKey, ca: pki.ca });

  test('both sides verified: connects and carries frames', async () => {
    await withListener(serverSec(), async (l) => {
      const [client, accepted] = await Promise.all([
        connect({ host: HOST, port: l.port, security: { kind: 'cert', cert: pki.clientCert, key: pki.clientKey, ca: pki.ca }, channel: 'urgent', sessionId: newSessionId() }),
        l.accept(),
      ]);
      await client.sendMessage({ type: 'PING', nonce: 7 });
      assert.deepEqual(await accepted.channel.recv(), { type: 'PING', nonce: 7 });
      client.destroy();
      accepted.channel.destroy();
    });
  });

  test('a client certificate from another CA is refused on both sides', async () => {
    await withListener(serverSec(), async (l) => {
      const rejected = nextRejection(l);
      await assert.rejects(
        connect({ host: HOST, port: l.port, security: { kind: 'cert', cert: pki.otherClientCert, key: pki.otherClientKey, ca: pki.ca }, channel: 'bulk', sessionId: newSessionId() }),
        (e: unknown) => e instanceof TransportError && e.code === 'TLS',
      );
      const err = await rejected;
      assert.equal(err.code, 'TLS');
      assert.match(err.message, /certificate/);
    });
  });

  test('a client that does not trust the server CA refuses it', async () => {
    await withListener(serverSec(), async (l) => {
      void nextRejection(l);
      await assert.rejects(
        connect({ host: HOST, port: l.port, security: { kind: 'cert', cert: pki.clientCert, key: pki.clientKey, ca: pki.otherCa }, channel: 'bulk', sessionId: newSessionId() }),
        (e: unknown) => e instanceof TransportError && e.code === 'TLS' && /certificate/.test(e.message),
      );
    });
  });
});

describe('transport: a failing stream settles every write', () => {
  // FAULT-INJECTION FAKE: the stream under the channel is a stand-in whose writes never complete,
  // as a TLS socket's write in flight never did once the peer's alert (a bad record MAC) had
  // errored the socket. The CI run of 0160004 hung on exactly that: a postcopy source waiting for
  // ever on its bulk channel's write.
  const stuckStream = () => {
    const stream = new Duplex({ read() {}, write(_chunk, _enc, _cb) { /* never calls back */ } });
    const tcp = Object.assign(new Duplex({ read() {}, write(_c, _e, cb) { cb(); } }), { bytesWritten: 0, bytesRead: 0 });
    return { stream, tcp: tcp as unknown as net.Socket };
  };

  test('a stream error rejects the write in flight and destroys the socket', async () => {
    const { stream, tcp } = stuckStream();
    const channel = new FramedChannel({ stream, tcp, peer: 'fake:1', tls: true });
    const sending = channel.sendPages(0, 1, 'data', Buffer.alloc(4096, 7));
    stream.emit('error', Object.assign(new Error('sslv3 alert bad record mac'), { code: 'ERR_SSL_SSLV3_ALERT_BAD_RECORD_MAC' }));
    await assert.rejects(sending, (e: unknown) => e instanceof TransportError && /bad record mac/.test(e.message));
    assert.ok(stream.destroyed && tcp.destroyed, 'the stream and the TCP socket are destroyed');
    await assert.rejects(channel.sendMessage({ type: 'PING', nonce: 1 }), TransportError);
  });

  test('a close after a clean end still rejects writes that never completed', async () => {
    const { stream, tcp } = stuckStream();
    const channel = new FramedChannel({ stream, tcp, peer: 'fake:2', tls: true });
    const sending = channel.sendMessage({ type: 'PING', nonce: 2 });
    stream.push(null); // the peer's end of stream
    assert.equal(await channel.recv(), null);
    stream.destroy();
    await assert.rejects(sending, (e: unknown) => e instanceof TransportError && e.code === 'CLOSED');
  });
});
