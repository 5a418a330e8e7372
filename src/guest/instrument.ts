// Rewrites a guest module once so that it can be paused anywhere and moved:
//  - its own memory becomes an imported *shared* memory ("ferry" "memory"), so Ferry owns it
//    (userfaultfd, dirty tracking) and it can be handed to the guest's worker thread;
//  - active data segments are taken out and kept beside the module: they are written only when a
//    guest starts fresh, never when a restored guest is instantiated over memory that already
//    holds its pages;
//  - every mutable global is exported, so its value can be captured and restored;
//  - a safepoint call is placed at every loop head and at the entry of every function that may
//    recurse (Binaryen's `log-execution` pass; functions on no cycle of the call graph lose their
//    entry safepoint, see call-graph.ts; innermost loops that call nothing that can unwind check it
//    only once every N iterations, and counted innermost loops that call nothing and provably end
//    after a small amount of work not at all), and Asyncify lets the guest unwind its whole stack into
//    linear memory from a safepoint or from a blocking WASI call, and rewind it later, in any
//    process.
//
// This module is the pipeline; the passes live beside it: safepoints.ts (placement), counted-loops.ts
// and bounded-functions.ts (what needs no safepoint), loop-resume.ts (functions resumed at their
// loop heads), instrument-meta.ts (what the cache stores), binaryen-api.ts.
import { sha256Hex } from '../state/hash.js';
import { entrySafepointFree } from './call-graph.js';
import { callGraphFacts } from './tree-facts.js';
import { finishEscapes, resumeAtLoopHeads } from './loop-resume.js';
import { addWarmExports } from './warm-exports.js';
import { optimise } from './optimise.js';
import { featureMask, loadBinaryen, valueType, type BinaryenApi } from './binaryen-api.js';
import { BOUNDED_BUDGET_EXPRESSIONS, boundedFunctions, leafFunctions, mayUnwindFrom } from './bounded-functions.js';
import { amortiseInnermostLoops, dropExitSafepoints, inlineSafepointCheck, pruneEntrySafepoints, safepointImportName } from './safepoints.js';
import {
  FERRY_IMPORT_MODULE, FERRY_MEMORY_IMPORT, GLOBAL_EXPORT_PREFIX, INSTRUMENTATION_VERSION, ModuleRejected, escapeEnabled, loopResumeEnabled, SAFEPOINT_FLAG_ADDR,
  UNWINDABLE_WASI_CALLS, YIELD_IMPORT, type DataSegment, type InstrumentStage, type InstrumentedModule, type ValueType,
} from './instrument-meta.js';

// What other modules and the tests have always imported from here.
export * from './instrument-meta.js';
export { childVisitors, type BinaryenApi, type ChildVisitor } from './binaryen-api.js';
export { BOUNDED_BUDGET_EXPRESSIONS, boundedFunctions } from './bounded-functions.js';
export { EXEMPT_BUDGET_EXPRESSIONS, EXEMPT_MAX_ITERATIONS } from './counted-loops.js';
export { SAFEPOINT_BUDGET_EXPRESSIONS, SAFEPOINT_MAX_ITERATIONS } from './safepoints.js';

/**
 * Instruments `source` (the original module). Throws ModuleRejected with a clear reason.
 * `onStage` hears each step as it begins (the progress bar's feed; see instrument-runner.ts).
 */
export async function instrumentModule(source: Uint8Array, onStage?: (stage: InstrumentStage) => void): Promise<InstrumentedModule> {
  onStage?.('validate');
  try {
    new WebAssembly.Module(source as Uint8Array<ArrayBuffer>);
  } catch (err) {
    throw new ModuleRejected(`not a valid WebAssembly module: ${(err as Error).message}`);
  }
  onStage?.('read');
  const b = await loadBinaryen();
  const mod = b.readBinary(source);
  try {
    return transform(b, mod, source, onStage);
  } finally {
    mod.dispose();
  }
}

