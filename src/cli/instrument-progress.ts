// A progress bar on stderr while a module is instrumented (`ferry run`, `ferry prepare`, a
// destination): one step per stage of instrumentation (instrument.ts INSTRUMENT_STAGES), with the
// stage's name and the time so far. Shown only when stderr is a terminal; cli-progress redraws it
// on its own timer, which runs because the instrumentation has a thread of its own.
import { createRequire } from 'node:module';
import type cliProgressModule from 'cli-progress';
import type { InstrumentProgress } from '../guest/instrument-runner.js';

// Loaded when a bar is first drawn (a cold cache on a terminal), not at every `ferry run`'s start.
let cliProgress: typeof cliProgressModule | null = null;
const loadCliProgress = (): typeof cliProgressModule => (cliProgress ??= createRequire(import.meta.url)('cli-progress') as typeof cliProgressModule);

export class InstrumentProgressBar {
  private bar: cliProgressModule.SingleBar | null = null;

  /** `label`: what is instrumented (a file name); `enabled`: stderr is a TTY and no --json. */
  constructor(private readonly label: string, private readonly enabled = process.stderr.isTTY === true) {}

  /** The listener to hand ModuleCache.load (called only when the module is not cached). */
  readonly onProgress = (p: InstrumentProgress): void => {
    if (!this.enabled) return;
    if (p.done) {
      this.stop();
      return;
    }
    const payload = { module: this.label, stage: p.stage.padEnd(10), size: p.sourceBytes >= 1048576 ? `${(p.sourceBytes / 1048576).toFixed(1)} MiB` : `${Math.ceil(p.sourceBytes / 1024)} KiB` };
    if (!this.bar) {
      const cli = loadCliProgress();
      this.bar = new cli.SingleBar(
        {
          format: 'instrumenting {module} ({size}) |{bar}| {stage} step {value}/{total} | {duration_formatted}',
          stream: process.stderr,
          hideCursor: true,
          clearOnComplete: true,
          etaBuffer: 1,
        },
        cli.Presets.shades_classic,
      );
      this.bar.start(p.steps, p.step - 1, payload);
    } else {
      this.bar.update(p.step - 1, payload);
    }
  };

  stop(): void {
    if (!this.bar) return;
    this.bar.update(this.bar.getTotal());
    this.bar.stop();
    this.bar = null;
  }
}
