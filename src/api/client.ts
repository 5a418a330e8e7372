// Typed client of the control API over its unix socket. Every failure is an ApiError: server
// answers keep their status and code; transport failures have status 0.
import { request } from 'node:http';
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

  private call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const payload = body === undefined ? null : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = request({
        socketPath: this.socketPath,
        method,
        path,
        agent: false, // one connection per call: nothing lingers to keep the process alive
        headers: payload
          ? { 'Content-Type': 'application/json', 'Content-Length': payload.length }
          : { 'Content-Length': 0 },
      }, (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('error', (err) => reject(new ApiError(0, 'connection', `connection to ${this.socketPath} broke: ${err.message}`)));
        res.on('end', () => {
          const status = res.statusCode ?? 0;
          const text = Buffer.concat(chunks).toString('utf8');
          let value: unknown;
          try {
            value = JSON.parse(text);
          } catch {
            reject(new ApiError(status, 'bad-response', `${method} ${path}: answer ${status} is not JSON: ${text.slice(0, 200)}`));
            return;
          }
          if (status >= 200 && status < 300) {
            resolve(value as T);
            return;
          }
          const e = (value as { error?: { code?: unknown; message?: unknown } } | null)?.error;
          const code = typeof e?.code === 'string' ? e.code : 'http-' + status;
          const message = typeof e?.message === 'string' ? e.message : `${method} ${path} failed with status ${status}`;
          reject(new ApiError(status, code, message));
        });
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new ApiError(0, 'no-guest', `no Ferry guest listening on ${this.socketPath}`));
        } else if (err.code === 'EACCES') {
          reject(new ApiError(0, 'no-guest', `no permission to connect to ${this.socketPath} (the socket is 0600: run as its owner)`));
        } else {
          reject(new ApiError(0, 'connection', `${method} ${path} on ${this.socketPath}: ${err.message}`));
        }
      });
      req.end(payload ?? undefined);
    });
  }
}
