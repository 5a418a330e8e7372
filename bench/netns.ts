// A bandwidth-limited link for the migration benchmark: a veth pair between two network
// namespaces (ferry-bench-src, ferry-bench-dst), each end's egress limited by `tc` tbf, so both
// directions see the same rate. Processes run inside with `ip netns exec NS ...` (the command
// prefix below); unix sockets are paths in the shared filesystem, so a `ferry migrate` in the root
// namespace still reaches the source's API socket. Needs root, `ip` and `tc`.
import { execFileSync, spawn } from 'node:child_process';

export const NS_SRC = 'ferry-bench-src';
export const NS_DST = 'ferry-bench-dst';
export const SRC_ADDR = '10.213.7.1';
export const DST_ADDR = '10.213.7.2';
const VETH_SRC = 'fbench-src';
const VETH_DST = 'fbench-dst';

export interface LimitedLink {
  rateBitsPerSec: number;
  /** The tc qdisc line as set on each end. */
  qdisc: string;
  srcPrefix: string[];
  dstPrefix: string[];
}

function run(cmd: string, args: string[]): string {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`${cmd} ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

/** Removes the namespaces and the veth pair, also what a crashed earlier run left; never throws. */
export function teardownLink(): void {
  const existing = (() => {
    try {
      return run('ip', ['netns', 'list']);
    } catch {
      return '';
    }
  })();
  for (const ns of [NS_SRC, NS_DST]) {
    if (new RegExp(`^${ns}\\b`, 'm').test(existing)) {
      try {
        run('ip', ['netns', 'del', ns]); // deleting a namespace deletes the veth end in it, and its peer
      } catch {
        /* already gone */
      }
    }
  }
  // A run that crashed between creating the pair and moving it leaves it in the root namespace.
  try {
    run('ip', ['link', 'del', VETH_SRC]);
  } catch {
    /* not there */
  }
}

/** Creates the two namespaces joined by a veth pair, each end limited to `rateMbit` Mbit/s. */
export function setupLink(rateMbit: number): LimitedLink {
  teardownLink();
  try {
    run('ip', ['netns', 'add', NS_SRC]);
    run('ip', ['netns', 'add', NS_DST]);
    run('ip', ['link', 'add', VETH_SRC, 'type', 'veth', 'peer', 'name', VETH_DST]);
    run('ip', ['link', 'set', VETH_SRC, 'netns', NS_SRC]);
    run('ip', ['link', 'set', VETH_DST, 'netns', NS_DST]);
    // tbf: the rate, a 256 KiB bucket (several 64 KiB GSO segments), at most 10 ms of queue.
    const qdisc = ['tbf', 'rate', `${rateMbit}mbit`, 'burst', '256kb', 'latency', '10ms'];
    for (const [ns, dev, addr] of [
      [NS_SRC, VETH_SRC, SRC_ADDR],
      [NS_DST, VETH_DST, DST_ADDR],
    ] as const) {
      run('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      run('ip', ['-n', ns, 'addr', 'add', `${addr}/24`, 'dev', dev]);
      run('ip', ['-n', ns, 'link', 'set', dev, 'up']);
      run('tc', ['-n', ns, 'qdisc', 'add', 'dev', dev, 'root', ...qdisc]);
    }
    return {
      rateBitsPerSec: rateMbit * 1e6,
      qdisc: run('tc', ['-n', NS_SRC, 'qdisc', 'show', 'dev', VETH_SRC]).trim(),
      srcPrefix: ['ip', 'netns', 'exec', NS_SRC],
      dstPrefix: ['ip', 'netns', 'exec', NS_DST],
    };
  } catch (err) {
    teardownLink();
    throw err;
  }
}

// Raw TCP copy through the link: a receiver in the destination namespace counts the bytes and
// answers their count when the sender ends; the sender, in the source namespace, times from
// connect to that answer.
const RECEIVER = `
const net = require('node:net');
const srv = net.createServer((c) => { let n = 0; c.on('data', (d) => (n += d.length)); c.on('end', () => c.end(String(n))); });
srv.listen(0, process.argv[1], () => console.log('PORT ' + srv.address().port));
`;
const SENDER = `
const net = require('node:net');
const [host, port, bytes] = [process.argv[1], Number(process.argv[2]), Number(process.argv[3])];
const chunk = Buffer.alloc(4 << 20, 0x33);
const t0 = performance.now();
let reply = '';
const s = net.connect(port, host, async () => {
  for (let sent = 0; sent < bytes; sent += chunk.length) if (!s.write(chunk)) await new Promise((r) => s.once('drain', r));
  s.end();
});
s.on('data', (d) => (reply += d));
s.on('end', () => console.log(JSON.stringify({ bytes: Number(reply), ms: performance.now() - t0 })));
`;

/** MB/s of a raw TCP copy of `bytes` from the source namespace to the destination's address. */
export async function rawTcpRate(link: LimitedLink, bytes: number): Promise<{ mbps: number; bytes: number; ms: number }> {
  const rx = spawn(link.dstPrefix[0]!, [...link.dstPrefix.slice(1), process.execPath, '-e', RECEIVER, DST_ADDR], { stdio: ['ignore', 'pipe', 'pipe'] });
  try {
    let out = '';
    let errText = '';
    rx.stderr.setEncoding('utf8').on('data', (d: string) => (errText += d));
    const port = await new Promise<number>((resolve, reject) => {
      rx.stdout.setEncoding('utf8').on('data', (d: string) => {
        out += d;
        const m = /PORT (\d+)/.exec(out);
        if (m) resolve(Number(m[1]));
      });
      rx.on('exit', (code) => reject(new Error(`raw TCP receiver exited ${code}: ${errText}`)));
    });
    const res = run(link.srcPrefix[0]!, [...link.srcPrefix.slice(1), process.execPath, '-e', SENDER, DST_ADDR, String(port), String(bytes)]);
    const { bytes: got, ms } = JSON.parse(res.trim()) as { bytes: number; ms: number };
    return { mbps: got / 1e6 / (ms / 1000), bytes: got, ms };
  } finally {
    rx.kill('SIGKILL');
  }
}
