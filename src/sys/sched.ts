// Scheduling of the calling thread. The threads on a postcopy fault's path (the destination's
// fault handler, the source's urgent channel) sleep almost always and must run the moment they
// wake: on a machine whose cores are busy with the bulk stream, a woken thread of normal priority
// waits for the running one's time slice to end, which is milliseconds.
import os from 'node:os';
import { native } from './native.js';
import { sys } from './errors.js';

/** SCHED_FIFO at `priority` (1..99) for the calling thread; throws SysError (EPERM without the right). */
export function setThreadFifo(priority: number): void {
  sys(() => native.schedSetThread(1, priority));
}

/** SCHED_OTHER at `nice` (-20..19) for the calling thread. */
export function setThreadNice(nice: number): void {
  sys(() => native.schedSetThread(0, nice));
}

/**
 * Whether threads on a latency-critical path may raise their priority: not with FERRY_REALTIME=0
 * (hosts where raised priorities are unwelcome). preferLatency() asks it, and so does every native
 * thread's `raisePriority` option (src/sys/dataplane.ts).
 */
export function raisedPriorityWanted(): boolean {
  return process.env['FERRY_REALTIME'] !== '0';
}

/**
 * Makes the calling thread preempt normal threads when it wakes: real-time FIFO where allowed,
 * else the highest nice value allowed. Returns what it got. Never throws: a thread that keeps
 * normal priority still works, only later.
 */
export function preferLatency(): 'fifo' | 'nice' | 'normal' {
  if (!raisedPriorityWanted()) return 'normal';
  try {
    setThreadFifo(1);
    return 'fifo';
  } catch {
    /* no real-time scheduling here (a container without the right): try nice */
  }
  try {
    setThreadNice(-10);
    return 'nice';
  } catch {
    return 'normal';
  }
}

/**
 * The calling thread raised as preferLatency() does for a stretch of critical work (a switchover's
 * downtime): raise() once however often it is called, end() back to normal scheduling at the nice
 * value it had (any number of times, raised or not). Nothing happens where real-time scheduling
 * is refused or turned off.
 */
export class DowntimePriority {
  /** The nice value to go back to, while raised. */
  private niceBefore: number | null = null;
  private tried = false;

  /** What the thread got (as preferLatency()); 'normal' also when already raised. */
  raise(): 'fifo' | 'nice' | 'normal' {
    if (this.tried) return 'normal';
    this.tried = true;
    const nice = os.getPriority();
    const got = preferLatency();
    if (got !== 'normal') this.niceBefore = nice;
    return got;
  }

  end(): void {
    this.tried = false;
    if (this.niceBefore === null) return;
    try {
      setThreadNice(this.niceBefore);
    } catch {
      /* stays raised: it works, only ahead of others */
    }
    this.niceBefore = null;
  }
}
