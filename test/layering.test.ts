// The source tree's layering, checked from the import statements of src/**/*.ts (type-only imports
// included: they tie modules together for a reader as much as value imports do).
//  - Each top-level folder is a layer, and imports only from layers below it (LAYERS, lowest
//    first): a lower layer that reached up (snapshot/ mapping errors to HTTP codes, state/ reading
//    guest/) would make the layers a tangle.
//  - No module imports itself back through a chain of others (a cycle), at any depth.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const SRC = resolve(dirname(fileURLToPath(import.meta.url)), '../../src');

/** Lowest first. A folder may import its own files and any folder before it. */
const LAYERS = ['sys', 'net', 'memory', 'wasi', 'state', 'guest', 'migration', 'snapshot', 'api', 'cli'];
/** Files at the top of src/: version.ts is a leaf every layer may read; index.ts is the package's entry, above all. */
const ROOT_FILES: Record<string, number> = { 'version.ts': -1, 'index.ts': LAYERS.length };

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) return sourceFiles(p);
    return name.endsWith('.ts') && !name.endsWith('.d.ts') ? [p] : [];
  });
}

/** Relative imports of a file, resolved to .ts paths under src/ (dynamic import() included). */
function importsOf(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  const specs = [...text.matchAll(/(?:^|\n)\s*(?:import|export)\s[^;]*?from\s+'([^']+)'/g), ...text.matchAll(/import\(\s*'([^']+)'\s*\)/g)].map((m) => m[1]!);
  return specs.filter((s) => s.startsWith('.')).map((s) => resolve(dirname(file), s).replace(/\.js$/, '.ts'));
}

function layerOf(file: string): number {
  const rel = relative(SRC, file).split('/');
  if (rel.length === 1) return ROOT_FILES[rel[0]!] ?? LAYERS.length;
  const i = LAYERS.indexOf(rel[0]!);
  assert.ok(i >= 0, `src/${rel[0]}/ is not in the layer list of test/layering.test.ts: place it`);
  return i;
}

const files = sourceFiles(SRC);
const graph = new Map(files.map((f) => [f, importsOf(f).filter((t) => t.startsWith(SRC + '/'))]));

test('every import goes to the same layer or one below it', () => {
  const upward: string[] = [];
  for (const [from, targets] of graph) {
    for (const to of targets) {
      if (layerOf(to) > layerOf(from)) upward.push(`${relative(SRC, from)} -> ${relative(SRC, to)}`);
    }
  }
  assert.deepEqual(upward, []);
});

test('no module imports itself back through others (no cycles)', () => {
  const cycles: string[] = [];
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (f: string) => {
    state.set(f, 'open');
    stack.push(f);
    for (const t of graph.get(f) ?? []) {
      if (state.get(t) === 'open') cycles.push([...stack.slice(stack.indexOf(t)), t].map((p) => relative(SRC, p)).join(' -> '));
      else if (!state.has(t) && graph.has(t)) visit(t);
    }
    stack.pop();
    state.set(f, 'done');
  };
  for (const f of files) if (!state.has(f)) visit(f);
  assert.deepEqual(cycles, []);
});

test('the checks see the imports (a known downward import is found)', () => {
  const binding = join(SRC, 'api/snapshot-binding.ts');
  assert.ok(graph.get(binding)?.includes(join(SRC, 'snapshot/session.ts')));
});

/** Value imports only (no `import type`, no dynamic import()): what loading a module loads with it. */
function loadedWith(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  return [...text.matchAll(/(?:^|\n)\s*(import|export)\s(?!type\s)[^;]*?from\s+'(\.[^']+)'/g)].map((m) => resolve(dirname(file), m[2]!).replace(/\.js$/, '.ts'));
}

/** The modules loading `entry` (under src/) loads, itself included. */
function loadClosure(entry: string): Set<string> {
  const seen = new Set<string>();
  const walk = (f: string) => {
    if (seen.has(f)) return;
    seen.add(f);
    loadedWith(f).forEach(walk);
  };
  walk(join(SRC, entry));
  return seen;
}

test('a guest started from a cached module loads none of the instrumentation passes', () => {
  // Every `ferry run`, restore and migration destination loads these on its start-up path, on the
  // main thread and on the guest's own; Binaryen's side (the passes and their tree helpers, ~20
  // modules) only a cache miss needs, on the instrumenting thread (instrument-worker.ts).
  const passes = ['guest/instrument.ts', 'guest/binaryen-api.ts', 'guest/loop-resume.ts', 'guest/warm-exports.ts'].map((p) => join(SRC, p));
  for (const entry of ['guest/guest.ts', 'guest/worker.ts', 'guest/module-cache.ts']) {
    const loaded = loadClosure(entry);
    assert.ok(loaded.size > 3, `${entry}: no imports found (the check is blind)`);
    assert.deepEqual(passes.filter((p) => loaded.has(p)).map((p) => relative(SRC, p)), [], `${entry} loads instrumentation passes`);
  }
  const instrumenting = loadClosure('guest/instrument-worker.ts');
  assert.ok(passes.every((p) => instrumenting.has(p)), 'the check finds the passes where they are loaded');
});
