// Transport benchmark: the physical limit of loopback TCP and TLS 1.3 (PSK) measured with large
// raw writes, beside framed page throughput through FramedChannel over the same transports, and the
// speed of the per-page memory digest. The receiving side runs on a worker thread so sender and
// receiver get a core each, as two hosts would.
import net from 'node:net';
import tls from 'node:tls';
import { randomBytes } from 'node:crypto';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';
import type { BenchRow } from './harness.js';
import { connect, listen, newSessionId, PSK_CIPHER, type FramedChannel, type Security } from '../src/migration/transport/index.js';
import { FrameType, RECOMMENDED_RUN_PAGES, PAGE_SIZE } from '../src/migration/wire/index.js';
import { digestMemory } from '../src/migration/verify/digest.js';

export const title = 'transport: loopback TCP/TLS raw vs framed pages; page digest speed';

const TOTAL = Number(process.env['FERRY_BENCH_TRANSPORT_BYTES'] ?? 1024 * 1024 * 1024);
const RAW_WRITE = 4 * 1024 * 1024;
const RUN_BYTES = RECOMMENDED_RUN_PAGES * PAGE_SIZE; // 1 MiB per PAGES frame
const IN_FLIGHT = 4;
const ROUNDS = Number(process.env['FERRY_BENCH_TRANSPORT_ROUNDS'] ?? 3); // staging buffers in rotation: sends kept in flight
const PSK = Buffer.alloc(32, 0x5a); // the benchmark's own key; both ends are this process

type Ports = { rawTcp: number; rawTls: number; framedTcp: number; framedTls: number };
type Done = { kind: 'done'; bytes: number };

// ------------------------------------------------------------------ receiver (worker thread)
async function receiver(): Promise<void> {
  const port = parentPort!;
  const report = (bytes: number) => port.postMessage({ kind: 'done', bytes } satisfies Done);
  const rawSink = (s: net.Socket | tls.TLSSocket) => {
    let n = 0;
    s.on('data', (d: Buffer) => (n += d.length));
    s.on('end', () => {
      report(n);
      s.end();
    });
  };
  const rawTcp = net.createServer(rawSink);
  const rawTls = tls.createServer({ minVersion: 'TLSv1.3', ciphers: PSK_CIPHER, pskCallback: () => PSK }, rawSink);
  await Promise.all([rawTcp, rawTls].map((s) => new Promise<void>((r) => s.listen(0, '127.0.0.1', r))));
  const framed = async (security: Security) => {
    const l = await listen({ host: '127.0.0.1', port: 0, security });
    void (async () => {
      for (;;) {
        const { channel } = await l.accept();
        let n = 0;
        for (;;) {
          const f = await channel.recvFrame();
          if (!f) break;
          if (f.type === FrameType.PAGES) n += f.payload.length - 16; // page bytes only
        }
        report(n);
        channel.destroy();
      }
    })().catch(() => undefined);
    return l.port;
  };
  const ports: Ports = {
    rawTcp: (rawTcp.address() as net.AddressInfo).port,
    rawTls: (rawTls.address() as net.AddressInfo).port,
    framedTcp: await framed({ kind: 'insecure' }),
    framedTls: await framed({ kind: 'psk', key: PSK }),
  };
  port.postMessage({ kind: 'ports', ports });
}

if (!isMainThread && parentPort) void receiver();

// ------------------------------------------------------------------ sender (main thread)
async function sendRaw(sock: net.Socket | tls.TLSSocket): Promise<void> {
  const buf = randomBytes(RAW_WRITE);
  for (let sent = 0; sent < TOTAL; sent += RAW_WRITE) {
    if (!sock.write(buf)) await new Promise((r) => sock.once('drain', r));
  }
  sock.end();
}

async function sendFramed(ch: FramedChannel): Promise<void> {
  const staging = Array.from({ length: IN_FLIGHT }, () => randomBytes(RUN_BYTES));
  const inflight: Promise<void>[] = [];
  let i = 0;
  for (let off = 0; off < TOTAL; off += RUN_BYTES, i++) {
    if (inflight.length === IN_FLIGHT) await inflight.shift();
    // Offsets wrap inside 4 GiB: the receiver here only counts, it does not check geometry.
    inflight.push(ch.sendPages(off % (1 << 30), RECOMMENDED_RUN_PAGES, 'data', staging[i % IN_FLIGHT]!));
  }
  await Promise.all(inflight);
  await ch.close();
}

