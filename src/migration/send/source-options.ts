// What a live migration source is asked to do (`ferry migrate` flags, PUT /guest/migrate).
import type { Security } from '../transport/index.js';
import type { ServiceAddress } from '../../net/service-address.js';
import type { MigrationMode, MigrationProgress } from '../session/report.js';

export interface SourceOptions {
  host: string;
  port: number;
  security: Security;
  mode: MigrationMode;
  /** Bytes/s cap on the bulk channel. */
  maxBandwidth?: number;
  /** Stop-and-copy only when the rest fits this downtime at the measured bandwidth. */
  downtimeTargetMs: number;
  /** Give up on precopy (or, in auto mode, switch to postcopy) after this long. */
  precopyTimeoutS: number;
  verify: boolean;
  /** After the commit, how long postcopy keeps trying to reconnect a lost destination. */
  recoverTimeoutS: number;
  onProgress?: (p: MigrationProgress) => void;
  /** Service addresses this host gives up at the switchover (--service-address), and the --on-release hook. */
  serviceAddresses?: ServiceAddress[];
  onRelease?: string;
}
