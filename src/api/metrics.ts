// GET /metrics: what a guest's host process exposes for Prometheus, in the text exposition format
// (version 0.0.4): every family has a HELP and a TYPE line, counters end in _total, units are base
// units in the name (_seconds, _bytes), histograms have cumulative `le` buckets ending at +Inf with
// _sum and _count. The list of metrics, and what each means, is in docs/cli.md.
//
// The numbers come from three places: the guest (state, uptime, memory, pauses — GuestMetrics
// listens to its pause events), the migration in progress or the last one (its status, and the
// final report of an outgoing one), and the snapshots taken through the API. This module holds no
// Node-specific state beyond that and loads nothing heavy: the controller hands it plain values.
import type { GuestInfo, GuestRunState, MigrationStatus } from './types.js';

/** Prometheus' content type for the text format. */
export const METRICS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8';

/** Pause latency buckets (s): a safepoint is normally reached in tens of µs to a few ms. */
export const PAUSE_BUCKETS_S = [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];
/** Postcopy fault latency buckets (s): a fault served over loopback takes ~100 µs, over a LAN more. */
export const FAULT_BUCKETS_S = [0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1];

const GUEST_STATES: GuestRunState[] = ['starting', 'running', 'pausing', 'paused', 'migrating', 'stopped', 'exited', 'failed'];
const MIGRATION_PHASES = ['none', 'connecting', 'handshake', 'precopy', 'switchover', 'postcopy', 'postcopy-paused', 'verifying', 'completed', 'failed', 'cancelled'];

/** A cumulative histogram over fixed upper bounds (seconds). */
export class Histogram {
  readonly counts: number[];
  sum = 0;
  count = 0;

  constructor(readonly bounds: readonly number[]) {
    this.counts = bounds.map(() => 0);
  }

  observe(v: number): void {
    this.count++;
    this.sum += v;
    for (let i = 0; i < this.bounds.length; i++) if (v <= this.bounds[i]!) this.counts[i]!++;
  }

  static of(samples: Iterable<number>, bounds: readonly number[]): Histogram {
    const h = new Histogram(bounds);
    for (const s of samples) h.observe(s);
    return h;
  }
}

/** The source of pause events: a Guest (an EventEmitter), seen only through what is needed here. */
export interface PauseEvents {
  on(event: 'pause-requested' | 'paused', listener: () => void): unknown;
}

/** What a scrape is made of; the controller gathers it (see guest-controller.ts). */
export interface MetricsInput {
  info: GuestInfo;
  /** Host pages of guest memory present in RAM, or null when unknown (no guest, scan failed). */
  residentPages: number | null;
  /** The migration in progress or the last one; null if none. */
  migration: MigrationStatus | null;
  /** Postcopy fault latencies (µs) measured on this host (a destination), if any. */
  faultLatenciesUs: readonly number[] | null;
}

/** The cumulative figures of one migration, from its status (GET /guest/migration). */
function migrationFigures(m: MigrationStatus): Record<string, number> {
  const pc = (m['postcopy'] ?? null) as Record<string, unknown> | null;
  return {
    sentBytes: num(m['bytesSent']),
    receivedBytes: num(m['bytesReceived']),
    dataPages: num(m['dataPages']),
    zeroPages: num(m['zeroPages']),
    untouchedPages: num(m['untouchedPages']),
    receivedPages: num(m['pagesReceived']),
    faults: num(pc?.['faults']),
    requestedPages: num(pc?.['pagesRequested']),
    pushedPages: num(pc?.['pagesPushed']),
    blockedSeconds: num(pc?.['guestBlockedMs']) / 1000,
  };
}

/**
 * Counters a host process keeps over its life: pauses, migrations, snapshots. A migration's
 * figures (bytes, pages, faults) are counted over the process's life too — those of the
 * migrations that ended plus the one in flight — so every counter only grows.
 */
export class GuestMetrics {
  readonly pauseLatency = new Histogram(PAUSE_BUCKETS_S);
  private readonly tracked = new WeakSet<object>();
  private readonly migrations = new Map<string, number>();
  private readonly snapshots = new Map<string, number>();
  private snapshotFailures = 0;
  /** Figures of the outgoing migrations that ended. */
  private readonly ended: Record<string, number> = {};
  /** An outgoing migration runs: its live figures count on top of `ended`. */
  private outgoing = false;
  private lastDowntimeS: number | null = null;

