// Standalone measurement (not part of `npm run bench`): the CPU the destination's native precopy
// thread spends while it holds a frame beyond the memory, waiting for the bulk channel's GROW.
// A TypeScript peer sends one PAGES frame past the memory's size; the thread holds it for
// HOLD_MS, then setPageCount() lets it through. The thread is the task that appeared when the
// receiver started; its utime+stime come from /proc/self/task/<tid>/stat (clock ticks).
// Run: node dist/bench/grow-wait-cpu.js [holdMs]
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { PrecopyReceiver } from '../src/migration/dataplane/precopy-plane.js';
import { DataplaneFrame, DataplanePeer } from '../src/migration/dataplane/frames.js';
import { takeSocketFd } from '../src/migration/dataplane/socket-fd.js';
import { DataplaneRole } from '../src/sys/dataplane.js';
import { PAGE, destination, loopbackPair } from '../test/fixtures/dataplane/loopback.js';

const HOLD_MS = Number(process.argv[2] ?? 3000);
const TICK_MS = 10; // USER_HZ = 100 on Linux

const tasks = (): number[] => readdirSync('/proc/self/task').map(Number);
/** utime + stime of a thread of this process, in ms. */
function cpuMs(tid: number): number {
  const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) * TICK_MS; // fields 14 and 15 of stat(5)
}

/** Voluntary context switches of a thread: one per wake-up from a wait. */
function wakeups(tid: number): number {
  const m = /voluntary_ctxt_switches:\s+(\d+)/.exec(readFileSync(`/proc/self/task/${tid}/status`, 'utf8'));
  return Number(m?.[1] ?? NaN);
}

async function main(): Promise<void> {
  const d = destination(4, Array.from({ length: 64 }, (_, p) => p));
  const secret = randomBytes(32);
  const [a, b] = await loopbackPair();
  const before = new Set(tasks());
  const shared = d.states.shared();
  const recv = new PrecopyReceiver({
    sock: takeSocketFd(b), secret, uffd: d.uffd.fd, base: d.mem.base, states: new Uint8Array(shared.states, 0, shared.pageCount),
    stateCounts: new Int32Array(shared.counts, 0, 3), pageCount: 16,
  });
  const thread = tasks().find((t) => !before.has(t));
  if (thread === undefined) throw new Error('the receiver thread was not found among /proc/self/task');
  const peer = await DataplanePeer.open(a, secret, DataplaneRole.CONNECTOR, 'precopy');
  peer.send(DataplaneFrame.PAGES, DataplanePeer.pagesBody(20, Buffer.alloc(PAGE, 0x20)));
  const mark = Buffer.alloc(8);
  peer.send(DataplaneFrame.MARK, mark);
  await new Promise((r) => setTimeout(r, 100)); // the frame arrives and is held
  const cpu0 = cpuMs(thread);
  const w0 = wakeups(thread);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, HOLD_MS));
  const cpu1 = cpuMs(thread);
  const w1 = wakeups(thread);
  const held = performance.now() - t0;
  const g0 = performance.now();
  recv.setPageCount(32);
  await recv.passPlaced(0);
  const released = performance.now() - g0;
  console.log(`held ${held.toFixed(0)} ms: receiver thread (tid ${thread}) used ${cpu1 - cpu0} ms of CPU (${(((cpu1 - cpu0) / held) * 100).toFixed(2)} %), ${w1 - w0} wake-ups; GROW to placed: ${released.toFixed(2)} ms`);
  recv.stop();
  peer.sock.destroy();
  d.release();
}

await main();
