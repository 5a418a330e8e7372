// Rewrites a guest module once so that it can be paused anywhere and moved:
//  - its own memory becomes an imported *shared* memory ("ferry" "memory"), so Ferry owns it
//    (userfaultfd, dirty tracking) and it can be handed to the guest's worker thread;
//  - active data segments are taken out and kept beside the module: they are written only when a
//    guest starts fresh, never when a restored guest is instantiated over memory that already
//    holds its pages;
//  - every mutable global is exported, so its value can be captured and restored;
//  - a safepoint call is placed at every function entry and loop head (Binaryen's
//    `log-execution` pass; innermost loops that call nothing that can unwind check it only once
//    every N iterations, and counted innermost loops that call nothing and provably end after a
//    small amount of work not at all), and Asyncify lets the guest unwind its whole stack into
//    linear memory from a safepoint or from a blocking WASI call, and rewind it later, in any
//    process.
import { sha256Hex } from '../state/hash.js';
import { loopResumeEnabled, resumeAtLoopHeads } from './loop-resume.js';

export const INSTRUMENTATION_VERSION = 11;

/** The import namespace and names Ferry adds. */
export const FERRY_IMPORT_MODULE = 'ferry';
export const FERRY_MEMORY_IMPORT = 'memory';
export const GLOBAL_EXPORT_PREFIX = 'ferry_global_';
/** The import a safepoint calls when a pause or a rewind is pending (JavaScript, in the worker). */
export const YIELD_IMPORT = { module: FERRY_IMPORT_MODULE, name: 'yield' } as const;
/**
 * Byte address in linear memory of the safepoint flags: an i32 "pause requested" at 16 and an
 * i32 "rewinding" at 20, read together as one i64. They live in the guest's memory because Node
 * 20 has neither shared globals nor multi-memory, and a load inlined at each safepoint is what
 * makes safepoints cheap. wasm-ld keeps the first 1 KiB free (data starts at 1024; with
 * --stack-first the stack grows down towards 0 and reaches it only on overflow); modules whose
 * data lies there are refused.
 */
export const SAFEPOINT_FLAG_ADDR = 16;

/**
 * WASI calls that may block and therefore must be able to unwind (re-entered on resume): reads,
 * poll, and the socket calls; fd_write too, since a write to a socket blocks on a full send buffer.
 */
export const UNWINDABLE_WASI_CALLS = ['fd_read', 'fd_write', 'poll_oneoff', 'sock_accept', 'sock_recv', 'sock_send'] as const;

import type { ValueType } from '../state/exec-state.js';
export type { ValueType };

export interface DataSegment {
  offset: number; // byte offset in linear memory
  length: number; // bytes, stored consecutively in the data image
}

export interface InstrumentedMeta {
  instrumentationVersion: number;
  sourceHash: string; // sha256 hex of the original module bytes
  sourceSize: number;
  memory: {
    initialPages: number; // 64 KiB wasm pages
    declaredMaxPages: number | null;
  };
  globals: { exportName: string; type: ValueType }[];
  functionImports: { module: string; name: string }[];
  /** Where `log-execution` put the safepoint import. */
  safepointImport: { module: string; name: string };
  unwindImports: { module: string; name: string }[];
  dataSegments: DataSegment[];
  entry: '_start';
  /** Built with loop-head-resumable functions (loop-resume.ts; FERRY_LOOP_RESUME=1). */
  loopResume: boolean;
}

export interface InstrumentedModule {
  meta: InstrumentedMeta;
  binary: Uint8Array; // instrumented module
  dataImage: Uint8Array; // active data segments, concatenated
}

export class ModuleRejected extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ModuleRejected';
  }
}


// The feature set V8 in Node 20 accepts. With Binaryen's `Features.All` it emits encodings that
// V8 11.3 refuses, so this list is deliberate.
function featureMask(b: BinaryenApi): number {
  const F = b.Features;
  return F.MVP | F.MutableGlobals | F.SignExt | F.BulkMemory | F.NontrappingFPToInt | F.Atomics | F.SIMD128;
}

// binaryen ships as an ES module with top-level await: it can only be import()ed.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type BinaryenApi = any;
let binaryenPromise: Promise<BinaryenApi> | null = null;
function loadBinaryen(): Promise<BinaryenApi> {
  binaryenPromise ??= import('binaryen').then((m) => (m as { default: BinaryenApi }).default);
  return binaryenPromise;
}

/** The steps of instrumentation, in order, as an optional progress callback hears them. */
export const INSTRUMENT_STAGES = ['validate', 'read', 'safepoints', 'asyncify', 'optimise', 'check'] as const;
export type InstrumentStage = (typeof INSTRUMENT_STAGES)[number];

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
  mod.runPasses(['log-execution']);
  const safepointFn = safepointImportName(b, mod);
  if (!safepointFn) throw new ModuleRejected('internal: safepoint insertion produced no import');
  dropExitSafepoints(b, mod, safepointFn);
  pruneEntrySafepoints(b, mod, safepointFn, bounded);
  amortiseInnermostLoops(b, mod, safepointFn);
  const loopResume = loopResumeEnabled();
  const notAsyncified = loopResume ? resumeAtLoopHeads(b, mod, safepointFn, mayUnwindFrom(b, mod, provablyShort)) : [];
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
    mod.optimize();
  } finally {
    b.setOneCallerInlineMaxSize(oneCallerLimit);
  }
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
    },
  };
}

