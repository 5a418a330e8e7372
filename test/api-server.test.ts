// The control API over a real unix socket, driven by a fake controller: what is tested here is
// the HTTP layer (routes, validation, error answers, socket file handling), not a guest.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { connect } from 'node:net';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApiServer } from '../src/api/server.js';
import { ApiClient, ApiError } from '../src/api/client.js';
import {
  ControllerError, MAX_BODY_BYTES,
  type GuestController, type GuestInfo, type GuestRunState, type MigrateRequest, type MigrationStatus, type SnapshotRequest,
} from '../src/api/types.js';

class FakeController implements GuestController {
  state: GuestRunState = 'running';
  calls: string[] = [];
  migrateRequests: MigrateRequest[] = [];
  snapshotRequests: SnapshotRequest[] = [];
  current: MigrationStatus | null = null;
  private finishMigration: ((report: Record<string, unknown>) => void) | null = null;
  migrateStarted: Promise<void>;
  private signalStarted: () => void = () => {};

  constructor() {
    this.migrateStarted = new Promise((r) => { this.signalStarted = r; });
  }

  info(): GuestInfo {
    return {
      state: this.state, module: { path: '/m/memtouch.wasm', hash: 'ab'.repeat(32) },
      memoryBytes: 65536 * 4, maxMemoryBytes: 2 ** 32, uptimeMs: 1234, exitCode: this.state === 'exited' ? 0 : null, pid: process.pid,
    };
  }

  async pause(): Promise<void> {
    this.calls.push('pause');
    if (this.state === 'exited') throw new ControllerError(409, 'guest-ended', 'cannot pause: the guest has exited');
    this.state = 'paused';
  }

  async resume(): Promise<void> {
    this.calls.push('resume');
    if (this.state !== 'paused') throw new ControllerError(409, 'not-paused', `the guest is ${this.state}, not paused`);
    this.state = 'running';
  }

  async stop(): Promise<void> {
    this.calls.push('stop');
    throw new Error('worker vanished'); // a plain error: must become a 500
  }

  migrate(req: MigrateRequest): Promise<Record<string, unknown>> {
    this.migrateRequests.push(req);
    if (req.to === 'sync-throw:1') throw new ControllerError(409, 'busy', 'thrown before any promise');
    this.current = { role: 'source', state: 'precopy', pass: 1 };
    this.state = 'migrating';
    this.signalStarted();
    return new Promise((resolve) => { this.finishMigration = resolve; });
  }

  migration(): MigrationStatus | null {
    return this.current;
  }

  async cancelMigration(): Promise<void> {
    if (this.current === null) throw new ControllerError(404, 'no-migration', 'no migration in progress');
    this.current = null;
    this.state = 'running';
    this.finishMigration?.({ outcome: 'cancelled' });
  }

  complete(report: Record<string, unknown>): void {
    this.current = null;
    this.state = 'stopped';
    this.finishMigration?.(report);
  }

  async snapshot(req: SnapshotRequest): Promise<Record<string, unknown>> {
    this.snapshotRequests.push(req);
    return { path: req.to, bytes: 4096 };
  }
}

/** A minimal controller without the optional capabilities. */
const bareController: GuestController = {
  info: () => ({ state: 'running', module: { path: null, hash: '00' }, memoryBytes: 0, maxMemoryBytes: 0, uptimeMs: 0, exitCode: null, pid: 1 }),
  pause: async () => {}, resume: async () => {}, stop: async () => {},
};

interface RawAnswer { status: number; headers: Record<string, string | string[] | undefined>; body: string }

/** Sends exactly what the test says, bypassing ApiClient's own encoding. */
function raw(socketPath: string, method: string, path: string, body?: string | Buffer, headers: Record<string, string | number> = {}): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method, path, agent: false, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (c: string) => { text += c; }).on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

function errorOf(a: RawAnswer): { code: string; message: string } {
  const parsed = JSON.parse(a.body) as { error: { code: string; message: string } };
  assert.equal(typeof parsed.error.code, 'string');
  assert.equal(typeof parsed.error.message, 'string');
  return parsed.error;
}

