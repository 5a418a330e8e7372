// Live migration progress on a terminal: one bar (cli-progress) fed by GET /guest/migration.
// Not shown when stderr is not a TTY or when --json asks for machine output only.
import cliProgress from 'cli-progress';
import { fmtBytes } from '../guest/guest.js';
import type { MigrationStatus } from '../api/types.js';

export class MigrationProgressBar {
  private bar: cliProgress.SingleBar | null = null;

  constructor(private readonly enabled: boolean) {}

  update(s: MigrationStatus | null): void {
    if (!this.enabled || !s) return;
    const sent = Number(s['bytesSent'] ?? 0);
    const total = Math.max(1, Number(s['memoryBytes'] ?? s['bytesSent'] ?? 1));
    const payload = {
      phase: String(s.state).padEnd(10),
      pass: String(s['pass'] ?? 0),
      bytes: fmtBytes(sent),
      rate: `${fmtBytes(Number(s['rateBytesPerSec'] ?? 0))}/s`,
      dirty: `${Number(s['dirtyRatePagesPerSec'] ?? 0)} pg/s`,
      downtime: s['expectedDowntimeMs'] == null ? '-' : `${Math.round(Number(s['expectedDowntimeMs']))} ms`,
    };
    if (!this.bar) {
      this.bar = new cliProgress.SingleBar(
        {
          format: 'migrate {phase} |{bar}| pass {pass} | {bytes} at {rate} | dirty {dirty} | expected downtime {downtime}',
          stream: process.stderr,
          hideCursor: true,
          clearOnComplete: false,
        },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, Math.min(sent, total), payload);
    } else {
      this.bar.setTotal(Math.max(total, sent));
      this.bar.update(sent, payload);
    }
  }

  stop(): void {
    this.bar?.stop();
    this.bar = null;
  }
}