/**
 * Turns `log-execution`'s imported `log_execution(id)` into a defined function whose body is the
 * check `if (i64.atomic.load(SAFEPOINT_FLAG_ADDR) != 0) ferry.yield(id)`, and inlines it into every
 * safepoint: the common case is one load and a branch, with no call at all.
 */
function inlineSafepointCheck(b: BinaryenApi, mod: BinaryenApi, name: string): void {
  const yieldName = 'ferry$yield';
  mod.addFunctionImport(yieldName, YIELD_IMPORT.module, YIELD_IMPORT.name, b.createType([b.i32]), b.none);
  mod.removeFunction(name);
  const body = mod.if(
    mod.i64.ne(mod.i64.atomic.load(0, mod.i32.const(SAFEPOINT_FLAG_ADDR)), mod.i64.const(0n)),
    mod.call(yieldName, [mod.local.get(0, b.i32)], b.none),
  );
  mod.addFunction(name, b.createType([b.i32]), b.none, [], body);
  // The check is 7 expressions: inline everything that small (a few other tiny functions go with
  // it), but nothing larger — functions with one caller included — so traps keep naming them.
  const always: number = b.getAlwaysInlineMaxSize();
  const oneCaller: number = b.getOneCallerInlineMaxSize();
  const flexible: number = b.getFlexibleInlineMaxSize();
  b.setAlwaysInlineMaxSize(8);
  b.setOneCallerInlineMaxSize(0);
  b.setFlexibleInlineMaxSize(0);
  try {
    mod.runPasses(['inlining']);
  } finally {
    b.setAlwaysInlineMaxSize(always);
    b.setOneCallerInlineMaxSize(oneCaller);
    b.setFlexibleInlineMaxSize(flexible);
  }
  // The now-unused function is dropped by the optimizer's cleanup.
}

/**
 * Guest work, in Binaryen expressions, allowed between two safepoints of an amortised loop: a few
 * microseconds on these machines (V8 runs roughly one expression per nanosecond or faster).
 */
export const SAFEPOINT_BUDGET_EXPRESSIONS = 4096;
/** The most iterations of an amortised loop between two safepoints. */
export const SAFEPOINT_MAX_ITERATIONS = 1024;

class Unsupported extends Error {}

export type ChildVisitor = (expr: number, visit: (child: number) => void) => void;

/**
 * How to reach the children of each expression kind Ferry's feature set can contain: direct
 * accessors for the common kinds (getExpressionInfo allocates an object per node, which shows on
 * 20 MiB modules), getExpressionInfo fields for the rare ones.
 */
export function childVisitors(b: BinaryenApi): Map<number, ChildVisitor> {
  const none: ChildVisitor = () => {};
  const byInfo = (names: string[]): ChildVisitor => (expr, visit) => {
    const info = b.getExpressionInfo(expr) as Record<string, unknown>;
    for (const n of names) {
      const v = info[n];
      if (Array.isArray(v)) for (const c of v) visit(c as number);
      else visit(v as number);
    }
  };
  return new Map<number, ChildVisitor>([
    [b.BlockId, (e, v) => {
      const n: number = b.Block.getNumChildren(e);
      for (let i = 0; i < n; i++) v(b.Block.getChildAt(e, i));
    }],
    [b.IfId, (e, v) => { v(b.If.getCondition(e)); v(b.If.getIfTrue(e)); v(b.If.getIfFalse(e)); }],
    [b.LoopId, (e, v) => v(b.Loop.getBody(e))],
    [b.BreakId, (e, v) => { v(b.Break.getCondition(e)); v(b.Break.getValue(e)); }],
    [b.SwitchId, byInfo(['condition', 'value'])],
    [b.CallId, (e, v) => {
      const n: number = b.Call.getNumOperands(e);
      for (let i = 0; i < n; i++) v(b.Call.getOperandAt(e, i));
    }],
    [b.CallIndirectId, byInfo(['target', 'operands'])],
    [b.LocalGetId, none],
    [b.LocalSetId, (e, v) => v(b.LocalSet.getValue(e))],
    [b.GlobalGetId, none],
    [b.GlobalSetId, (e, v) => v(b.GlobalSet.getValue(e))],
    [b.LoadId, (e, v) => v(b.Load.getPtr(e))],
    [b.StoreId, (e, v) => { v(b.Store.getPtr(e)); v(b.Store.getValue(e)); }],
    [b.ConstId, none],
    [b.UnaryId, (e, v) => v(b.Unary.getValue(e))],
    [b.BinaryId, (e, v) => { v(b.Binary.getLeft(e)); v(b.Binary.getRight(e)); }],
    [b.SelectId, (e, v) => { v(b.Select.getIfTrue(e)); v(b.Select.getIfFalse(e)); v(b.Select.getCondition(e)); }],
    [b.DropId, (e, v) => v(b.Drop.getValue(e))],
    [b.ReturnId, (e, v) => v(b.Return.getValue(e))],
    [b.MemorySizeId, none],
    [b.MemoryGrowId, byInfo(['delta'])],
    [b.NopId, none],
    [b.UnreachableId, none],
    [b.AtomicRMWId, byInfo(['ptr', 'value'])],
    [b.AtomicCmpxchgId, byInfo(['ptr', 'expected', 'replacement'])],
    [b.AtomicWaitId, byInfo(['ptr', 'expected', 'timeout'])],
    [b.AtomicNotifyId, byInfo(['ptr', 'notifyCount'])],
    [b.AtomicFenceId, none],
    [b.SIMDExtractId, byInfo(['vec'])],
    [b.SIMDReplaceId, byInfo(['vec', 'value'])],
    [b.SIMDShuffleId, byInfo(['left', 'right'])],
    [b.SIMDTernaryId, byInfo(['a', 'b', 'c'])],
    [b.SIMDShiftId, byInfo(['vec', 'shift'])],
    [b.SIMDLoadId, byInfo(['ptr'])],
    [b.SIMDLoadStoreLaneId, byInfo(['ptr', 'vec'])],
    [b.MemoryInitId, byInfo(['dest', 'offset', 'size'])],
    [b.DataDropId, none],
    [b.MemoryCopyId, byInfo(['dest', 'source', 'size'])],
    [b.MemoryFillId, byInfo(['dest', 'value', 'size'])],
  ]);
}

