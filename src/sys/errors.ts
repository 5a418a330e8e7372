// SysError: the error type of every failed syscall/ioctl, with the errno name and the operation.
export class SysError extends Error {
  readonly code: string;
  readonly syscall: string;
  readonly errno: number;
  constructor(message: string, code: string, syscall: string, errno: number) {
    super(message);
    this.name = 'SysError';
    this.code = code;
    this.syscall = syscall;
    this.errno = errno;
  }
}

interface NativeErrorShape {
  message: string;
  code: string;
  syscall: string;
  errno: number;
}

function isNativeError(e: unknown): e is NativeErrorShape {
  return e instanceof Error && typeof (e as Partial<NativeErrorShape>).code === 'string' &&
    typeof (e as Partial<NativeErrorShape>).syscall === 'string';
}

/** Runs a native call, converting the addon's errors into SysError (same message, code, syscall). */
export function sys<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    if (isNativeError(e)) {
      const err = new SysError(e.message, e.code, e.syscall, e.errno);
      if (e instanceof Error && e.stack) err.stack = `SysError: ${e.message}\n` + e.stack.split('\n').slice(1).join('\n');
      throw err;
    }
    throw e;
  }
}

/** Whether a failed non-blocking call only found its buffer full or empty (EAGAIN / EWOULDBLOCK). */
export function isAgain(err: unknown): boolean {
  return typeof err === 'object' && err !== null && 'code' in err && (err.code === 'EAGAIN' || err.code === 'EWOULDBLOCK');
}
