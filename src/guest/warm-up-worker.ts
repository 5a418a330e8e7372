// The thread warm-up.ts starts: calls every `ferry_warm_<k>` export of the guest's compiled
// module on a throwaway instance (its own globals, a memory of its own, stub imports), so V8
// compiles each warmed function here, into the module the guest's instance shares, and exits.
import { parentPort, workerData } from 'node:worker_threads';

interface WarmData {
  module: WebAssembly.Module;
  initialPages: number;
  names: string[];
  debug: boolean;
}

const { module, initialPages, names, debug } = workerData as WarmData;
// The smallest memory the import accepts: never touched (a warm call returns before any access).
const pages = Math.max(1, initialPages);
const memory = new WebAssembly.Memory({ initial: pages, maximum: pages, shared: true });
const imports: Record<string, Record<string, WebAssembly.ImportValue>> = {};
const stub = (): never => {
  throw new Error('a warm-up instance called an import');
};
for (const imp of WebAssembly.Module.imports(module)) {
  imports[imp.module] ??= {};
  if (imp.kind === 'function') imports[imp.module]![imp.name] = stub;
  else if (imp.kind === 'memory') imports[imp.module]![imp.name] = memory;
  else throw new Error(`import ${imp.module}.${imp.name} is a ${imp.kind}`);
}
const instance = new WebAssembly.Instance(module, imports);
let called = 0;
for (const name of names) {
  const t0 = performance.now();
  (instance.exports[name] as () => void)();
  called++;
  if (debug) process.stderr.write(`warm: ${name} compiled off the guest thread in ${(performance.now() - t0).toFixed(1)} ms\n`);
}
parentPort!.postMessage(called);
