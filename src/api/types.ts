// Shared request/response types of the control API (server, client, CLI and controllers).

export type GuestRunState = 'starting' | 'running' | 'pausing' | 'paused' | 'migrating' | 'stopped' | 'exited' | 'failed';

export interface GuestInfo {
  state: GuestRunState;
  module: { path: string | null; hash: string };
  memoryBytes: number;
  maxMemoryBytes: number;
  uptimeMs: number;
  exitCode: number | null;
  pid: number;
}

export interface MigrateTls {
  psk?: string; // hex
  pskIdentity?: string;
  cert?: string;
  key?: string;
  ca?: string;
  insecure?: boolean;
}

export interface MigrateRequest {
  to: string;
  mode?: 'precopy' | 'postcopy' | 'auto';
  maxBandwidth?: number;
  downtimeTargetMs?: number;
  precopyTimeoutS?: number;
  verify?: boolean;
  /** After the commit, how long postcopy keeps reconnecting a lost destination (s). */
  recoverTimeoutS?: number;
  tls?: MigrateTls;
  /** ADDR/PREFIX@IFACE addresses this host gives up at the switchover (the guest's sockets move with it). */
  serviceAddresses?: string[];
  /** Shell command run when they have been given up (FERRY_SERVICE_ADDRESS in its environment). */
  onRelease?: string;
}

/** Progress of a migration; every field besides role and state is defined by the migration layer. */
export interface MigrationStatus {
  role: 'source' | 'destination';
  state: string;
  [k: string]: unknown;
}

/** `ferry migrate --resume`: retry a postcopy connection now, optionally at another address. */
export interface ResumeMigrationRequest {
  to?: string;
  tls?: MigrateTls;
}

export interface SnapshotRequest {
  to: string;
  diffFrom?: string;
  resume?: boolean;
}

/** What the API server drives. Methods may throw ControllerError to choose the HTTP answer. */
export interface GuestController {
  info(): GuestInfo;
  pause(): Promise<void>;
  resume(): Promise<void>;
  stop(): Promise<void>;
  /** Resolves with the final report when the migration is over. */
  migrate?(req: MigrateRequest): Promise<Record<string, unknown>>;
  migration?(): MigrationStatus | null;
  cancelMigration?(): Promise<void>;
  /** Postcopy-paused: reconnect now (optionally elsewhere). */
  resumeMigration?(req: ResumeMigrationRequest): Promise<void>;
  /** Give up a migration stuck after its commit point; the guest here is freed. */
  abandonMigration?(): Promise<void>;
  snapshot?(req: SnapshotRequest): Promise<Record<string, unknown>>;
  /** GET /metrics: the Prometheus text exposition (src/api/metrics.ts). */
  metrics?(): string | Promise<string>;
}

/**
 * An error a controller throws to answer with a given HTTP status and machine-readable code,
 * e.g. new ControllerError(409, 'guest-ended', 'cannot pause: the guest has exited').
 * Statuses outside 400..599 are answered as 500.
 */
export class ControllerError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
    this.name = 'ControllerError';
  }
}

/** The body of every 4xx/5xx answer. */
export interface ApiErrorBody {
  error: { code: string; message: string };
}

/** Error codes the server itself produces (controllers add their own). */
export const API_ERROR_CODES = {
  notFound: 'not-found',               // 404: unknown route
  methodNotAllowed: 'method-not-allowed', // 405
  badJson: 'bad-json',                 // 400: body is not JSON
  invalidBody: 'invalid-body',         // 400: JSON that does not fit the request type
  bodyTooLarge: 'body-too-large',      // 413: over MAX_BODY_BYTES
  noMigration: 'no-migration',         // 404: GET/DELETE /guest/migration with none
  unsupported: 'unsupported',          // 501: the controller lacks the capability
  internal: 'internal',                // 500: the controller threw something else
} as const;

/** Request bodies above this size are refused with 413. */
export const MAX_BODY_BYTES = 1024 * 1024;