  /** Counts the pauses of `guest` from now on (idempotent). */
  track(guest: PauseEvents & object): void {
    if (this.tracked.has(guest)) return;
    this.tracked.add(guest);
    let requestedAt: number | null = null;
    guest.on('pause-requested', () => {
      requestedAt ??= performance.now();
    });
    guest.on('paused', () => {
      if (requestedAt === null) return;
      this.pauseLatency.observe((performance.now() - requestedAt) / 1000);
      requestedAt = null;
    });
  }

  migrationStarted(): void {
    this.outgoing = true;
  }

  /** An outgoing migration ended: its final status, and its report when it completed. */
  migrationEnded(result: 'completed' | 'failed' | 'cancelled', final: MigrationStatus | null, report: Record<string, unknown> | null): void {
    this.migrations.set(result, (this.migrations.get(result) ?? 0) + 1);
    if (final) for (const [k, v] of Object.entries(migrationFigures(final))) this.ended[k] = (this.ended[k] ?? 0) + v;
    if (report && typeof report['downtimeMs'] === 'number') this.lastDowntimeS = report['downtimeMs'] / 1000;
    this.outgoing = false;
  }

  snapshotTaken(kind: string): void {
    this.snapshots.set(kind, (this.snapshots.get(kind) ?? 0) + 1);
  }

  snapshotFailed(): void {
    this.snapshotFailures++;
  }

  render(input: MetricsInput, version: string): string {
    const x = new Exposition();
    const { info, migration: m } = input;
    x.gauge('ferry_build_info', 'Ferry version of this process (value 1).', [[{ version }, 1]]);
    x.gauge('ferry_guest_state', 'Run state of the guest: 1 for the current state, 0 for the others.', GUEST_STATES.map((s) => [{ state: s }, info.state === s ? 1 : 0]));
    x.gauge('ferry_guest_uptime_seconds', 'Time the guest has run, over all the hosts it ran on.', [[{}, info.uptimeMs / 1000]]);
    x.gauge('ferry_guest_memory_bytes', 'Current size of the guest linear memory.', [[{}, info.memoryBytes]]);
    x.gauge('ferry_guest_memory_max_bytes', 'Maximum the guest linear memory may grow to.', [[{}, info.maxMemoryBytes]]);
    if (input.residentPages !== null) {
      x.gauge('ferry_guest_resident_pages', 'Host pages (4 KiB) of guest memory present in RAM (PAGEMAP_SCAN; never-touched pages are not).', [[{}, input.residentPages]]);
    }
    x.counter('ferry_guest_pauses_total', 'Pauses of the guest at a safepoint (API, migration, snapshot).', [[{}, this.pauseLatency.count]]);
    x.histogram('ferry_guest_pause_latency_seconds', 'From a pause request to the guest sitting at a safepoint with its stack unwound.', this.pauseLatency);

    // ---- migration: the one in flight, else the last one ----
    const role = m?.role ?? 'none';
    const phase = m ? String(m.state) : 'none';
    x.gauge(
      'ferry_migration_phase',
      'Phase of the migration in flight or the last one: 1 for the current phase (phase none: no migration yet).',
      MIGRATION_PHASES.map((p) => [{ role, phase: p }, phase === p ? 1 : 0]),
    );
    x.counter('ferry_migrations_total', 'Outgoing migrations that ended, by result.', ['completed', 'failed', 'cancelled'].map((r) => [{ result: r }, this.migrations.get(r) ?? 0]));
    // A destination takes one migration and its status is always the live one; a source's counts
    // on top of the ended ones only while it runs.
    const live = m && (m.role === 'destination' || this.outgoing) ? migrationFigures(m) : {};
    const f = (k: string): number => (this.ended[k] ?? 0) + (live[k] ?? 0);
    x.counter('ferry_migration_sent_bytes_total', 'Bytes sent on migration channels (both channels, framing and TLS included).', [[{}, f('sentBytes')]]);
    x.counter('ferry_migration_received_bytes_total', 'Bytes received on migration channels.', [[{}, f('receivedBytes')]]);
    x.counter(
      'ferry_migration_sent_pages_total',
      'Pages an outgoing migration sent, by kind: data (contents), zero (a marker), untouched (never touched: part of a range).',
      [['data', f('dataPages')], ['zero', f('zeroPages')], ['untouched', f('untouchedPages')]].map(([k, v]) => [{ kind: k as string }, v as number]),
    );
    x.counter('ferry_migration_received_pages_total', 'Pages an incoming migration placed (contents and zero markers; postcopy pages included).', [[{}, f('receivedPages')]]);
    // Issue 18 counts the peers a destination refuses (wrong key, not a Ferry source, ...) in its
    // status: a numeric `refusedPeers` there is exposed here.
    if (m && typeof m['refusedPeers'] === 'number') {
      x.counter('ferry_migration_refused_peers_total', 'Peers the destination refused before any page moved.', [[{}, m['refusedPeers']]]);
    }
    if (this.lastDowntimeS !== null) {
      x.gauge('ferry_migration_downtime_seconds', 'Downtime of the last completed outgoing migration: from the pause here to the guest running on the destination.', [[{}, this.lastDowntimeS]]);
    }

    // ---- postcopy ----
    x.counter('ferry_postcopy_faults_total', 'Guest page faults on pages not yet received (destination: live; source: as the destination reported them at the end).', [[{}, f('faults')]]);
    x.counter('ferry_postcopy_requested_pages_total', 'Pages fetched on request (the urgent channel).', [[{}, f('requestedPages')]]);
    x.counter('ferry_postcopy_pushed_pages_total', 'Pages the background stream delivered during postcopy.', [[{}, f('pushedPages')]]);
    x.counter('ferry_postcopy_blocked_seconds_total', 'Time guest threads spent blocked on missing pages.', [[{}, f('blockedSeconds')]]);
    if (input.faultLatenciesUs) {
      x.histogram('ferry_postcopy_fault_latency_seconds', 'From a fault on a missing page to the page placed (measured on the destination).', Histogram.of(input.faultLatenciesUs.map((us) => us / 1e6), FAULT_BUCKETS_S));
    }

    // ---- snapshots ----
    x.counter('ferry_snapshots_total', 'Snapshots written through the control API, by kind.', ['full', 'diff'].map((k) => [{ kind: k }, this.snapshots.get(k) ?? 0]));
    x.counter('ferry_snapshot_failures_total', 'Snapshot requests that failed.', [[{}, this.snapshotFailures]]);
    return x.text();
  }
}

