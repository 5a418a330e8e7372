// The control API server: HTTP+JSON on a unix socket (mode 0600), driving a GuestController.
// Every failure becomes a JSON error answer; nothing a client sends can crash the server.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { chmodSync, lstatSync, statSync, unlinkSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { isMainThread } from 'node:worker_threads';
import type { Socket } from 'node:net';
import type { z } from 'zod';
import { clearStaleSocket } from './socket-file.js';
import { describeIssues, migrateRequestSchema, resumeMigrationRequestSchema, snapshotRequestSchema } from './schemas.js';
import { API_ERROR_CODES as E, MAX_BODY_BYTES, type ApiErrorBody, type GuestController } from './types.js';
import { METRICS_CONTENT_TYPE } from './metrics.js';

/** An answer that is not JSON (GET /metrics). */
class TextAnswer {
  constructor(readonly contentType: string, readonly text: string) {}
}

/** An error answer the server itself decides on (bad request, missing capability, ...). */
class HttpError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

type Handler = (body: Buffer) => Promise<unknown>;
type Method = 'GET' | 'PUT' | 'DELETE';

/** How long close() lets in-flight responses finish before dropping their connections. */
const CLOSE_GRACE_MS = 2000;

export class ApiServer {
  private readonly http: Server;
  private readonly routes: Map<string, Partial<Record<Method, Handler>>>;
  private readonly sockets = new Set<Socket>();
  private socketPath: string | null = null;

  constructor(private readonly controller: GuestController) {
    this.routes = this.buildRoutes();
    // handle() answers every error it can; should answering itself throw (a client already gone),
    // the connection is dropped: nothing a client does may end the guest's process.
    this.http = createServer((req, res) => { this.handle(req, res).catch(() => res.destroy()); });
    // A migration answers only when it is over: no request timeout.
    this.http.requestTimeout = 0;
    this.http.timeout = 0;
    this.http.on('connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    // Unparseable HTTP: answer 400 if the socket still takes it, then drop the connection.
    this.http.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
      if (socket.writable && err.code !== 'ECONNRESET') {
        const body = JSON.stringify({ error: { code: 'bad-request', message: 'malformed HTTP request' } });
        socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      }
      socket.destroy();
    });
  }

  /** Listens on socketPath with mode 0600. Clears a stale socket file; refuses a live one. */
  async listen(socketPath: string): Promise<void> {
    if (this.socketPath !== null) throw new Error(`already listening on ${this.socketPath}`);
    if (typeof socketPath !== 'string' || socketPath.length === 0) throw new Error('socket path must be a non-empty string');
    // sun_path holds 108 bytes including the terminating NUL.
    if (Buffer.byteLength(socketPath) > 107) throw new Error(`socket path too long (over 107 bytes): ${socketPath}`);
    let dirOk = false;
    try {
      dirOk = statSync(dirname(resolve(socketPath))).isDirectory();
    } catch {
      // reported below
    }
    if (!dirOk) throw new Error(`cannot create socket ${socketPath}: its directory does not exist`);
    await clearStaleSocket(socketPath);
    // umask makes the socket 0600 from its creation (no window where others may connect);
    // workers cannot set the umask, and there the chmod below does the job alone.
    const oldMask = isMainThread ? process.umask(0o177) : null;
    try {
      await new Promise<void>((resolve, reject) => {
        const onError = (err: Error): void => reject(new Error(`cannot listen on ${socketPath}: ${err.message}`));
        this.http.once('error', onError);
        this.http.listen(socketPath, () => {
          this.http.off('error', onError);
          resolve();
        });
      });
    } finally {
      if (oldMask !== null) process.umask(oldMask);
    }
    chmodSync(socketPath, 0o600);
    this.socketPath = socketPath;
  }

  /** Stops listening, drops open connections (a pending migrate answer is lost) and removes the socket file. */
  async close(): Promise<void> {
    const path = this.socketPath;
    this.socketPath = null;
    if (!this.http.listening) return;
    const closed = new Promise<void>((resolve) => this.http.close(() => resolve()));
    // Let responses in flight finish (e.g. the report of a migration that just completed, whose
    // success is what makes the process close the server), then drop whatever is left.
    this.http.closeIdleConnections();
    const grace = setTimeout(() => {
      for (const s of this.sockets) s.destroy();
    }, CLOSE_GRACE_MS);
    await closed;
    clearTimeout(grace);
    if (path !== null) {
      try {
        if (lstatSync(path).isSocket()) unlinkSync(path);
      } catch {
        // already gone
      }
    }
  }

  private buildRoutes(): Map<string, Partial<Record<Method, Handler>>> {
    const c = this.controller;
    const ok = { ok: true };
    return new Map<string, Partial<Record<Method, Handler>>>([
      ['/guest', { GET: async () => c.info() }],
      ['/guest/pause', { PUT: async () => { await c.pause(); return ok; } }],
      ['/guest/resume', { PUT: async () => { await c.resume(); return ok; } }],
      ['/guest/stop', { PUT: async () => { await c.stop(); return ok; } }],
      ['/guest/migrate', {
        PUT: async (body) => {
          const req = parseBody(body, migrateRequestSchema);
          if (!c.migrate) throw new HttpError(501, E.unsupported, 'this guest host cannot migrate');
          return c.migrate(req);
        },
      }],
      ['/guest/migration', {
        GET: async () => {
          const status = c.migration ? c.migration() : null;
          if (status === null) throw new HttpError(404, E.noMigration, 'no migration');
          return status;
        },
        DELETE: async () => {
          if (!c.cancelMigration) throw new HttpError(404, E.noMigration, 'no migration');
          await c.cancelMigration();
          return ok;
        },
      }],
      ['/guest/migration/resume', {
        PUT: async (body) => {
          const req = parseBody(body ?? {}, resumeMigrationRequestSchema);
          if (!c.resumeMigration) throw new HttpError(404, E.noMigration, 'no migration');
          await c.resumeMigration(req);
          return ok;
        },
      }],
      ['/guest/migration/abandon', {
        PUT: async () => {
          if (!c.abandonMigration) throw new HttpError(404, E.noMigration, 'no migration');
          await c.abandonMigration();
          return ok;
        },
      }],
      ['/metrics', {
        GET: async () => {
          if (!c.metrics) throw new HttpError(501, E.unsupported, 'this guest host has no metrics');
          return new TextAnswer(METRICS_CONTENT_TYPE, await c.metrics());
        },
      }],
      ['/guest/snapshot', {
        PUT: async (body) => {
          const req = parseBody(body, snapshotRequestSchema);
          if (!c.snapshot) throw new HttpError(501, E.unsupported, 'this guest host cannot take snapshots');
          return c.snapshot(req);
        },
      }],
    ]);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const path = (req.url ?? '/').split('?')[0]!.replace(/\/+$/, '') || '/';
      const route = this.routes.get(path);
      if (!route) throw new HttpError(404, E.notFound, `no route ${req.method ?? '?'} ${path}`);
      const handler = route[req.method as Method];
      if (!handler) {
        res.setHeader('Allow', Object.keys(route).join(', '));
        throw new HttpError(405, E.methodNotAllowed, `${req.method ?? '?'} is not allowed on ${path} (allowed: ${Object.keys(route).join(', ')})`);
      }
      const body = await readBody(req);
      // The controller may also throw synchronously; the await inside try catches both.
      const result = await handler(body);
      if (result instanceof TextAnswer) sendText(res, result);
      else send(res, 200, result ?? { ok: true });
    } catch (err) {
      const { status, code, message } = toErrorAnswer(err);
      if (status === 413) res.setHeader('Connection', 'close');
      const answer: ApiErrorBody = { error: { code, message } };
      send(res, status, answer);
      // An oversized body is left unread: close the connection once the answer is out.
      if (status === 413) res.once('finish', () => req.socket.destroy());
    }
  }
}

