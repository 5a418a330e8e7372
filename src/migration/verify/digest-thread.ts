// Worker entry of digestFrozenMemory() (verify/digest.ts): hashes the source's frozen memory for
// `--verify` on a thread of its own and posts the hex digest back.
import { parentPort, workerData } from 'node:worker_threads';
import { digestMemory, type DigestJob, type DigestResult } from './digest.js';
import { PageBitmap } from '../../memory/page-bitmap.js';

const job = workerData as DigestJob;
let result: DigestResult;
try {
  const present = new PageBitmap(job.pageCount, job.present.buffer);
  result = { hex: digestMemory(new Uint8Array(job.memory), job.pageCount, (p) => !present.has(p)) };
} catch (err) {
  result = { error: err instanceof Error ? err.message : String(err) };
}
parentPort!.postMessage(result);