/** What a subtree contains, as far as safepoints are concerned. */
interface TreeFacts {
  size: number; // expressions
  loops: number;
  indirect: boolean; // call_indirect
  calls: string[]; // direct call targets, one entry per call site
}

interface LoopSite {
  loop: number; // the Loop expression (its body starts with its safepoint call)
  name: string;
  rest: number; // the loop's original body (after the safepoint call)
  facts: TreeFacts;
  /** The block the loop is a direct child of, and its index there (0 if none). */
  parent: number;
  index: number;
}

/**
 * A safepoint at the head of a hot innermost loop costs a flag load and a branch per iteration,
 * and, since the loop can then unwind, Asyncify's state checks around its body on every
 * iteration too. An innermost loop (no loop inside) that calls only functions that cannot unwind
 * (no calls and no loops: bounded, safepoint-free) is rewritten so its safepoint runs once every N
 * iterations, N chosen from the size of an iteration so that a safepoint is still reached every
 * SAFEPOINT_BUDGET_EXPRESSIONS expressions of guest work:
 *
 *   loop $L (body: safepoint; B)   →   loop $L' (safepoint; c = N;
 *                                         loop $L (if (--c == 0) br $L'; B))
 *
 * Every branch in B to $L still reaches the inner loop's head; one in N goes round through $L' and
 * its safepoint. The inner loop contains no call that can unwind, so Asyncify leaves it whole
 * (one state check per entry, not per iteration). Locals, including the counter, are saved and
 * restored by Asyncify like any other, so a rewind resumes right after the safepoint.
 *
 * An innermost loop that calls nothing at all and provably runs at most EXEMPT_MAX_ITERATIONS
 * times and EXEMPT_BUDGET_EXPRESSIONS expressions per entry (`boundedTripCount`) loses its
 * safepoint instead: with no branch out of it V8 can unroll it. Whatever encloses it keeps its own
 * safepoint, so the guest work between two safepoints stays bounded — though not by
 * EXEMPT_BUDGET_EXPRESSIONS: several exempt loops in a row (or an exempt loop in a leaf function
 * called several times per iteration of its caller) add up before the next safepoint.
 */
function amortiseInnermostLoops(b: BinaryenApi, mod: BinaryenApi, safepointFn: string): void {
  const fields = childVisitors(b);
  const sizes = new Map<string, number>(); // functions that cannot unwind → their size
  const sites = new Map<number, LoopSite[]>(); // function ref → its candidate loops
  const imports = new Set<string>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const fn = mod.getFunctionByIndex(i);
    const f = b.getFunctionInfo(fn);
    if (f.module) {
      imports.add(f.name);
      continue;
    }
    const found: LoopSite[] = [];
    let facts: TreeFacts;
    try {
      facts = walk(b, fields, f.body, safepointFn, found);
    } catch (err) {
      if (err instanceof Unsupported) continue; // left as log-execution made it
      throw err;
    }
    if (facts.loops === 0 && facts.calls.length === 0 && !facts.indirect) sizes.set(f.name, facts.size);
    if (found.length > 0) sites.set(fn, found);
  }
  // Imports that can unwind (the safepoint, blocking WASI calls) are named by Asyncify's list;
  // here every import other than the safepoint is treated as bounded host work, and the blocking
  // ones are excluded by name below.
  const unwindable = new Set<string>(UNWINDABLE_WASI_CALLS);
  const importBase = new Map<string, string>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module) importBase.set(f.name, f.base);
  }
  let k = 0;
  for (const [fn, found] of sites) {
    let counter = -1;
    for (const site of found) {
      if (site.facts.loops === 0 && site.facts.calls.length === 0 && !site.facts.indirect) {
        const trips = boundedTripCount(b, fields, site);
        if (trips !== null && trips <= EXEMPT_MAX_ITERATIONS && trips * Math.max(1, site.facts.size) <= EXEMPT_BUDGET_EXPRESSIONS) {
          b.Block.setChildAt(b.Loop.getBody(site.loop), 0, mod.nop());
          continue;
        }
      }
      let cost = site.facts.size;
      let ok = !site.facts.indirect && site.facts.loops === 0;
      for (const c of site.facts.calls) {
        if (!ok) break;
        if (imports.has(c)) {
          if (c === safepointFn || unwindable.has(importBase.get(c) ?? '')) ok = false;
          else cost += 16;
        } else {
          const size = sizes.get(c);
          if (size === undefined) ok = false;
          else cost += size;
        }
      }
      if (!ok) continue;
      const n = Math.min(SAFEPOINT_MAX_ITERATIONS, Math.floor(SAFEPOINT_BUDGET_EXPRESSIONS / Math.max(1, cost)));
      if (n < 2) continue;
      if (counter < 0) counter = b._BinaryenFunctionAddVar(fn, b.i32) as number;
      const outerName = `ferry$amortised${k++}`;
      const safepointCall = b.Block.getChildAt(b.Loop.getBody(site.loop), 0);
      const type = b.getExpressionType(site.loop);
      const inner = mod.loop(
        site.name,
        mod.block(null, [
          mod.br(outerName, mod.i32.eqz(mod.local.tee(counter, mod.i32.sub(mod.local.get(counter, b.i32), mod.i32.const(1)), b.i32))),
          site.rest,
        ], type),
      );
      b.Loop.setName(site.loop, outerName);
      b.Loop.setBody(site.loop, mod.block(null, [safepointCall, mod.local.set(counter, mod.i32.const(n)), inner], type));
    }
  }
}

