// WASI preview1 errno values and the mapping from Node's system error codes.

/** The preview1 errno names in witx order: the index is the value. */
const NAMES = [
  'SUCCESS', '2BIG', 'ACCES', 'ADDRINUSE', 'ADDRNOTAVAIL', 'AFNOSUPPORT', 'AGAIN', 'ALREADY', 'BADF', 'BADMSG',
  'BUSY', 'CANCELED', 'CHILD', 'CONNABORTED', 'CONNREFUSED', 'CONNRESET', 'DEADLK', 'DESTADDRREQ', 'DOM', 'DQUOT',
  'EXIST', 'FAULT', 'FBIG', 'HOSTUNREACH', 'IDRM', 'ILSEQ', 'INPROGRESS', 'INTR', 'INVAL', 'IO',
  'ISCONN', 'ISDIR', 'LOOP', 'MFILE', 'MLINK', 'MSGSIZE', 'MULTIHOP', 'NAMETOOLONG', 'NETDOWN', 'NETRESET',
  'NETUNREACH', 'NFILE', 'NOBUFS', 'NODEV', 'NOENT', 'NOEXEC', 'NOLCK', 'NOLINK', 'NOMEM', 'NOMSG',
  'NOPROTOOPT', 'NOSPC', 'NOSYS', 'NOTCONN', 'NOTDIR', 'NOTEMPTY', 'NOTRECOVERABLE', 'NOTSOCK', 'NOTSUP', 'NOTTY',
  'NXIO', 'OVERFLOW', 'OWNERDEAD', 'PERM', 'PIPE', 'PROTO', 'PROTONOSUPPORT', 'PROTOTYPE', 'RANGE', 'ROFS',
  'SPIPE', 'SRCH', 'STALE', 'TIMEDOUT', 'TXTBSY', 'XDEV', 'NOTCAPABLE',
] as const;

export type ErrnoName = (typeof NAMES)[number];

export const ERRNO: Readonly<Record<ErrnoName, number>> = Object.freeze(
  Object.fromEntries(NAMES.map((n, i) => [n, i])) as Record<ErrnoName, number>,
);

/** Node error code ("ENOENT") → preview1 errno; aliases Linux has for the same value included. */
const FROM_NODE_CODE: ReadonlyMap<string, number> = new Map<string, number>([
  ...NAMES.slice(1).map((n, i): [string, number] => [`E${n}`, i + 1]),
  ['EWOULDBLOCK', ERRNO.AGAIN],
  ['EOPNOTSUPP', ERRNO.NOTSUP],
  ['EDEADLOCK', ERRNO.DEADLK],
]);

/** An error carrying a preview1 errno, thrown inside host functions and turned into their return value. */
export class WasiErrno extends Error {
  constructor(readonly errno: number, message?: string) {
    super(message ?? `WASI errno ${NAMES[errno] ?? errno}`);
    this.name = 'WasiErrno';
  }
}

/**
 * The errno for an error thrown while serving a host call, or undefined if it is not an error a guest
 * should see (a bug in Ferry: let it propagate so it is not silently hidden).
 */
export function errnoOf(err: unknown): number | undefined {
  if (err instanceof WasiErrno) return err.errno;
  // Out-of-bounds views of guest memory: the guest passed a bad pointer.
  if (err instanceof RangeError) return ERRNO.FAULT;
  if (typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string') {
    const mapped = FROM_NODE_CODE.get(err.code);
    if (mapped !== undefined) return mapped;
    if ('syscall' in err) return ERRNO.IO; // a system error we have no name for
  }
  return undefined;
}