type Labels = Record<string, string>;

/** Writes families in the text format, each with its HELP and TYPE lines. */
class Exposition {
  private readonly lines: string[] = [];

  gauge(name: string, help: string, samples: [Labels, number][]): void {
    this.family(name, 'gauge', help, samples.map(([l, v]) => [name, l, v]));
  }

  counter(name: string, help: string, samples: [Labels, number][]): void {
    if (!name.endsWith('_total')) throw new Error(`counter ${name} must end in _total`);
    this.family(name, 'counter', help, samples.map(([l, v]) => [name, l, v]));
  }

  histogram(name: string, help: string, h: Histogram): void {
    const samples: [string, Labels, number][] = h.bounds.map((b, i) => [`${name}_bucket`, { le: formatValue(b) }, h.counts[i]!]);
    samples.push([`${name}_bucket`, { le: '+Inf' }, h.count], [`${name}_sum`, {}, h.sum], [`${name}_count`, {}, h.count]);
    this.family(name, 'histogram', help, samples);
  }

  text(): string {
    return this.lines.join('\n') + '\n';
  }

  private family(name: string, type: string, help: string, samples: [string, Labels, number][]): void {
    this.lines.push(`# HELP ${name} ${help.replace(/\\/g, '\\\\').replace(/\n/g, '\\n')}`, `# TYPE ${name} ${type}`);
    for (const [sample, labels, value] of samples) {
      const l = Object.entries(labels).map(([k, v]) => `${k}="${v.replace(/\\/g, '\\\\').replace(/\n/g, '\\n').replace(/"/g, '\\"')}"`);
      this.lines.push(`${sample}${l.length ? `{${l.join(',')}}` : ''} ${formatValue(value)}`);
    }
  }
}

function formatValue(v: number): string {
  if (Number.isNaN(v)) return 'NaN';
  if (v === Infinity) return '+Inf';
  if (v === -Infinity) return '-Inf';
  return String(v);
}

function num(v: unknown): number {
  const n = Number(v ?? 0);
  return Number.isFinite(n) ? n : 0;
}
