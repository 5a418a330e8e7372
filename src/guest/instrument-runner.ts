// Runs instrumentModule (instrument.ts) on a thread of its own and reports its progress. Binaryen's
// passes are synchronous and take seconds to minutes on a big module: on the calling thread they
// would freeze a progress bar, and on a migration destination the event loop that receives the
// stream. Here the caller's thread stays free; each step's start arrives as a progress event.
import { Worker } from 'node:worker_threads';
import { INSTRUMENT_STAGES, ModuleRejected, type InstrumentStage, type InstrumentedModule } from './instrument-meta.js';

export interface InstrumentProgress {
  stage: InstrumentStage;
  /** 1-based index of the stage, of `steps`. */
  step: number;
  steps: number;
  /** Since instrumentation began. */
  elapsedMs: number;
  sourceBytes: number;
  /** The last event: instrumentation is over (stage is then the last one). */
  done: boolean;
}

export type InstrumentProgressListener = (p: InstrumentProgress) => void;

/** Messages of instrument-worker.ts. */
export type InstrumentWorkerMessage =
  | { type: 'stage'; stage: InstrumentStage }
  | { type: 'done'; result: InstrumentedModule }
  | { type: 'error'; name: string; message: string };

export function instrumentOffThread(source: Uint8Array, onProgress?: InstrumentProgressListener): Promise<InstrumentedModule> {
  const t0 = performance.now();
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('./instrument-worker.js', import.meta.url), { workerData: { source } });
    let settled = false;
    const settle = (f: () => void): void => {
      if (settled) return;
      settled = true;
      f();
      void worker.terminate();
    };
    worker.on('message', (m: InstrumentWorkerMessage) => {
      if (m.type === 'stage') {
        try {
          onProgress?.({ stage: m.stage, step: INSTRUMENT_STAGES.indexOf(m.stage) + 1, steps: INSTRUMENT_STAGES.length, elapsedMs: performance.now() - t0, sourceBytes: source.length, done: false });
        } catch {
          // a listener's failure is not instrumentation's
        }
      } else if (m.type === 'done') {
        try {
          const steps = INSTRUMENT_STAGES.length;
          onProgress?.({ stage: INSTRUMENT_STAGES[steps - 1]!, step: steps, steps, elapsedMs: performance.now() - t0, sourceBytes: source.length, done: true });
        } catch {
          // as above
        }
        settle(() => resolve(m.result));
      } else {
        settle(() => reject(m.name === 'ModuleRejected' ? new ModuleRejected(m.message) : new Error(m.message)));
      }
    });
    worker.on('error', (err) => settle(() => reject(err)));
    worker.on('exit', (code) => settle(() => reject(new Error(`the instrumentation thread ended (exit ${code}) without a result`))));
  });
}
