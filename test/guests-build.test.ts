// guests/build.sh must reproduce the committed guests/build/*.wasm byte for byte: the committed
// modules are what the demo runs on a machine without clang, so they must match the sources.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHash } from 'node:crypto';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const guestsDir = join(repoRoot, 'guests');
const clangPresent = spawnSync('clang', ['--version']).status === 0;
const sha256 = (path: string): string => createHash('sha256').update(readFileSync(path)).digest('hex');

// clang is a test dependency (scripts/ensure-test-deps.sh installs it): missing, this fails, never skips.
test('guests/build.sh rebuilds byte-identical modules', () => {
  assert.ok(clangPresent, 'clang is not installed (sh scripts/ensure-test-deps.sh)');
  // Build a copy elsewhere (twice) so the test never rewrites files in the checkout.
  const committed = readdirSync(join(guestsDir, 'build')).filter((f) => f.endsWith('.wasm')).sort();
  assert.deepEqual(committed, ['compute.wasm', 'fileio.wasm', 'kvserver.wasm', 'memtouch.wasm']);
  const work = mkdtempSync(join(tmpdir(), 'ferry-guest-build-'));
  try {
    for (const copy of ['a', 'b']) {
      const dir = join(work, copy);
      const builtDir = join(guestsDir, 'build');
      cpSync(guestsDir, dir, { recursive: true, filter: (src) => src !== builtDir && !src.startsWith(builtDir + '/') });
      execFileSync('sh', [join(dir, 'build.sh')], { stdio: 'pipe' });
      for (const f of committed) {
        assert.equal(sha256(join(dir, 'build', f)), sha256(join(guestsDir, 'build', f)), `${copy}/build/${f} differs from the committed module`);
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
