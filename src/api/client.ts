// Typed client of the control API over its unix socket. Every failure is an ApiError: server
// answers keep their status and code; transport failures have status 0.
//
// It speaks HTTP/1.1 over node:net itself — one request per connection, `Connection: close`, the
// answer read to the end — rather than through node:http: the client's first request through
// node:http costs ~20 ms of set-up, a fifth of Node's own start, and every control command pays
// it (issue 17: those commands start in ≤ 1.5× `node -e ''`). The server is node:http's
// (server.ts); this side parses what it sends: a status line, headers, and a body framed by
// Content-Length, chunked transfer coding, or the connection's end.
import { connect } from 'node:net';
import type { GuestInfo, MigrateRequest, MigrationStatus, SnapshotRequest, ResumeMigrationRequest } from './types.js';

export class ApiError extends Error {
  /** HTTP status of the answer, or 0 when no answer came (no server, broken connection). */
  readonly status: number;
  /** The server's error code, or a client-side one: 'no-guest', 'connection', 'bad-response'. */
  readonly code: string;

  constructor(status: number, code: string, message: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

export class ApiClient {
  constructor(readonly socketPath: string) {
    if (typeof socketPath !== 'string' || socketPath.length === 0) throw new Error('socket path must be a non-empty string');
  }

  info(): Promise<GuestInfo> {
    return this.call<GuestInfo>('GET', '/guest');
  }

  async pause(): Promise<void> {
    await this.call('PUT', '/guest/pause');
  }

  async resume(): Promise<void> {
    await this.call('PUT', '/guest/resume');
  }

  async stop(): Promise<void> {
    await this.call('PUT', '/guest/stop');
  }

  /** Resolves with the final report once the migration is over (this may take long). */
  migrate(req: MigrateRequest): Promise<Record<string, unknown>> {
    return this.call<Record<string, unknown>>('PUT', '/guest/migrate', req);
  }

  /** The current migration's progress, or null when there is none. */
  async migration(): Promise<MigrationStatus | null> {
    try {
      return await this.call<MigrationStatus>('GET', '/guest/migration');
    } catch (err) {
      if (err instanceof ApiError && err.status === 404 && err.code === 'no-migration') return null;
      throw err;
    }
  }

  async cancelMigration(): Promise<void> {
    await this.call('DELETE', '/guest/migration');
  }

  async resumeMigration(req: ResumeMigrationRequest = {}): Promise<void> {
    await this.call('PUT', '/guest/migration/resume', req);
  }

  async abandonMigration(): Promise<void> {
    await this.call('PUT', '/guest/migration/abandon', {});
  }

  snapshot(req: SnapshotRequest): Promise<Record<string, unknown>> {
    return this.call<Record<string, unknown>>('PUT', '/guest/snapshot', req);
  }

  /** The metrics in Prometheus text format (GET /metrics). */
  async metrics(): Promise<string> {
    const { status, text } = await this.exchange('GET', '/metrics', null);
    if (status !== 200) throw this.answerError('GET', '/metrics', status, text);
    return text;
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    const { status, text } = await this.exchange(method, path, payload);
    if (status >= 200 && status < 300) {
      try {
        return JSON.parse(text) as T;
      } catch {
        throw new ApiError(status, 'bad-response', `${method} ${path}: answer ${status} is not JSON: ${text.slice(0, 200)}`);
      }
    }
    throw this.answerError(method, path, status, text);
  }

  private answerError(method: string, path: string, status: number, text: string): ApiError {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return new ApiError(status, 'bad-response', `${method} ${path}: answer ${status} is not JSON: ${text.slice(0, 200)}`);
    }
    const e = (value as { error?: { code?: unknown; message?: unknown } } | null)?.error;
    const code = typeof e?.code === 'string' ? e.code : 'http-' + status;
    const message = typeof e?.message === 'string' ? e.message : `${method} ${path} failed with status ${status}`;
    return new ApiError(status, code, message);
  }

  /** One request on a connection of its own; resolves with the answer's status and body. */
  private exchange(method: string, path: string, payload: Buffer | null): Promise<{ status: number; text: string }> {
    return new Promise((resolve, reject) => {
      const head =
        `${method} ${path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n` +
        (payload ? 'Content-Type: application/json\r\n' : '') +
        `Content-Length: ${payload ? payload.length : 0}\r\n\r\n`;
      const sock = connect(this.socketPath);
      const chunks: Buffer[] = [];
      let connected = false;
      let settled = false;
      const fail = (err: ApiError): void => {
        if (settled) return;
        settled = true;
        sock.destroy();
        reject(err);
      };
      sock.on('connect', () => {
        connected = true;
        sock.write(payload ? Buffer.concat([Buffer.from(head, 'latin1'), payload]) : head);
      });
      sock.on('data', (c: Buffer) => {
        chunks.push(c);
        // A framed answer is complete before the server closes: settle at once.
        const answer = parseAnswer(Buffer.concat(chunks), false);
        if (answer && !settled) {
          settled = true;
          sock.destroy();
          resolve(answer);
        }
      });
      sock.on('end', () => {
        if (settled) return;
        const answer = parseAnswer(Buffer.concat(chunks), true);
        if (answer) {
          settled = true;
          resolve(answer);
        } else if (chunks.length === 0) {
          fail(new ApiError(0, 'connection', `connection to ${this.socketPath} broke: closed before an answer`));
        } else {
          fail(new ApiError(0, 'bad-response', `${method} ${path}: malformed HTTP answer: ${Buffer.concat(chunks).toString('latin1').slice(0, 200)}`));
        }
      });
      sock.on('close', () => fail(new ApiError(0, 'connection', `connection to ${this.socketPath} broke: closed before an answer`)));
      sock.on('error', (err: NodeJS.ErrnoException) => {
        if (!connected && (err.code === 'ENOENT' || err.code === 'ECONNREFUSED')) {
          fail(new ApiError(0, 'no-guest', `no Ferry guest listening on ${this.socketPath}`));
        } else if (!connected && err.code === 'EACCES') {
          fail(new ApiError(0, 'no-guest', `no permission to connect to ${this.socketPath} (the socket is 0600: run as its owner)`));
        } else if (connected) {
          fail(new ApiError(0, 'connection', `connection to ${this.socketPath} broke: ${err.message}`));
        } else {
          fail(new ApiError(0, 'connection', `${method} ${path} on ${this.socketPath}: ${err.message}`));
        }
      });
    });
  }
}

/**
 * Parses an HTTP/1.1 answer: null while it is incomplete (or, at the end of the stream, malformed).
 * Informational (1xx) answers are skipped.
 */
function parseAnswer(buf: Buffer, atEnd: boolean): { status: number; text: string } | null {
  let at = 0;
  for (;;) {
    const headEnd = buf.indexOf('\r\n\r\n', at, 'latin1');
    if (headEnd < 0) return null;
    const lines = buf.toString('latin1', at, headEnd).split('\r\n');
    const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0] ?? '');
    if (!m) return null;
    const status = Number(m[1]);
    const headers = new Map<string, string>();
    for (const line of lines.slice(1)) {
      const i = line.indexOf(':');
      if (i > 0) headers.set(line.slice(0, i).trim().toLowerCase(), line.slice(i + 1).trim());
    }
    const bodyStart = headEnd + 4;
    if (status >= 100 && status < 200) {
      at = bodyStart;
      continue;
    }
    if (/chunked/i.test(headers.get('transfer-encoding') ?? '')) return parseChunked(buf, bodyStart, status);
    const length = headers.get('content-length');
    if (length !== undefined) {
      const n = Number(length);
      if (!Number.isInteger(n) || n < 0) return null;
      return buf.length - bodyStart >= n ? { status, text: buf.toString('utf8', bodyStart, bodyStart + n) } : null;
    }
    return atEnd ? { status, text: buf.toString('utf8', bodyStart) } : null;
  }
}

function parseChunked(buf: Buffer, from: number, status: number): { status: number; text: string } | null {
  const parts: Buffer[] = [];
  let at = from;
  for (;;) {
    const lineEnd = buf.indexOf('\r\n', at, 'latin1');
    if (lineEnd < 0) return null;
    const size = parseInt(buf.toString('latin1', at, lineEnd).split(';')[0]!.trim(), 16);
    if (!Number.isFinite(size) || size < 0) return null;
    at = lineEnd + 2;
    if (size === 0) return { status, text: Buffer.concat(parts).toString('utf8') };
    if (buf.length < at + size + 2) return null;
    parts.push(buf.subarray(at, at + size));
    at += size + 2;
  }
}
