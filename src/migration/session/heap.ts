// A full garbage collection on demand, to run just before a switchover's downtime. Streaming a
// guest's memory allocates a Buffer per TLS record or frame (gigabytes of them), and V8 answers
// that external-memory pressure with a mark-compact every few hundred milliseconds — 1 to 15 ms
// each on these machines (`node --trace-gc`). One that falls inside the downtime adds all of it.
// Collecting right before, while the guest still runs, leaves nothing for V8 to catch up on
// during the few milliseconds that follow, which allocate almost nothing.
import v8 from 'node:v8';
import vm from 'node:vm';

let gc: (() => void) | null | undefined;

/** Runs a full collection now (a no-op if this V8 refuses to expose one). */
export function collectGarbageNow(): void {
  if (gc === undefined) {
    try {
      // --expose-gc set at run time reaches contexts created afterwards: take `gc` from a new one.
      v8.setFlagsFromString('--expose-gc');
      gc = vm.runInNewContext('gc') as () => void;
    } catch {
      gc = null;
    }
  }
  gc?.();
}