/**
 * The most iterations, and the most guest work (in expressions: iterations × the size of the
 * loop's body), of an innermost loop that runs without any safepoint (`boundedTripCount`): a few
 * tens of microseconds, which the enclosing code's safepoint (a loop head or a function entry)
 * adds to the time to the next safepoint.
 */
export const EXEMPT_MAX_ITERATIONS = 65536;
export const EXEMPT_BUDGET_EXPRESSIONS = 65536;

/**
 * An upper bound on the number of times the body of an innermost loop that calls nothing runs
 * per entry, or null when none can be proved. Only one shape is recognised, the one clang -O2
 * emits for counted loops (rotated, the test at the bottom):
 *
 *   loop $L { S1; …; Sn; br_if $L cond }
 *
 * where
 *  - `br_if $L` at the end is the only branch to $L (so the body runs once more than the number of
 *    times that branch is taken: any other way out of the body leaves the loop);
 *  - exactly one `local.set`/`local.tee` of a local i (i32 or i64) in the whole body, `i = i + C`
 *    or `i = i - C` (C a constant, non-zero modulo 2^bits), either one of S1…Sn itself or inside
 *    `cond` — so it runs exactly once on every path that reaches the branch;
 *  - `cond` is, under any number of `eqz`, the counter itself or a comparison of it with a
 *    constant, where "the counter" is that tee, or `local.get i` when the step is one of S1…Sn:
 *    the branch is taken while the counter's new value x lies in a set S that is an interval
 *    modulo 2^bits.
 * Then the values of x at successive branches are x0 + C, x0 + 2C, … (x0: i on entry). If
 * |S| + |C| ≤ 2^bits, a step from inside S either moves on within the same integer interval or
 * wraps out of it, so at most ceil(|S|/|C|) branches in a row are taken, whatever x0 is. If S is
 * everything but one value B (`i != B`), x0 must be known: a `local.set i (const)` earlier in the
 * same block with nothing between that can assign i (a loop is entered only by falling into it);
 * then the number of branches taken is the least k ≥ 1 with x0 + k·C = B modulo 2^bits, if any.
 */
