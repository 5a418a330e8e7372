// Key confirmation of the native data plane connection at connect time (dataplane/confirm.ts,
// transport/dataplane-gate.ts): a real listener with TLS-PSK, a real bulk channel with
// NATIVE_FAULTS granted, and data plane connections over loopback — the source's own
// connectDataplane(), and hand-made hostile ones (a wrong key, another session, garbage, a
// confirmation cut short, a fake destination). A refused connection never reaches the handoff.
import { strict as assert } from 'node:assert';
import { once } from 'node:events';
import net from 'node:net';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { connect, listen, newSessionId, TransportError, type FramedChannel, type MigrationListener, type Security } from '../src/migration/transport/index.js';
import { DATAPLANE_CONFIRM_PHASE } from '../src/migration/transport/listen.js';
import { ALL_FEATURES, DATAPLANE_PREFACE, Feature, GO_AHEAD } from '../src/migration/wire/index.js';
import { connectDataplane } from '../src/migration/dataplane/connect.js';
import { dataplaneSecret } from '../src/migration/dataplane/keys.js';
import { ACCEPTANCE_BYTES, CHALLENGE_BYTES, CONFIRMATION_BYTES, confirm } from '../src/migration/dataplane/confirm.js';
import { close, read, write } from '../src/sys/fd.js';

const HOST = '127.0.0.1';
const FEATURES = ALL_FEATURES | Feature.NATIVE_FAULTS;

interface Handed {
  fd: number;
  sessionHex: string;
}

for (const security of [{ kind: 'psk', key: randomBytes(32) }, { kind: 'insecure' }] as Security[]) {
  describe(`data plane key confirmation (${security.kind})`, () => {
    let listener: MigrationListener;
    const handed: Handed[] = [];
    let handedWake: (() => void) | null = null;
    let bulk: FramedChannel;
    let sessionId: Buffer;
    let secret: Buffer;

    before(async () => {
      listener = await listen({
        host: HOST, port: 0, security, handshakeTimeoutMs: 5000, features: FEATURES,
        dataplaneHandoff: (fd, _peer, sessionHex) => {
          handed.push({ fd, sessionHex });
          handedWake?.();
        },
      });
      sessionId = newSessionId();
      [bulk] = await Promise.all([
        connect({ host: HOST, port: listener.port, security, channel: 'bulk', sessionId, features: FEATURES }),
        listener.accept(),
      ]);
      assert.ok((bulk.session!.features & Feature.NATIVE_FAULTS) !== 0, 'the listener granted NATIVE_FAULTS');
      secret = dataplaneSecret(bulk.tlsSocket, sessionId);
    });
    after(async () => {
      bulk.destroy();
      for (const h of handed) close(h.fd);
      await listener.close();
    });

    const nextRejection = () => once(listener, 'rejected').then(([e, phase]) => ({ err: e as TransportError, phase: phase as string }));

    test('the session key passes both ways: the listener hands the connection on, with its session', async () => {
      const before = handed.length;
      const fd = await connectDataplane(HOST, listener.port, { secret, sessionId });
      if (handed.length === before) await new Promise<void>((r) => (handedWake = r));
      assert.equal(handed.length, before + 1);
      assert.equal(handed.at(-1)!.sessionHex, sessionId.toString('hex'));
      close(fd);
    });

    test('a wrong key is refused by the listener, and the source is told', async () => {
      const before = handed.length;
      const refused = nextRejection();
      await assert.rejects(connectDataplane(HOST, listener.port, { secret: randomBytes(32), sessionId }), (e: TransportError) => e.code === 'CLOSED' && /refused/.test(e.message));
      const { err, phase } = await refused;
      assert.equal(phase, DATAPLANE_CONFIRM_PHASE);
      assert.match(err.message, /key confirmation failed/);
      assert.equal(handed.length, before, 'nothing was handed on');
    });

    test('the right key under an unknown session is refused', async () => {
      const refused = nextRejection();
      await assert.rejects(connectDataplane(HOST, listener.port, { secret, sessionId: newSessionId() }));
      assert.match((await refused).err.message, /no bulk channel here with the native fault path/);
    });

    test('garbage after the preface is refused; so is a confirmation cut short', async () => {
      const before = handed.length;
      for (const bytes of [randomBytes(CONFIRMATION_BYTES), randomBytes(CONFIRMATION_BYTES - 7)]) {
        const refused = nextRejection();
        const raw = net.connect(listener.port, HOST);
        raw.on('error', () => undefined);
        await once(raw, 'connect');
        raw.write(Buffer.from([DATAPLANE_PREFACE]));
        const ahead = await readAtLeast(raw, 1 + CHALLENGE_BYTES);
        assert.equal(ahead[0], GO_AHEAD);
        const rest = readToEnd(raw);
        raw.end(bytes);
        const { err, phase } = await refused;
        assert.equal(phase, DATAPLANE_CONFIRM_PHASE);
        assert.match(err.message, bytes.length === CONFIRMATION_BYTES ? /no bulk channel|key confirmation failed/ : /no data plane key confirmation/);
        // The listener closed the connection without a word.
        assert.equal((await rest).length, 0, 'no acceptance was sent');
      }
      assert.equal(handed.length, before);
    });

    test('a replayed confirmation (another connection\'s challenge) is refused', async () => {
      const refused = nextRejection();
      const raw = net.connect(listener.port, HOST);
      raw.on('error', () => undefined);
      await once(raw, 'connect');
      raw.write(Buffer.from([DATAPLANE_PREFACE]));
      await readAtLeast(raw, 1 + CHALLENGE_BYTES);
      // Proven against a challenge of our own, not the one this connection was given.
      raw.write(confirm(secret, sessionId, randomBytes(CHALLENGE_BYTES)).bytes);
      assert.match((await refused).err.message, /key confirmation failed/);
      raw.destroy();
    });
  });
}

