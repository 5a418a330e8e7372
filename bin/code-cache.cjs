// V8 code caches for the one-file bundles (scripts/bundle.mjs), made when they are built and used
// when they are loaded, so that the functions of Ferry's that a process calls are not parsed and
// compiled while it runs.
//
// V8 compiles a function when it is first called. Some first calls come at the worst time: a
// migration's switchover runs code that never ran before in either process (a profile of the
// destination inside its downtime: four samples in ten parsing or making bytecode). `makeCodeCache`
// compiles every function of a bundle (V8's --no-lazy, set back before the cache is taken) and
// `requireBundle` loads the bundle with that cache. V8 refuses a cache made under other flags than
// the loading process has at that moment (it hashes them), so a bundle loaded after Ferry has set
// its own (src/guest/tiering.ts) needs a cache made under those: a variant, named when it is made.
// A cache older than its bundle is never used; one V8 refuses (another Node, a flag on the command
// line) costs a plain compile, as if there were none. A damaged one is never handed to V8: V8 checks
// a cache's version, flags and source length, not its bytes (a release build has no checksum check),
// and a few flipped bytes in one aborted the process (`Check failed` in its deserializer). So each
// file starts with a CRC-32 of the rest (zlib.crc32: 2 ms to load and check the CLI's 1.3 MB, where
// node:crypto alone took 12-19 ms to load in a thread), and one that does not match is not used.
// FERRY_CODE_CACHE=0 turns them off.
// Hand-written CommonJS, like bin/ferry.js: it runs before any bundle is loaded, and as the first
// script of a guest's thread (dist/src/guest/worker.boot.cjs, which scripts/bundle.mjs writes).
// bin/ferry.js loads this file first thing (its freshness rule, and which commands take the CLI's
// cache): what only a load with a cache needs (node:vm, node:module, node:zlib) is required there.
'use strict';
const { readFileSync, renameSync, statSync, writeFileSync } = require('node:fs');
const { dirname } = require('node:path');

/**
 * Whether `file` exists and is no older than `than` (what it was made from, or after). The rule
 * every made file here is used by (a bundle against the module tsc wrote, a cache against its
 * bundle): tsc rewrites every output, so what was made before it is stale, never used.
 */
function noOlderThan(file, than) {
  try {
    return statSync(file).mtimeMs >= statSync(than).mtimeMs;
  } catch {
    return false; // not made (tsc alone, or a build without scripts/bundle.mjs' last step)
  }
}

/**
 * Whether a `ferry` command line loads the CLI's bundle with its cache: a process that may move
 * its guest (`run`/`restore` with `--incoming`, a destination, or `--api-sock`, a guest a
 * migration may take), so that a switchover compiles nothing inside its downtime. Others load it
 * as it is: taking every function of it from the cache took longer than compiling the few a
 * plain `ferry run` calls (a trivial cmark, 20 alternating runs, 2026-12-08: 267 against 254 ms).
 */
function cliCodeCacheWanted(argv) {
  return (argv[0] === 'run' || argv[0] === 'restore') && argv.some((a) => /^--(incoming|api-sock)(=|$)/.test(a));
}

/** Where a bundle's cache (of `variant`, or the one for a process with no flag set) is kept: beside it. */
const cacheFile = (bundle, variant = null) => `${bundle}${variant ? `.${variant}` : ''}.v8cache`;

/** The CRC-32 of `data`, or null where this Node has no zlib.crc32 (before 20.15): no cache is used then. */
function crc32(data) {
  const { crc32: crc } = require('node:zlib');
  return typeof crc === 'function' ? crc(data) >>> 0 : null;
}

/** The cache's V8 data, if caches are on and it is no older than the bundle; 'damaged' if its CRC does not match. */
function freshCache(bundle, variant) {
  const path = cacheFile(bundle, variant);
  if (process.env.FERRY_CODE_CACHE === '0' || !noOlderThan(path, bundle)) return null;
  const file = readFileSync(path);
  const data = file.subarray(4);
  const crc = crc32(data);
  if (crc === null) return null;
  return file.length > 4 && file.readUInt32LE(0) === crc ? data : 'damaged';
}

/** What requireBundle did with each bundle's cache: 'used', 'refused' (by V8), 'damaged' (its CRC) or 'none' (no fresh one). */
const uses = new Map();
const cacheUse = (path) => uses.get(require.resolve(path)) ?? null;

/** The bundle's code, wrapped as Node wraps a CommonJS module: each cache is made of, and for, this text. */
const wrapped = (bundle) => require('node:module').wrap(readFileSync(bundle, 'utf8'));

/**
 * `require(bundle)`, with its code cache of `variant` when there is a fresh one. The bundles are
 * self-contained CommonJS with no `import()` (which a vm.Script could not run): a module object, a
 * require relative to the bundle and its file name are all they need.
 */
function requireBundle(path, variant = null) {
  const bundle = require.resolve(path);
  const cachedData = freshCache(bundle, variant);
  if (!cachedData || cachedData === 'damaged') {
    uses.set(bundle, cachedData || 'none');
    return require(bundle);
  }
  const script = new (require('node:vm').Script)(wrapped(bundle), { filename: bundle, cachedData });
  uses.set(bundle, script.cachedDataRejected ? 'refused' : 'used');
  const Module = require('node:module');
  const mod = new Module(bundle, module);
  mod.filename = bundle;
  require.cache[bundle] = mod; // a later require() of the bundle finds this one
  try {
    script.runInThisContext().call(mod.exports, mod.exports, Module.createRequire(bundle), mod, bundle, dirname(bundle));
  } catch (err) {
    delete require.cache[bundle];
    throw err;
  }
  mod.loaded = true;
  return mod.exports;
}

/**
 * Compiles every function of `bundle` and writes its cache (its CRC-32, then V8's data), under
 * `flags` as `variant` if given (the flags stay set: call it in a process of its own, as
 * scripts/bundle.mjs does). Returns the data's size (0: none written).
 */
function makeCodeCache(bundle, flags = null, variant = null) {
  const v8 = require('node:v8');
  if (flags) v8.setFlagsFromString(flags);
  v8.setFlagsFromString('--no-lazy');
  let script;
  try {
    script = new (require('node:vm').Script)(wrapped(bundle), { filename: bundle });
  } finally {
    v8.setFlagsFromString('--lazy'); // back to the flags a loading process has: V8 checks them
  }
  const data = script.createCachedData();
  const crc = crc32(data);
  if (crc === null) return 0; // this Node could not check it when loading: none is written
  const head = Buffer.alloc(4);
  head.writeUInt32LE(crc, 0);
  const file = cacheFile(bundle, variant);
  const tmp = `${file}.${process.pid}.tmp`;
  writeFileSync(tmp, Buffer.concat([head, data]));
  renameSync(tmp, file);
  return data.length;
}

module.exports = { requireBundle, makeCodeCache, cacheFile, cacheUse, noOlderThan, cliCodeCacheWanted };

// `node bin/code-cache.cjs [--flags FLAGS --variant NAME] BUNDLE...` (scripts/bundle.mjs).
if (require.main === module) {
  const args = process.argv.slice(2);
  let flags = null;
  let variant = null;
  if (args[0] === '--flags') {
    flags = args[1];
    if (args[2] !== '--variant' || !args[3]) throw new Error('--flags needs --variant NAME after it');
    variant = args[3];
    args.splice(0, 4);
  }
  for (const bundle of args) makeCodeCache(bundle, flags, variant);
}