function boundedTripCount(b: BinaryenApi, fields: Map<number, ChildVisitor>, site: LoopSite): number | null {
  if (b.getExpressionId(site.rest) === b.BlockId && b.Block.getName(site.rest) === site.name) return null;
  const stmts: number[] = b.getExpressionId(site.rest) === b.BlockId
    ? Array.from({ length: b.Block.getNumChildren(site.rest) as number }, (_, i) => b.Block.getChildAt(site.rest, i) as number)
    : [site.rest];
  const last = stmts[stmts.length - 1];
  if (!last || b.getExpressionId(last) !== b.BreakId || b.Break.getName(last) !== site.name) return null;
  const cond: number = b.Break.getCondition(last);
  if (!cond || b.Break.getValue(last)) return null;

  // Every branch and every local.set in the body.
  let branchesToLoop = 0;
  const sets: number[] = [];
  const scan = (expr: number): void => {
    if (!expr) return;
    const id = b.getExpressionId(expr) as number;
    if (id === b.BreakId && b.Break.getName(expr) === site.name) branchesToLoop++;
    if (id === b.SwitchId) {
      const n: number = b.Switch.getNumNames(expr);
      for (let i = 0; i < n; i++) if (b.Switch.getNameAt(expr, i) === site.name) branchesToLoop++;
      if (b.Switch.getDefaultName(expr) === site.name) branchesToLoop++;
    }
    if (id === b.LocalSetId) sets.push(expr);
    fields.get(id)!(expr, scan);
  };
  scan(site.rest);
  if (branchesToLoop !== 1) return null;

  // The counter tested by cond, and whether the truthy (continue) set is complemented.
  let negate = false;
  let x: number = cond;
  let range: { start: bigint; size: bigint } | null = null; // continue iff (x - start) mod 2^bits < size
  let bits = 0;
  for (;;) {
    const id = b.getExpressionId(x) as number;
    if (id === b.UnaryId && (b.Unary.getOp(x) === b.EqZInt32 || b.Unary.getOp(x) === b.EqZInt64)) {
      negate = !negate;
      x = b.Unary.getValue(x);
      continue;
    }
    if (id === b.BinaryId) {
      const cmp = comparison(b, b.Binary.getOp(x));
      if (!cmp) return null;
      let left: number = b.Binary.getLeft(x);
      let right: number = b.Binary.getRight(x);
      let op = cmp.op;
      if (b.getExpressionId(left) === b.ConstId) {
        [left, right] = [right, left];
        op = FLIPPED[op];
      }
      if (b.getExpressionId(right) !== b.ConstId) return null;
      bits = cmp.bits;
      range = comparisonRange(op, cmp.signed, constValue(b, right, bits), bits);
      x = left;
    }
    break;
  }
  // x is now the counter: local.get i or the step's local.tee i.
  const xid = b.getExpressionId(x) as number;
  let local: number;
  if (xid === b.LocalGetId) local = b.LocalGet.getIndex(x);
  else if (xid === b.LocalSetId && b.LocalSet.isTee(x)) local = b.LocalSet.getIndex(x);
  else return null;
  const type = b.getExpressionType(x);
  const xbits = type === b.i32 ? 32 : type === b.i64 ? 64 : 0;
  if (!xbits || (bits && bits !== xbits)) return null;
  bits = xbits;
  const M = 1n << BigInt(bits);
  range ??= { start: 1n, size: M - 1n }; // the counter itself: continue while x != 0
  if (negate) range = { start: (range.start + range.size) % M, size: M - range.size };

  // The step: the only set of i in the body, i = i ± C, run once on every path to the branch.
  const mine = sets.filter((e) => b.LocalSet.getIndex(e) === local);
  if (mine.length !== 1) return null;
  const step = mine[0]!;
  if (xid === b.LocalSetId ? step !== x : !stmts.slice(0, -1).includes(step) || b.LocalSet.isTee(step)) return null;
  const value: number = b.LocalSet.getValue(step);
  if (b.getExpressionId(value) !== b.BinaryId) return null;
  const op = b.Binary.getOp(value);
  const add = op === (bits === 32 ? b.AddInt32 : b.AddInt64);
  const sub = op === (bits === 32 ? b.SubInt32 : b.SubInt64);
  if (!add && !sub) return null;
  let l: number = b.Binary.getLeft(value);
  let r: number = b.Binary.getRight(value);
  if (add && b.getExpressionId(l) === b.ConstId) [l, r] = [r, l];
  if (b.getExpressionId(l) !== b.LocalGetId || b.LocalGet.getIndex(l) !== local || b.getExpressionId(r) !== b.ConstId) return null;
  let c = constValue(b, r, bits);
  if (sub) c = (M - c) % M;
  if (c === 0n) return null;
  const magnitude = c <= M / 2n ? c : M - c; // |C| of the step's signed value

  let taken: bigint | null = null; // the most times the back branch can be taken in a row
  if (range.size + magnitude <= M) taken = (range.size + magnitude - 1n) / magnitude;
  if (range.size === M - 1n && (taken === null || taken >= BigInt(EXEMPT_MAX_ITERATIONS))) {
    const exit = (range.start + range.size) % M; // the one value that leaves the loop
    const x0 = entryConstant(b, fields, site, local, bits);
    const k = x0 === null ? null : stepsTo(x0, exit, c, bits);
    if (k !== null) taken = k - 1n;
  }
  if (taken === null) return null;
  return taken + 1n > BigInt(EXEMPT_MAX_ITERATIONS) ? Number.MAX_SAFE_INTEGER : Number(taken) + 1;
}

type CmpOp = 'eq' | 'ne' | 'lt' | 'gt' | 'le' | 'ge';
const FLIPPED: Record<CmpOp, CmpOp> = { eq: 'eq', ne: 'ne', lt: 'gt', gt: 'lt', le: 'ge', ge: 'le' };

type Comparison = { op: CmpOp; signed: boolean; bits: number };
/** Binaryen's comparison opcodes (they are Binaryen's constants: the table is built once). */
let comparisons: Map<number, Comparison> | null = null;

function comparison(b: BinaryenApi, op: number): Comparison | null {
  comparisons ??= comparisonTable(b);
  return comparisons.get(op) ?? null;
}

function comparisonTable(b: BinaryenApi): Map<number, Comparison> {
  const table: [number, CmpOp, boolean, number][] = [
    [b.EqInt32, 'eq', false, 32], [b.NeInt32, 'ne', false, 32],
    [b.LtSInt32, 'lt', true, 32], [b.LtUInt32, 'lt', false, 32], [b.GtSInt32, 'gt', true, 32], [b.GtUInt32, 'gt', false, 32],
    [b.LeSInt32, 'le', true, 32], [b.LeUInt32, 'le', false, 32], [b.GeSInt32, 'ge', true, 32], [b.GeUInt32, 'ge', false, 32],
    [b.EqInt64, 'eq', false, 64], [b.NeInt64, 'ne', false, 64],
    [b.LtSInt64, 'lt', true, 64], [b.LtUInt64, 'lt', false, 64], [b.GtSInt64, 'gt', true, 64], [b.GtUInt64, 'gt', false, 64],
    [b.LeSInt64, 'le', true, 64], [b.LeUInt64, 'le', false, 64], [b.GeSInt64, 'ge', true, 64], [b.GeUInt64, 'ge', false, 64],
  ];
  return new Map(table.map(([code, op, signed, bits]) => [code, { op, signed, bits }]));
}