test('a destination that does not hold the session key is refused by the source', async () => {
  const server = net.createServer((s) => {
    s.on('error', () => undefined);
    s.once('data', () => {
      s.write(Buffer.concat([Buffer.from([GO_AHEAD]), randomBytes(CHALLENGE_BYTES)]));
      s.once('data', () => s.write(randomBytes(ACCEPTANCE_BYTES)));
    });
  });
  await new Promise<void>((r) => server.listen(0, HOST, r));
  try {
    const port = (server.address() as net.AddressInfo).port;
    await assert.rejects(connectDataplane(HOST, port, { secret: randomBytes(32), sessionId: newSessionId() }), (e: TransportError) => e.code === 'PROTOCOL' && /failed the data plane key confirmation/.test(e.message));
  } finally {
    server.close();
  }
});

test('nothing past the acceptance is read: bytes the source sends next stay for the native thread', async () => {
  let handed!: (fd: number) => void;
  const got = new Promise<number>((r) => (handed = r));
  const listener = await listen({ host: HOST, port: 0, security: { kind: 'insecure' }, handshakeTimeoutMs: 5000, features: FEATURES, dataplaneHandoff: (fd) => handed(fd) });
  const sessionId = newSessionId();
  const [bulk] = await Promise.all([connect({ host: HOST, port: listener.port, security: { kind: 'insecure' }, channel: 'bulk', sessionId, features: FEATURES }), listener.accept()]);
  try {
    const fd = await connectDataplane(HOST, listener.port, { secret: dataplaneSecret(null, sessionId), sessionId });
    const theirs = await got;
    write(fd, Buffer.from('FERRYDP1'));
    const seen = Buffer.alloc(8);
    let n = 0;
    while (n < 8) {
      try {
        n += read(theirs, seen, n, 8 - n);
      } catch {
        await new Promise((r) => setTimeout(r, 5));
      }
    }
    assert.equal(seen.toString(), 'FERRYDP1');
    close(fd);
    close(theirs);
  } finally {
    bulk.destroy();
    await listener.close();
  }
});

async function readAtLeast(s: net.Socket, n: number): Promise<Buffer> {
  let got = Buffer.alloc(0);
  while (got.length < n) {
    const [chunk] = (await once(s, 'data')) as [Buffer];
    got = Buffer.concat([got, chunk]);
  }
  return got;
}

async function readToEnd(s: net.Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  s.on('data', (c: Buffer) => chunks.push(c));
  await once(s, 'close');
  return Buffer.concat(chunks);
}