function parseBody<T extends z.ZodTypeAny>(body: Buffer, schema: T): z.infer<T> {
  if (body.length === 0) throw new HttpError(400, E.invalidBody, 'a JSON body is required');
  let value: unknown;
  try {
    value = JSON.parse(body.toString('utf8'));
  } catch (err) {
    throw new HttpError(400, E.badJson, `body is not valid JSON: ${(err as Error).message}`);
  }
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new HttpError(400, E.invalidBody, describeIssues(parsed.error));
  return parsed.data;
}

/** Reads the whole body, refusing (413) as soon as it is known to exceed MAX_BODY_BYTES. */
function readBody(req: IncomingMessage): Promise<Buffer> {
  const tooLarge = (): HttpError => new HttpError(413, E.bodyTooLarge, `request body exceeds ${MAX_BODY_BYTES} bytes`);
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > MAX_BODY_BYTES) return Promise.reject(tooLarge());
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let failed = false;
    req.on('data', (chunk: Buffer) => {
      if (failed) return;
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        failed = true;
        chunks.length = 0;
        req.pause();
        reject(tooLarge());
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => { if (!failed) resolve(Buffer.concat(chunks)); });
    req.on('error', (err) => { if (!failed) { failed = true; reject(err); } });
  });
}

function toErrorAnswer(err: unknown): { status: number; code: string; message: string } {
  if (err instanceof HttpError) return { status: err.status, code: err.code, message: err.message };
  // ControllerError, or any error from a lower layer that carries an HTTP status and a code.
  if (err instanceof Error) {
    const { status, code } = err as Error & { status?: unknown; code?: unknown };
    if (typeof status === 'number' && Number.isInteger(status) && status >= 400 && status <= 599 && typeof code === 'string') {
      return { status, code, message: err.message };
    }
    return { status: 500, code: E.internal, message: err.message || String(err) };
  }
  return { status: 500, code: E.internal, message: String(err) };
}

function send(res: ServerResponse, status: number, value: unknown): void {
  if (res.headersSent || res.destroyed) return; // the client went away, or an answer is already out
  let text: string;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    status = 500;
    text = JSON.stringify({ error: { code: E.internal, message: `cannot encode the answer: ${(err as Error).message}` } });
  }
  res.writeHead(status, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

function sendText(res: ServerResponse, answer: TextAnswer): void {
  if (res.headersSent || res.destroyed) return;
  res.writeHead(200, { 'Content-Type': answer.contentType, 'Content-Length': Buffer.byteLength(answer.text) });
  res.end(answer.text);
}