/** A constant as an unsigned value modulo 2^bits. */
function constValue(b: BinaryenApi, expr: number, bits: number): bigint {
  const M = 1n << BigInt(bits);
  const v = bits === 32 ? BigInt(b.Const.getValueI32(expr) as number) : (b.Const.getValueI64(expr) as bigint);
  return ((v % M) + M) % M;
}

/** The values x with `x op k` true, as an interval modulo 2^bits (start, size). */
function comparisonRange(op: CmpOp, signed: boolean, k: bigint, bits: number): { start: bigint; size: bigint } {
  const M = 1n << BigInt(bits);
  // Work in the order the comparison uses: unsigned 0..M-1, or signed, shifted by M/2.
  const bias = signed ? M / 2n : 0n;
  const kk = (k + bias) % M; // k's rank in that order
  let lo: bigint, hi: bigint; // ranks, inclusive; hi < lo means empty
  switch (op) {
    case 'eq': lo = kk; hi = kk; break;
    case 'ne': return { start: (k + 1n) % M, size: M - 1n };
    case 'lt': lo = 0n; hi = kk - 1n; break;
    case 'le': lo = 0n; hi = kk; break;
    case 'gt': lo = kk + 1n; hi = M - 1n; break;
    case 'ge': lo = kk; hi = M - 1n; break;
  }
  if (hi < lo) return { start: 0n, size: 0n };
  return { start: (lo - bias + M) % M, size: hi - lo + 1n };
}

/**
 * The value of local `local` when the loop is entered, if a `local.set local (const)` precedes the
 * loop in the block that holds it and no expression between them contains a set of that local.
 */
function entryConstant(b: BinaryenApi, fields: Map<number, ChildVisitor>, site: LoopSite, local: number, bits: number): bigint | null {
  if (!site.parent) return null;
  const setsLocal = (root: number): boolean => {
    let found = false;
    const scan = (expr: number): void => {
      if (!expr || found) return;
      const id = b.getExpressionId(expr) as number;
      if (id === b.LocalSetId && b.LocalSet.getIndex(expr) === local) {
        found = true;
        return;
      }
      const children = fields.get(id);
      if (!children) {
        found = true; // unknown expression: assume the worst
        return;
      }
      children(expr, scan);
    };
    scan(root);
    return found;
  };
  for (let i = site.index - 1; i >= 0; i--) {
    const e: number = b.Block.getChildAt(site.parent, i);
    if (b.getExpressionId(e) === b.LocalSetId && b.LocalSet.getIndex(e) === local) {
      const v: number = b.LocalSet.getValue(e);
      if (b.getExpressionId(v) !== b.ConstId || b.getExpressionType(v) !== (bits === 32 ? b.i32 : b.i64)) return null;
      return constValue(b, v, bits);
    }
    if (setsLocal(e)) return null;
  }
  return null;
}

/** The least k ≥ 1 with x0 + k·c = target modulo 2^bits, or null if there is none. */
function stepsTo(x0: bigint, target: bigint, c: bigint, bits: number): bigint | null {
  const M = 1n << BigInt(bits);
  const diff = (((target - x0) % M) + M) % M;
  let t = 0n; // trailing zero bits of c
  while (((c >> t) & 1n) === 0n) t++;
  if (diff % (1n << t) !== 0n) return null;
  const m = M >> t; // solve (c / 2^t)·k = diff / 2^t modulo 2^(bits - t), c / 2^t odd
  const odd = (c >> t) % m;
  let inv = 1n; // Newton iteration for the inverse of an odd number modulo a power of two
  for (let i = 0; i < 7; i++) inv = (inv * (2n - odd * inv)) % m;
  inv = ((inv % m) + m) % m;
  const k = ((diff >> t) * inv) % m;
  return k === 0n ? m : k;
}

/** Collects the facts of a subtree, and the loops in it (with their own facts). */
function walk(b: BinaryenApi, fields: Map<number, ChildVisitor>, root: number, safepointFn: string, loops: LoopSite[]): TreeFacts {
  const facts: TreeFacts = { size: 0, loops: 0, indirect: false, calls: [] };
  // The block the next visited expression is a direct child of, and its index there (0, 0: none).
  let nextParent = 0;
  let nextIndex = 0;
  const visit = (expr: number): void => {
    if (!expr) return;
    const parent = nextParent;
    const index = nextIndex;
    nextParent = nextIndex = 0;
    const id = b.getExpressionId(expr) as number;
    const children = fields.get(id);
    if (!children) throw new Unsupported();
    facts.size++;
    if (id === b.BlockId) {
      const n: number = b.Block.getNumChildren(expr);
      for (let i = 0; i < n; i++) {
        nextParent = expr;
        nextIndex = i;
        visit(b.Block.getChildAt(expr, i));
      }
      nextParent = nextIndex = 0;
      return;
    }
    if (id === b.LoopId) {
      facts.loops++;
      const body = b.Loop.getBody(expr);
      const head = body && b.getExpressionId(body) === b.BlockId && b.Block.getNumChildren(body) === 2 ? b.Block.getChildAt(body, 0) : 0;
      if (head && b.getExpressionId(head) === b.CallId && b.Call.getTarget(head) === safepointFn && !b.Block.getName(body)) {
        const rest = b.Block.getChildAt(body, 1);
        const inner = walk(b, fields, rest, safepointFn, loops);
        facts.size += inner.size + 2;
        facts.loops += inner.loops;
        facts.indirect ||= inner.indirect;
        for (const c of inner.calls) facts.calls.push(c);
        facts.calls.push(safepointFn);
        const name = b.Loop.getName(expr);
        if (name) loops.push({ loop: expr, name, rest, facts: inner, parent, index });
        return;
      }
    }
    if (id === b.CallId) facts.calls.push(b.Call.getTarget(expr));
    if (id === b.CallIndirectId) facts.indirect = true;
    children(expr, visit);
  };
  visit(root);
  return facts;
}

