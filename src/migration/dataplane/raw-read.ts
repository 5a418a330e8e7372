// Reading an exact number of bytes from a raw, non-blocking socket descriptor that Node does not
// own (a data plane connection before its native thread starts), without blocking the event loop:
// a libuv poll watcher wakes the read. Nothing past `n` is read, so the bytes that follow stay in
// the kernel for whoever reads next (the native thread).
import { FdWatcher, POLLIN, read } from '../../sys/fd.js';
import { SysError } from '../../sys/errors.js';

export class RawReadError extends Error {
  constructor(
    readonly reason: 'closed' | 'timeout' | 'io',
    message: string,
  ) {
    super(message);
  }
}

export function readExactly(fd: number, n: number, timeoutMs: number): Promise<Buffer> {
  const buf = Buffer.alloc(n);
  let got = 0;
  return new Promise<Buffer>((resolve, reject) => {
    let watcher: FdWatcher | null = null;
    const finish = (err: RawReadError | null) => {
      clearTimeout(timer);
      watcher?.stop();
      watcher = null;
      if (err) reject(err);
      else resolve(buf);
    };
    const timer = setTimeout(() => finish(new RawReadError('timeout', `${got} of ${n} bytes within ${timeoutMs} ms`)), timeoutMs);
    const pull = () => {
      try {
        while (got < n) {
          const k = read(fd, buf, got, n - got);
          if (k === 0) return finish(new RawReadError('closed', `the connection ended after ${got} of ${n} bytes`));
          got += k;
        }
        finish(null);
      } catch (err) {
        if (err instanceof SysError && err.code === 'EAGAIN') return; // wait for the next wake-up
        finish(new RawReadError('io', (err as Error).message));
      }
    };
    watcher = new FdWatcher(fd, POLLIN, pull);
  });
}
