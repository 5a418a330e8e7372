// HOST:PORT as the CLI and the control API spell a migration endpoint ([::1]:PORT for IPv6).
export function parseHostPort(value: string, allowZero = false): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(value) ?? /^([^:[\]]+):(\d+)$/.exec(value);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !Number.isInteger(port) || port < (allowZero ? 0 : 1) || port > 65535) {
    throw new Error(`expected HOST:PORT, got ${JSON.stringify(value)}`);
  }
  return { host: m[1]!, port };
}