/** The internal name of the import `log-execution` added, or null. */
function safepointImportName(b: BinaryenApi, mod: BinaryenApi): string | null {
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module && f.base === 'log_execution') return f.name;
  }
  return null;
}

/**
 * The most guest work, in expressions (a loop's body counted once per iteration, a callee's work
 * at each call), that a function without a safepoint may do per activation: a quarter of a
 * millisecond or so, added to the time to the next safepoint of its caller.
 */
export const BOUNDED_BUDGET_EXPRESSIONS = 262144;

/**
 * Defined functions whose every activation ends after at most BOUNDED_BUDGET_EXPRESSIONS of work,
 * callees included: no `call_indirect`, no call to an import that may block (the unwindable
 * WASI calls; other imports count as 16 expressions of host work), no recursion (a function on
 * a cycle of the call graph is never bounded), and every loop an innermost loop that calls
 * nothing and whose trip count `boundedTripCount` proves small enough to be exempted — the same
 * rule `amortiseInnermostLoops` applies after `log-execution`, so such a function ends up with
 * no safepoint at all. Functions that call nothing and have no loop are the simplest case (the
 * only one before INSTRUMENTATION_VERSION 8).
 */
/** Defined functions whose bodies call nothing (no call, call_indirect or call_ref). */
function leafFunctions(b: BinaryenApi, mod: BinaryenApi): Set<string> {
  const leaves = new Set<string>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (!f.module && f.body && (b.getSideEffects(f.body, mod) & b.SideEffects.Calls) === 0) leaves.add(f.name);
  }
  return leaves;
}

export function boundedFunctions(b: BinaryenApi, mod: BinaryenApi): Set<string> {
  const fields = childVisitors(b);
  const blocking = new Set<string>(UNWINDABLE_WASI_CALLS);
  const importCost = new Map<string, number>(); // import name → cost, or -1 for blocking
  const bodies = new Map<string, number>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module) importCost.set(f.name, blocking.has(f.base) ? -1 : 16);
    else bodies.set(f.name, f.body);
  }
  // Per function: its own work (loops multiplied out) and its direct callees, or null if it has
  // something that rules it out on its own.
  const own = new Map<string, { work: number; calls: string[] } | null>();
  for (const [name, body] of bodies) own.set(name, ownWork(b, fields, body));
  const work = new Map<string, number>(); // bounded functions → total work
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = (name: string): number | null => {
    if (state.get(name) === 'done') return work.get(name) ?? null;
    if (state.get(name) === 'visiting') return null; // recursion
    state.set(name, 'visiting');
    const o = own.get(name);
    let total: number | null = o ? o.work : null;
    if (o) {
      for (const c of o.calls) {
        if (total === null) break;
        const ic = importCost.get(c);
        const w = ic !== undefined ? (ic < 0 ? null : ic) : visit(c);
        total = w === null ? null : total + w;
        if (total !== null && total > BOUNDED_BUDGET_EXPRESSIONS) total = null;
      }
    }
    state.set(name, 'done');
    if (total !== null) work.set(name, total);
    return total;
  };
  // Deep call chains: visit callees first, iteratively by depth, to keep the JS stack shallow.
  for (const name of bodies.keys()) visit(name);
  return new Set(work.keys());
}

/**
 * The work of one activation of a function body, not counting its callees, with each loop's body
 * counted once per iteration; and its direct call targets, one per call site. Null if the body
 * has a `call_indirect`, a loop that is not an innermost call-free loop with a provably small trip
 * count, or an expression this analysis does not know.
 */
