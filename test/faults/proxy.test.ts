// The fault proxy itself, against a plain TCP sink: each fault lands exactly where it was asked
// (byte offsets are exact), and it reports what it did.
import { strict as assert } from 'node:assert';
import { createServer, connect, type AddressInfo, type Server, type Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { FaultProxy } from './proxy.js';

/** A TCP server that keeps what each connection sent and answers "ok" once per chunk. */
class Sink {
  readonly received: Buffer[][] = [];
  readonly ended: boolean[] = [];
  private constructor(readonly server: Server) {}
  static async start(): Promise<Sink> {
    const server = createServer();
    const sink = new Sink(server);
    server.on('connection', (s) => {
      const i = sink.received.length;
      sink.received.push([]);
      sink.ended.push(false);
      s.on('data', (d: Buffer) => sink.received[i]!.push(d));
      s.on('close', () => (sink.ended[i] = true));
      s.on('error', () => undefined);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    return sink;
  }
  get port(): number {
    return (this.server.address() as AddressInfo).port;
  }
  bytes(i: number): Buffer {
    return Buffer.concat(this.received[i] ?? []);
  }
}

async function open(port: number): Promise<Socket> {
  const s = connect(port, '127.0.0.1');
  s.on('error', () => undefined);
  await new Promise<void>((r) => s.once('connect', () => r()));
  return s;
}

const until = async (what: string, cond: () => boolean) => {
  const end = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
};

const pattern = (n: number) => Buffer.from(Array.from({ length: n }, (_, i) => i & 0xff));

describe('FaultProxy', () => {
  let sink: Sink;
  before(async () => {
    sink = await Sink.start();
  });
  after(() => sink.server.close());

  test('forwards untouched without faults, and names connections bulk then urgent', async () => {
    const proxy = await FaultProxy.start('127.0.0.1', sink.port);
    const before = sink.received.length;
    const a = await open(proxy.port);
    await until('the first connection', () => sink.received.length === before + 1);
    const b = await open(proxy.port);
    a.write(pattern(100_000));
    await until('all bytes', () => sink.bytes(before).length === 100_000);
    assert.deepEqual(sink.bytes(before), pattern(100_000));
    assert.deepEqual(proxy.channels(), ['bulk', 'urgent']);
    a.destroy();
    b.destroy();
    await proxy.close();
  });

  test('cut at a byte offset: exactly that many bytes arrive, then both sides close', async () => {
    const proxy = await FaultProxy.start('127.0.0.1', sink.port);
    proxy.inject({ kind: 'cut', connection: 0, direction: 'to-destination', at: { atByte: 12_345 } });
    const i = sink.received.length;
    const s = await open(proxy.port);
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.write(pattern(50_000));
    await closed;
    await until('the sink side to close', () => sink.ended[i] === true);
    assert.deepEqual(sink.bytes(i), pattern(12_345));
    const [rec] = proxy.injections();
    assert.equal(rec?.kind, 'cut');
    assert.equal(rec?.atByte, 12_345);
    await proxy.close();
  });

  test('corrupt flips exactly one byte at the offset', async () => {
    const proxy = await FaultProxy.start('127.0.0.1', sink.port);
    proxy.inject({ kind: 'corrupt', connection: 'bulk', direction: 'to-destination', at: { atByte: 7_777 }, xor: 0x0f });
    const i = sink.received.length;
    const s = await open(proxy.port);
    s.write(pattern(20_000));
    await until('all bytes', () => sink.bytes(i).length === 20_000);
    const want = pattern(20_000);
    want[7_777] = want[7_777]! ^ 0x0f;
    assert.deepEqual(sink.bytes(i), want);
    assert.equal(proxy.describe().length, 1);
    s.destroy();
    await proxy.close();
  });

  test('stall holds bytes back for its duration, then forwards them all in order', async () => {
    const proxy = await FaultProxy.start('127.0.0.1', sink.port);
    proxy.inject({ kind: 'stall', connection: 0, direction: 'to-destination', at: { atByte: 1000 }, stallMs: 3000 });
    const i = sink.received.length;
    const s = await open(proxy.port);
    s.write(pattern(5000));
    await until('the bytes before the stall', () => sink.bytes(i).length === 1000);
    await new Promise((r) => setTimeout(r, 50)); // far inside the 3 s stall
    assert.equal(sink.bytes(i).length, 1000, 'nothing passes during the stall');
    await until('the rest after the stall', () => sink.bytes(i).length === 5000);
    assert.deepEqual(sink.bytes(i), pattern(5000));
    s.destroy();
    await proxy.close();
  });

  test('a time trigger fires on an idle connection; delay still delivers everything', async () => {
    const proxy = await FaultProxy.start('127.0.0.1', sink.port);
    proxy.inject({ kind: 'delay', connection: 0, direction: 'to-destination', delayMs: 5 });
    proxy.inject({ kind: 'cut', connection: 0, direction: 'to-source', at: { afterMs: 200 } });
    const i = sink.received.length;
    const s = await open(proxy.port);
    const closed = new Promise<void>((r) => s.once('close', () => r()));
    s.write(pattern(3000));
    await until('delayed bytes', () => sink.bytes(i).length === 3000);
    await closed;
    assert.deepEqual(proxy.injections().map((r) => r.kind), ['delay', 'cut']);
    await proxy.close();
  });

  test('bad fault specs are refused', async () => {
    const proxy = await FaultProxy.start('127.0.0.1', sink.port);
    assert.throws(() => proxy.inject({ kind: 'delay', connection: 0, direction: 'to-source' }), /delayMs/);
    assert.throws(() => proxy.inject({ kind: 'stall', connection: 0, direction: 'to-source', stallMs: 0 }), /stallMs/);
    assert.throws(() => proxy.inject({ kind: 'cut', connection: 0, direction: 'to-source', at: { atByte: -1 } }), /atByte/);
    await assert.rejects(FaultProxy.start('127.0.0.1', 0), /bad target port/);
    await proxy.close();
  });
});