function transform(b: BinaryenApi, mod: BinaryenApi, source: Uint8Array, onStage?: (stage: InstrumentStage) => void): InstrumentedModule {
  mod.setFeatures(featureMask(b));

  // ---- refuse what cannot be instrumented ----
  let hasStart = false;
  let memoryName: string | null = null;
  for (let i = 0; i < mod.getNumExports(); i++) {
    const e = b.getExportInfo(mod.getExportByIndex(i));
    if (e.name.startsWith('asyncify_')) {
      throw new ModuleRejected(`module is already transformed by Asyncify (exports ${e.name}); give Ferry the original module`);
    }
    if (e.kind === b.ExternalFunction && e.name === '_start') hasStart = true;
    if (e.kind === b.ExternalMemory) memoryName = e.value;
  }
  if (!hasStart) {
    throw new ModuleRejected('module has no _start export: Ferry runs WASI command modules (wasm32-wasi / wasm32-wasip1 executables)');
  }
  if (mod.getStart() !== 0) {
    throw new ModuleRejected('module has a start section; Ferry cannot re-instantiate such a module over restored memory');
  }
  if (mod.getNumTables() > 1) throw new ModuleRejected('module has more than one table; not supported');
  for (let i = 0; i < mod.getNumTables(); i++) {
    const t = b.getTableInfo(mod.getTableByIndex(i));
    if (t.module) throw new ModuleRejected(`module imports a table (${t.module}.${t.base}); Ferry provides only WASI functions and memory`);
  }
  if (!mod.hasMemory()) throw new ModuleRejected('module has no linear memory');
  const memInfo = mod.getMemoryInfo(memoryName);
  if (memInfo.is64) throw new ModuleRejected('module uses 64-bit memory (memory64); not supported on Node 20');

  const functionImports: { module: string; name: string }[] = [];
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (!f.module) continue;
    if (f.module === FERRY_IMPORT_MODULE || f.base === 'log_execution') {
      throw new ModuleRejected(`module already carries Ferry instrumentation (imports ${f.module}.${f.base})`);
    }
    functionImports.push({ module: f.module, name: f.base });
  }
  const exportedGlobals: { exportName: string; type: ValueType }[] = [];
  const globalRefs: { name: string; type: ValueType }[] = [];
  for (let i = 0; i < mod.getNumGlobals(); i++) {
    const g = b.getGlobalInfo(mod.getGlobalByIndex(i));
    if (g.module) throw new ModuleRejected(`module imports a global (${g.module}.${g.base}); Ferry provides only WASI functions and memory`);
    if (!g.mutable) continue;
    const type = valueType(b, g.type);
    if (!type) throw new ModuleRejected(`global ${g.name} has a type Ferry cannot capture`);
    globalRefs.push({ name: g.name, type });
  }

  // ---- memory: imported, shared; active segments out ----
  const passive: { name: string; data: Uint8Array; offset: null; passive: true }[] = [];
  const segments: DataSegment[] = [];
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < mod.getNumDataSegments(); i++) {
    const s = mod.getDataSegmentInfo(mod.getDataSegmentByIndex(i));
    const data = new Uint8Array(s.data as ArrayBuffer);
    if (s.passive) {
      passive.push({ name: s.name, data, offset: null, passive: true });
    } else {
      if (typeof s.offset !== 'number' || s.offset < 0) {
        throw new ModuleRejected(`data segment ${s.name} has a non-constant offset; not supported`);
      }
      segments.push({ offset: s.offset, length: data.length });
      chunks.push(data);
    }
  }
  const initialPages: number = memInfo.initial;
  if (initialPages < 1) throw new ModuleRejected('module starts with no memory pages; Ferry needs the first page for its safepoint flags');
  for (const seg of segments) {
    if (seg.offset < SAFEPOINT_FLAG_ADDR + 8 && seg.offset + seg.length > SAFEPOINT_FLAG_ADDR) {
      throw new ModuleRejected(`module places data at byte ${seg.offset} of memory, where Ferry keeps its safepoint flags (bytes ${SAFEPOINT_FLAG_ADDR}..${SAFEPOINT_FLAG_ADDR + 7})`);
    }
  }
  const declaredMax: number | null = memInfo.max ?? null;
  // The maximum in the module is replaced at instantiation time by the memory Ferry creates; the
  // declared one here must be large enough to accept it, so use the wasm32 limit.
  mod.setMemory(initialPages, 65536, null, passive, true, false, memoryName ?? '0');
  mod.addMemoryImport(memoryName ?? '0', FERRY_IMPORT_MODULE, FERRY_MEMORY_IMPORT, true);

  globalRefs.forEach((g, k) => {
    const exportName = `${GLOBAL_EXPORT_PREFIX}${k}`;
    mod.addGlobalExport(g.name, exportName);
    exportedGlobals.push({ exportName, type: g.type });
  });

  // ---- safepoints and Asyncify ----
  onStage?.('safepoints');
  // Before log-execution adds calls everywhere: functions whose every activation provably ends
  // after a bounded amount of work lose their entry safepoint below, and with it Asyncify.
  // Functions that call nothing cannot recurse, so their entry safepoint is not needed either
  // (their loops keep their own).
  const bounded = boundedFunctions(b, mod);
  const provablyShort = new Set(bounded); // leaves below keep their loops' safepoints: not short
  for (const name of leafFunctions(b, mod)) bounded.add(name);
  // And so do functions on no cycle of the call graph (they cannot recurse) whose straight-line
  // work before the next safepoint is small (call-graph.ts).
  const entryFree = entrySafepointFree(...callGraphFacts(b, mod), bounded, BOUNDED_BUDGET_EXPRESSIONS);
  mod.runPasses(['log-execution']);
  const safepointFn = safepointImportName(b, mod);
  if (!safepointFn) throw new ModuleRejected('internal: safepoint insertion produced no import');
  dropExitSafepoints(b, mod, safepointFn);
  pruneEntrySafepoints(b, mod, safepointFn, entryFree);
  amortiseInnermostLoops(b, mod, safepointFn);
  const loopResume = loopResumeEnabled();
  const escape = escapeEnabled(); // needs loop resume (instrument-meta.ts): read once, for the split and the meta
  const { removelist: notAsyncified, escapes } = loopResume ? resumeAtLoopHeads(b, mod, safepointFn, mayUnwindFrom(b, mod, provablyShort), escape) : { removelist: [], escapes: [] };
  inlineSafepointCheck(b, mod, safepointFn);
  const unwindImports = [
    { ...YIELD_IMPORT },
    ...functionImports.filter((f) => f.module.startsWith('wasi_') && (UNWINDABLE_WASI_CALLS as readonly string[]).includes(f.name)),
  ];
  onStage?.('asyncify');
  b.setPassArgument('asyncify-imports', unwindImports.map((f) => `${f.module}.${f.name}`).join(','));
  if (notAsyncified.length > 0) b.setPassArgument('asyncify-removelist', notAsyncified.join(','));
  try {
    mod.runPasses(['asyncify']);
  } finally {
    b.clearPassArguments();
  }
  finishEscapes(b, mod, escapes);
  onStage?.('optimise');
  b.setOptimizeLevel(2);
  b.setShrinkLevel(0);
  b.setDebugInfo(true); // keep function names: a trap names the guest function
  // Binaryen inlines every function that has a single caller (its default limit is unlimited);
  // a trap would then be reported in the outermost caller (e.g. `_start`) instead of the guest
  // function it happened in. Keep such functions; tiny ones are still inlined.
  const oneCallerLimit: number = b.getOneCallerInlineMaxSize();
  b.setOneCallerInlineMaxSize(0);
  try {
    optimise(b, mod, new Set(escapes.map((e) => e.name)));
  } finally {
    b.setOneCallerInlineMaxSize(oneCallerLimit);
  }
  // Last, so the optimiser neither moves nor duplicates the entry guards (warm-exports.ts).
  addWarmExports(b, mod);
  onStage?.('check');
  if (!mod.validate()) throw new ModuleRejected('module did not validate after instrumentation');
  const binary: Uint8Array = mod.emitBinary();
  try {
    new WebAssembly.Module(binary as Uint8Array<ArrayBuffer>);
  } catch (err) {
    throw new ModuleRejected(`instrumented module is not accepted by this Node's V8: ${(err as Error).message}`);
  }

  const dataImage = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    dataImage.set(c, at);
    at += c.length;
  }
  return {
    binary,
    dataImage,
    meta: {
      instrumentationVersion: INSTRUMENTATION_VERSION,
      sourceHash: sha256Hex(source),
      sourceSize: source.length,
      memory: { initialPages, declaredMaxPages: declaredMax },
      globals: exportedGlobals,
      functionImports,
      safepointImport: { ...YIELD_IMPORT },
      unwindImports,
      dataSegments: segments,
      entry: '_start',
      loopResume,
      escape,
    },
  };
}