function ownWork(b: BinaryenApi, fields: Map<number, ChildVisitor>, body: number): { work: number; calls: string[] } | null {
  if (!body) return null;
  const calls: string[] = [];
  let ok = true;
  let nextParent = 0;
  let nextIndex = 0;
  const size = (expr: number): number => {
    if (!expr || !ok) return 0;
    const parent = nextParent;
    const index = nextIndex;
    nextParent = nextIndex = 0;
    const id = b.getExpressionId(expr) as number;
    const children = fields.get(id);
    if (!children || id === b.CallIndirectId) {
      ok = false;
      return 0;
    }
    if (id === b.CallId) calls.push(b.Call.getTarget(expr));
    if (id === b.BlockId) {
      let n = 1;
      const count: number = b.Block.getNumChildren(expr);
      for (let i = 0; i < count; i++) {
        nextParent = expr;
        nextIndex = i;
        n += size(b.Block.getChildAt(expr, i));
      }
      nextParent = nextIndex = 0;
      return n;
    }
    if (id === b.LoopId) {
      const name = b.Loop.getName(expr);
      const inner = b.Loop.getBody(expr);
      const facts = walk(b, fields, inner, '', []);
      if (!name || facts.loops > 0 || facts.calls.length > 0 || facts.indirect) {
        ok = false;
        return 0;
      }
      const trips = boundedTripCount(b, fields, { loop: expr, name, rest: inner, facts, parent, index });
      if (trips === null || trips > EXEMPT_MAX_ITERATIONS || trips * Math.max(1, facts.size) > EXEMPT_BUDGET_EXPRESSIONS) {
        ok = false;
        return 0;
      }
      return 1 + trips * facts.size;
    }
    let n = 1;
    children(expr, (c) => {
      n += size(c);
    });
    return n;
  };
  let w: number;
  try {
    w = size(body);
  } catch (err) {
    if (err instanceof Unsupported) return null;
    throw err;
  }
  return ok && w <= BOUNDED_BUDGET_EXPRESSIONS ? { work: w, calls } : null;
}

/**
 * `log-execution` logs not only at function entries and loop heads but also before every
 * `return` and before a function body's last expression. Those exit safepoints bound nothing (what
 * runs after them up to the caller's next safepoint is straight-line code), yet each one is an
 * unwind point: it made every function Asyncify'd — leaf functions and bounded functions
 * included, whose entry safepoints `pruneEntrySafepoints` removes to keep them out of Asyncify —
 * and made every innermost loop with a `return` in it look as if it called something that can
 * unwind, so it was never amortised. Only the entry (first child of the function body) and loop
 * heads (first child of a loop's body) are kept; every other safepoint call becomes a nop.
 * A function with an expression this walk does not know keeps all of its safepoints.
 */
function dropExitSafepoints(b: BinaryenApi, mod: BinaryenApi, safepointFn: string): void {
  const fields = childVisitors(b);
  const isSafepoint = (e: number): boolean => b.getExpressionId(e) === b.CallId && b.Call.getTarget(e) === safepointFn;
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module || !f.body) continue;
    const drops: [number, number][] = []; // block, child index
    // `keepFirst`: the expression is the function body or a loop's body, where a safepoint as the
    // first child of a block is an entry or a loop head.
    const visit = (expr: number, keepFirst: boolean): void => {
      if (!expr) return;
      const id = b.getExpressionId(expr) as number;
      if (id === b.BlockId) {
        const n: number = b.Block.getNumChildren(expr);
        for (let k = 0; k < n; k++) {
          const c: number = b.Block.getChildAt(expr, k);
          if (isSafepoint(c)) {
            if (!(keepFirst && k === 0)) drops.push([expr, k]);
          } else visit(c, false);
        }
        return;
      }
      if (id === b.LoopId) return visit(b.Loop.getBody(expr), true);
      const children = fields.get(id);
      if (!children) throw new Unsupported();
      children(expr, (c) => visit(c, false));
    };
    try {
      visit(f.body, true);
    } catch (err) {
      if (err instanceof Unsupported) continue;
      throw err;
    }
    for (const [block, k] of drops) b.Block.setChildAt(block, k, mod.nop());
  }
}

/**
 * `log-execution` puts a safepoint at every function entry and loop head. A bounded function
 * (`boundedFunctions`: it ends after a bounded amount of work, its callees included, and calls
 * nothing that may block) loses its entry safepoint, and `amortiseInnermostLoops` exempts its
 * loops, so it has no safepoint left. It then cannot unwind, and Asyncify leaves it — and every
 * call to it — uninstrumented, which is where most of the cost of instrumentation goes (hot
 * calls of small helpers from big functions). Entry safepoints stay in every other function:
 * they bound recursion without loops.
 */
function pruneEntrySafepoints(b: BinaryenApi, mod: BinaryenApi, safepointFn: string, leaves: Set<string>): void {
  for (const name of leaves) {
    const body = b.getFunctionInfo(mod.getFunction(name)).body;
    if (!body || b.getExpressionId(body) !== b.BlockId || b.Block.getNumChildren(body) === 0) continue;
    const first = b.Block.getChildAt(body, 0);
    if (b.getExpressionId(first) === b.CallId && b.Call.getTarget(first) === safepointFn) b.Block.setChildAt(body, 0, mod.nop());
  }
}

/** Whether a call to `callee` may unwind: an unwindable WASI import, or a function with a safepoint. */
function mayUnwindFrom(b: BinaryenApi, mod: BinaryenApi, bounded: Set<string>): (callee: string) => boolean {
  const importBase = new Map<string, string>();
  for (let i = 0; i < mod.getNumFunctions(); i++) {
    const f = b.getFunctionInfo(mod.getFunctionByIndex(i));
    if (f.module) importBase.set(f.name, f.base);
  }
  const unwindable = new Set<string>(UNWINDABLE_WASI_CALLS);
  return (callee) => {
    const base = importBase.get(callee);
    return base !== undefined ? unwindable.has(base) : !bounded.has(callee);
  };
}

function valueType(b: BinaryenApi, t: number): ValueType | null {
  if (t === b.i32) return 'i32';
  if (t === b.i64) return 'i64';
  if (t === b.f32) return 'f32';
  if (t === b.f64) return 'f64';
  return null;
}
