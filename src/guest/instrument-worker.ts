// The thread instrument-runner.ts starts: instruments one module and posts each step's start,
// then the result (its buffers transferred) or the error.
import { parentPort, workerData } from 'node:worker_threads';
import { instrumentModule } from './instrument.js';
import type { InstrumentWorkerMessage } from './instrument-runner.js';

const { source } = workerData as { source: Uint8Array };
const post = (m: InstrumentWorkerMessage, transfer: ArrayBuffer[] = []): void => parentPort!.postMessage(m, transfer);

instrumentModule(source, (stage) => post({ type: 'stage', stage })).then(
  (result) => {
    const buffers = [result.binary.buffer, result.dataImage.buffer].filter((b, i, all): b is ArrayBuffer => b instanceof ArrayBuffer && all.indexOf(b) === i);
    post({ type: 'done', result }, buffers);
  },
  (err: unknown) => post({ type: 'error', name: err instanceof Error ? err.name : 'Error', message: err instanceof Error ? err.message : String(err) }),
);