async function rejectsWith(p: Promise<unknown>, status: number, code: string, message?: RegExp): Promise<ApiError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof ApiError, `expected ApiError, got ${String(err)}`);
    assert.equal(err.status, status, err.message);
    assert.equal(err.code, code, err.message);
    if (message) assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected ${status} ${code}`);
}

async function withServer(controller: GuestController, fn: (path: string, server: ApiServer) => Promise<void>): Promise<void> {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-api-'));
  const path = join(dir, 'guest.sock');
  const server = new ApiServer(controller);
  await server.listen(path);
  try {
    await fn(path, server);
  } finally {
    await server.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

test('info, pause, resume and stop reach the controller; controller errors keep their status and code', async () => {
  const c = new FakeController();
  await withServer(c, async (path) => {
    const api = new ApiClient(path);
    const info = await api.info();
    assert.deepEqual(info, c.info());
    await api.pause();
    assert.equal((await api.info()).state, 'paused');
    await api.resume();
    assert.equal((await api.info()).state, 'running');
    await rejectsWith(api.resume(), 409, 'not-paused', /not paused/);
    c.state = 'exited';
    await rejectsWith(api.pause(), 409, 'guest-ended', /has exited/);
    await rejectsWith(api.stop(), 500, 'internal', /worker vanished/);
    assert.deepEqual(c.calls, ['pause', 'resume', 'resume', 'pause', 'stop']);
  });
});

test('migrate answers when the migration is over, with progress and cancel in between', async () => {
  const c = new FakeController();
  await withServer(c, async (path) => {
    const api = new ApiClient(path);
    assert.equal(await api.migration(), null);
    const req: MigrateRequest = {
      to: 'dest.example:7070', mode: 'postcopy', maxBandwidth: 1e8, downtimeTargetMs: 50, precopyTimeoutS: 30, verify: true,
      tls: { psk: '00ff10', pskIdentity: 'ferry', insecure: false },
    };
    const done = api.migrate(req);
    await c.migrateStarted;
    assert.deepEqual(c.migrateRequests, [req]);
    assert.deepEqual(await api.migration(), { role: 'source', state: 'precopy', pass: 1 });
    assert.equal((await api.info()).state, 'migrating', 'the server answers other calls while migrate is pending');
    c.complete({ outcome: 'completed', downtimeMs: 12 });
    assert.deepEqual(await done, { outcome: 'completed', downtimeMs: 12 });
    assert.equal(await api.migration(), null);

    // Cancel: DELETE ends the pending migrate.
    const second = api.migrate({ to: 'dest.example:7070' });
    await waitUntil(() => c.migrateRequests.length === 2);
    await api.cancelMigration();
    assert.deepEqual(await second, { outcome: 'cancelled' });
    await rejectsWith(api.cancelMigration(), 404, 'no-migration');

    // A controller that throws synchronously is answered like one that rejects.
    await rejectsWith(api.migrate({ to: 'sync-throw:1' }), 409, 'busy');
  });
});

test('snapshot passes the validated request and returns the report', async () => {
  const c = new FakeController();
  await withServer(c, async (path) => {
    const api = new ApiClient(path);
    assert.deepEqual(await api.snapshot({ to: '/snaps/a.ferry', diffFrom: '/snaps/base.ferry', resume: true }), { path: '/snaps/a.ferry', bytes: 4096 });
    assert.deepEqual(c.snapshotRequests, [{ to: '/snaps/a.ferry', diffFrom: '/snaps/base.ferry', resume: true }]);
  });
});

test('a controller without migration or snapshots answers 501 and 404', async () => {
  await withServer(bareController, async (path) => {
    const api = new ApiClient(path);
    await rejectsWith(api.migrate({ to: 'x:1' }), 501, 'unsupported');
    await rejectsWith(api.snapshot({ to: '/s' }), 501, 'unsupported');
    assert.equal(await api.migration(), null);
    await rejectsWith(api.cancelMigration(), 404, 'no-migration');
    const a = await raw(path, 'GET', '/guest/migration');
    assert.equal(a.status, 404);
    assert.equal(errorOf(a).code, 'no-migration');
  });
});

test('unknown routes are 404, wrong methods 405 with Allow', async () => {
  await withServer(new FakeController(), async (path) => {
    const a = await raw(path, 'GET', '/nope');
    assert.equal(a.status, 404);
    assert.equal(errorOf(a).code, 'not-found');
    const b = await raw(path, 'POST', '/guest/pause');
    assert.equal(b.status, 405);
    assert.equal(errorOf(b).code, 'method-not-allowed');
    assert.equal(b.headers.allow, 'PUT');
    const c = await raw(path, 'PUT', '/guest');
    assert.equal(c.status, 405);
    const d = await raw(path, 'PATCH', '/guest/migration');
    assert.equal(d.status, 405);
    assert.equal(d.headers.allow, 'GET, DELETE');
    // Trailing slash and query strings do not change the route.
    assert.equal((await raw(path, 'GET', '/guest/?verbose=1')).status, 200);
  });
});

test('bad JSON and invalid bodies are 400 with the reason', async () => {
  const c = new FakeController();
  await withServer(c, async (path) => {
    const json = { 'Content-Type': 'application/json' };
    const badJson = await raw(path, 'PUT', '/guest/migrate', '{"to": "x:1",', json);
    assert.equal(badJson.status, 400);
    assert.equal(errorOf(badJson).code, 'bad-json');
    const empty = await raw(path, 'PUT', '/guest/migrate', '', json);
    assert.equal(empty.status, 400);
    assert.equal(errorOf(empty).code, 'invalid-body');
    const cases: Array<[unknown, RegExp]> = [
      [{}, /to: /],
      [{ to: '' }, /to: must not be empty/],
      [{ to: 'x:1', mode: 'fast' }, /mode: /],
      [{ to: 'x:1', downtimeTargetMS: 5 }, /downtimeTargetMS/],
      [{ to: 'x:1', maxBandwidth: -1 }, /maxBandwidth/],
      [{ to: 'x:1', tls: { psk: 'xyz' } }, /tls\.psk: must be an even number of hex digits/],
      [[1, 2], /body: /],
      [null, /body: /],
    ];
    for (const [body, reason] of cases) {
      const a = await raw(path, 'PUT', '/guest/migrate', JSON.stringify(body), json);
      assert.equal(a.status, 400, JSON.stringify(body));
      const e = errorOf(a);
      assert.equal(e.code, 'invalid-body');
      assert.match(e.message, reason);
    }
    const snap = await raw(path, 'PUT', '/guest/snapshot', JSON.stringify({ to: '/s', resume: 'yes' }), json);
    assert.equal(snap.status, 400);
    assert.match(errorOf(snap).message, /resume: /);
    assert.equal(c.migrateRequests.length, 0, 'no invalid request reached the controller');
    assert.equal(c.snapshotRequests.length, 0);
  });
});

test('bodies over 1 MiB are refused with 413, and the server keeps serving', async () => {
  const c = new FakeController();
  await withServer(c, async (path) => {
    const big = Buffer.alloc(MAX_BODY_BYTES + 1, 0x20);
    // Declared length over the limit: refused before the body is read.
    const declared = await raw(path, 'PUT', '/guest/snapshot', big, { 'Content-Type': 'application/json', 'Content-Length': big.length });
    assert.equal(declared.status, 413);
    assert.equal(errorOf(declared).code, 'body-too-large');
    // Chunked, no declared length: refused once the limit is crossed.
    const chunked = await rawChunked(path, '/guest/snapshot', [Buffer.from('{"to":"'), big, Buffer.from('"}')]);
    assert.equal(chunked.status, 413);
    assert.equal(errorOf(chunked).code, 'body-too-large');
    // Exactly at the limit is accepted (and then judged on its content).
    const atLimit = Buffer.alloc(MAX_BODY_BYTES, 0x20);
    const payload = Buffer.from(JSON.stringify({ to: '/s' }));
    payload.copy(atLimit);
    const ok = await raw(path, 'PUT', '/guest/snapshot', atLimit, { 'Content-Type': 'application/json' });
    assert.equal(ok.status, 200, ok.body);
    assert.equal((await new ApiClient(path).info()).state, 'running');
  });
});

/** Sends a chunked body and resolves with the answer even if the server closes early. */
function rawChunked(socketPath: string, path: string, parts: Buffer[]): Promise<RawAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, method: 'PUT', path, agent: false, headers: { 'Content-Type': 'application/json', 'Transfer-Encoding': 'chunked' } }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (ch: string) => { text += ch; }).on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
    });
    req.on('error', (err: NodeJS.ErrnoException) => {
      // Writing the rest of a refused body may fail after the answer has arrived.
      if (err.code !== 'EPIPE' && err.code !== 'ECONNRESET') reject(err);
    });
    for (const p of parts) req.write(p);
    req.end();
  });
}

test('garbage on the socket and clients that hang up do not hurt the server', async () => {
  const c = new FakeController();
  await withServer(c, async (path) => {
    // Not HTTP at all.
    const answer = await new Promise<string>((resolve) => {
      const s = connect({ path });
      let text = '';
      s.on('data', (d) => { text += d.toString(); });
      s.on('close', () => resolve(text));
      s.on('error', () => {});
      s.end('\x00\x01 this is not HTTP\r\n\r\n');
    });
    assert.match(answer, /^HTTP\/1\.1 400/);
    // A client that sends half a request and disappears.
    await new Promise<void>((resolve) => {
      const s = connect({ path }, () => { s.write('PUT /guest/snapshot HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"to":'); s.destroy(); resolve(); });
    });
    // A client that gives up on a pending migrate; the migration finishes later with nobody to tell.
    await new Promise<void>((resolve) => {
      const req = request({ socketPath: path, method: 'PUT', path: '/guest/migrate', agent: false, headers: { 'Content-Type': 'application/json' } });
      req.on('error', () => resolve());
      req.end(JSON.stringify({ to: 'x:1' }));
      void c.migrateStarted.then(() => req.destroy());
    });
    c.complete({ outcome: 'completed' });
    const api = new ApiClient(path);
    assert.equal((await api.info()).pid, process.pid);
  });
});

test('the socket is created 0600 and removed on close', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-api-'));
  try {
    const path = join(dir, 'guest.sock');
    const server = new ApiServer(new FakeController());
    await server.listen(path);
    const st = statSync(path);
    assert.ok(st.isSocket());
    assert.equal(st.mode & 0o777, 0o600);
    await server.close();
    assert.equal(existsSync(path), false);
    await server.close(); // closing twice is harmless
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a stale socket is replaced, a live one or a plain file is refused', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-api-'));
  try {
    const path = join(dir, 'guest.sock');
    // A stale socket: its owner was killed without cleaning up.
    const owner = spawn(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => console.log('up'))`], { stdio: ['ignore', 'pipe', 'inherit'] });
    await new Promise<void>((resolve) => owner.stdout.once('data', () => resolve()));
    owner.kill('SIGKILL');
    await new Promise<void>((resolve) => owner.once('exit', () => resolve()));
    assert.ok(statSync(path).isSocket(), 'the killed process left its socket file');
    const server = new ApiServer(new FakeController());
    await server.listen(path);
    assert.equal((await new ApiClient(path).info()).state, 'running');

    // A live server keeps its socket.
    const intruder = new ApiServer(bareController);
    await assert.rejects(intruder.listen(path), /already listening on/);
    assert.equal((await new ApiClient(path).info()).module.hash, 'ab'.repeat(32), 'the live server still answers');
    await server.close();

    // Not a socket: never deleted.
    writeFileSync(path, 'precious');
    await assert.rejects(new ApiServer(bareController).listen(path), /not a socket/);
    assert.equal(readFileSync(path, 'utf8'), 'precious');

    await assert.rejects(new ApiServer(bareController).listen(join(dir, 'missing', 'x.sock')), /directory does not exist/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a client with no server says so clearly', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-api-'));
  try {
    const path = join(dir, 'nobody.sock');
    const err = await rejectsWith(new ApiClient(path).info(), 0, 'no-guest');
    assert.equal(err.message, `no Ferry guest listening on ${path}`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

async function waitUntil(cond: () => boolean): Promise<void> {
  while (!cond()) await new Promise((r) => setTimeout(r, 5));
}