export async function run(): Promise<BenchRow[]> {
  const worker = new Worker(new URL(import.meta.url));
  const inbox: Array<(m: unknown) => void> = [];
  worker.on('message', (m) => inbox.shift()?.(m));
  const next = () => new Promise<unknown>((r) => inbox.push(r));
  const { ports } = (await next()) as { ports: Ports };
  const mbps = (bytes: number, ms: number) => bytes / 1e6 / (ms / 1000);

  const time = async (start: () => Promise<void>): Promise<{ ms: number; bytes: number }> => {
    const done = next() as Promise<Done>;
    const t0 = performance.now();
    await start();
    const d = await done;
    return { ms: performance.now() - t0, bytes: d.bytes };
  };

  const runRawTcp = () =>
    time(async () => {
      const s = net.connect(ports.rawTcp, '127.0.0.1');
      await new Promise((r) => s.once('connect', r));
      await sendRaw(s);
    });
  const runRawTls = () =>
    time(async () => {
      const s = tls.connect({ port: ports.rawTls, host: '127.0.0.1', minVersion: 'TLSv1.3', ciphers: PSK_CIPHER, checkServerIdentity: () => undefined, pskCallback: () => ({ psk: PSK, identity: 'ferry' }) });
      await new Promise((r) => s.once('secureConnect', r));
      await sendRaw(s);
    });
  let tlsWire = 0;
  const runFramedTcp = () =>
    time(async () => {
      const ch = await connect({ host: '127.0.0.1', port: ports.framedTcp, security: { kind: 'insecure' }, channel: 'bulk', sessionId: newSessionId() });
      await sendFramed(ch);
    });
  const runFramedTls = () =>
    time(async () => {
      const ch = await connect({ host: '127.0.0.1', port: ports.framedTls, security: { kind: 'psk', key: PSK }, channel: 'bulk', sessionId: newSessionId() });
      await sendFramed(ch);
      tlsWire = ch.bytesSent;
    });
  // Shared 2-core machines are noisy: interleave the four transfers and keep each one's best run,
  // so raw and framed figures see the same conditions.
  const best: Record<'rawTcp' | 'rawTls' | 'framedTcp' | 'framedTls', { ms: number; bytes: number }> = {
    rawTcp: { ms: Infinity, bytes: 0 },
    rawTls: { ms: Infinity, bytes: 0 },
    framedTcp: { ms: Infinity, bytes: 0 },
    framedTls: { ms: Infinity, bytes: 0 },
  };
  for (let round = 0; round < ROUNDS; round++) {
    for (const [k, fn] of [['rawTcp', runRawTcp], ['framedTcp', runFramedTcp], ['rawTls', runRawTls], ['framedTls', runFramedTls]] as const) {
      const r = await fn();
      if (r.bytes !== TOTAL) throw new Error(`${k}: receiver got ${r.bytes} payload bytes, expected ${TOTAL}`);
      if (r.ms < best[k].ms) best[k] = r;
    }
  }
  const { rawTcp, rawTls, framedTcp, framedTls } = best;
  await worker.terminate();

  // Digest speed over 256 MiB of non-zero memory; best of three.
  const mem = new Uint8Array(new SharedArrayBuffer(256 * 1024 * 1024));
  for (let o = 0; o < mem.length; o += 65536) mem.set(randomBytes(65536), o);
  let digestMs = Infinity;
  for (let k = 0; k < 3; k++) {
    const t0 = performance.now();
    digestMemory(mem, mem.length / PAGE_SIZE);
    digestMs = Math.min(digestMs, performance.now() - t0);
  }
  const digestGBs = mem.length / 1e9 / (digestMs / 1000);

  const row = (name: string, r: { ms: number }, ref?: { name: string; r: { ms: number } }): BenchRow => {
    const value = mbps(TOTAL, r.ms);
    if (!ref) return { name, metric: 'throughput', value, unit: 'MB/s', extra: { bytes: TOTAL, ms: r.ms } };
    const refValue = mbps(TOTAL, ref.r.ms);
    return { name, metric: 'throughput', value, unit: 'MB/s', reference: { name: ref.name, value: refValue }, target: '>= 0.8x raw', met: value >= 0.8 * refValue, extra: { bytes: TOTAL, ms: r.ms } };
  };
  return [
    row('raw-tcp-4MiB-writes', rawTcp),
    row('raw-tls-psk-4MiB-writes', rawTls),
    row('framed-pages-tcp', framedTcp, { name: 'raw tcp', r: rawTcp }),
    { ...row('framed-pages-tls-psk', framedTls, { name: 'raw tls', r: rawTls }), extra: { bytes: TOTAL, ms: framedTls.ms, wireBytes: tlsWire, overhead: tlsWire / TOTAL - 1 } },
    { name: 'page-digest', metric: 'speed', value: digestGBs, unit: 'GB/s', target: '>= 1.5 GB/s', met: digestGBs >= 1.5 },
  ];
}
