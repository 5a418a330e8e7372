// The bundles' V8 code caches (bin/code-cache.cjs, made by scripts/bundle.mjs): V8 takes a cache
// only under the flags it was made with, so each is checked in a process of its own, by what V8
// said of it (vm.Script's cachedDataRejected), with real V8 and the real bundles of this build.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { createRequire } from 'node:module';
import * as path from 'node:path';
import * as zlib from 'node:zlib';
import { REPO, tmpDir } from './fixtures/guest/helpers.js';
import { ferryV8Flags } from '../src/guest/tiering.js';

const CODE_CACHE = path.join(REPO, 'bin/code-cache.cjs');
const codeCache = createRequire(import.meta.url)(CODE_CACHE) as { cliCodeCacheWanted(argv: string[]): boolean };
/** Caches are made and used only where Node has zlib.crc32 (20.15 on): elsewhere there is nothing to test. */
const NO_CRC = typeof (zlib as { crc32?: unknown }).crc32 !== 'function' && 'this Node has no zlib.crc32: no code cache is made or used';

/** In a fresh process (after setting `flags`, if any): loads `bundle` with its cache of `variant`; what V8 did with the cache, and what `probe` gave. */
function load(bundle: string, opts: { variant?: string; flags?: string; probe?: string; env?: Record<string, string> } = {}): { use: string; probe: unknown } {
  const script = `
    ${opts.flags ? `require('node:v8').setFlagsFromString(${JSON.stringify(opts.flags)});` : ''}
    const c = require(${JSON.stringify(CODE_CACHE)});
    const m = c.requireBundle(${JSON.stringify(bundle)}, ${JSON.stringify(opts.variant ?? null)});
    console.log(JSON.stringify({ use: c.cacheUse(${JSON.stringify(bundle)}), probe: ${opts.probe ?? 'null'} }));`;
  return run(script, opts.env);
}

/** The same for the guest thread's bundle, loaded on a thread started as a spare (it then waits for an init that never comes). */
function loadOnThread(bundle: string, opts: { variant?: string; flags?: string } = {}): { use: string; probe: unknown } {
  const onThread = `const c = require(${JSON.stringify(CODE_CACHE)});
    c.requireBundle(${JSON.stringify(bundle)}, ${JSON.stringify(opts.variant ?? null)});
    require('node:worker_threads').parentPort.postMessage(c.cacheUse(${JSON.stringify(bundle)}));`;
  const script = `
    ${opts.flags ? `require('node:v8').setFlagsFromString(${JSON.stringify(opts.flags)});` : ''}
    const { Worker } = require('node:worker_threads');
    const w = new Worker(${JSON.stringify(onThread)}, { eval: true, workerData: { spare: true } });
    w.once('message', (use) => { console.log(JSON.stringify({ use, probe: null })); process.exit(0); });
    w.once('error', (e) => { console.error(e); process.exit(1); });`;
  return run(script);
}

function run(script: string, env: Record<string, string> = {}): { use: string; probe: unknown } {
  const out = execFileSync(process.execPath, ['-e', script], { env: { ...process.env, ...env }, encoding: 'utf8' });
  return JSON.parse(out) as { use: string; probe: unknown };
}

function makeCache(args: string[]): void {
  execFileSync(process.execPath, [CODE_CACHE, ...args]);
}

test('a bundle loads with the cache made of every function in it; never with one older than the bundle, nor a damaged one, nor with caches off', { skip: NO_CRC }, () => {
  const dir = tmpDir('code-cache');
  const bundle = path.join(dir, 'b.cjs');
  fs.writeFileSync(bundle, `'use strict';\nconst { join } = require('node:path');\nfunction later() { return function inner(x) { return x * 2; }; }\nmodule.exports = { file: __filename, dir: __dirname, join: join('a', 'b'), later };\n`);
  assert.equal(load(bundle).use, 'none', 'no cache made yet: a plain require');
  makeCache([bundle]);
  assert.ok(fs.statSync(`${bundle}.v8cache`).size > 0);
  const r = load(bundle, { probe: '[m.file, m.dir, m.join, m.later()(21)]' });
  assert.equal(r.use, 'used');
  assert.deepEqual(r.probe, [bundle, dir, path.join('a', 'b'), 42], 'the module sees its own file, folder and require');
  assert.equal(load(bundle, { env: { FERRY_CODE_CACHE: '0' } }).use, 'none');
  // Damaged in the middle (V8 itself checks a cache's header, not its bytes: this aborted the
  // process before the cache carried a CRC): never handed to V8, and the bundle still loads.
  const cache = `${bundle}.v8cache`;
  const good = fs.readFileSync(cache);
  const bad = Buffer.from(good);
  for (let i = bad.length >> 1; i < (bad.length >> 1) + 40 && i < bad.length; i++) bad[i]! ^= 0xff;
  fs.writeFileSync(cache, bad);
  assert.deepEqual(load(bundle, { probe: 'm.later()(4)' }), { use: 'damaged', probe: 8 });
  fs.writeFileSync(cache, good);
  assert.equal(load(bundle).use, 'used');
  const later = new Date(Date.now() + 5000);
  fs.utimesSync(bundle, later, later);
  assert.equal(load(bundle).use, 'none', 'a bundle changed after its cache was made: never the stale cache');
});

test('a variant made under flags is taken only by a process that has set exactly those flags (V8 hashes them)', { skip: NO_CRC }, () => {
  const dir = tmpDir('code-cache-flags');
  const bundle = path.join(dir, 'b.cjs');
  fs.writeFileSync(bundle, 'module.exports = { two: () => 2 };\n');
  makeCache(['--flags', '--no-flush-bytecode', '--variant', 'flagged', bundle]);
  assert.ok(fs.existsSync(`${bundle}.flagged.v8cache`));
  assert.equal(load(bundle, { variant: 'flagged' }).use, 'refused', 'no flag set: V8 refuses it (and compiles the bundle as usual)');
  assert.deepEqual(load(bundle, { variant: 'flagged', flags: '--no-flush-bytecode', probe: 'm.two()' }), { use: 'used', probe: 2 });
});

test("this build's bundles carry caches V8 takes: the CLI's and the guest thread's with no flag set, the guest thread's second one under Ferry's flags", { skip: NO_CRC }, () => {
  const main = path.join(REPO, 'dist/src/cli/main.bundle.cjs');
  const worker = path.join(REPO, 'dist/src/guest/worker.bundle.cjs');
  assert.equal(load(main, { probe: 'typeof m.main' }).use, 'used');
  assert.equal(loadOnThread(worker).use, 'used');
  assert.equal(loadOnThread(worker, { variant: 'flagged', flags: ferryV8Flags({}, []) }).use, 'used');
  assert.equal(loadOnThread(worker, { variant: 'flagged' }).use, 'refused');
});

test("the CLI takes its cache only in a process that may move its guest: run or restore with --incoming or --api-sock", () => {
  for (const argv of [['run', 'g.wasm', '--incoming', '127.0.0.1:0'], ['run', '--api-sock=/s', 'g.wasm'], ['restore', 'snap', '--incoming', ':7000'], ['restore', '--api-sock', '/s', 'snap']]) {
    assert.equal(codeCache.cliCodeCacheWanted(argv), true, argv.join(' '));
  }
  for (const argv of [['run', 'g.wasm'], ['migrate', '--api-sock', '/s', '--to', 'h:1'], ['status', '--api-sock', '/s'], ['run', '--incomingx', 'a'], []]) {
    assert.equal(codeCache.cliCodeCacheWanted(argv), false, argv.join(' '));
  }
});
