// The list of preview1 names the guest runtime checks modules against must match what Wasi provides.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { WASI_PREVIEW1_FUNCTIONS } from '../src/wasi/functions.js';
import { Wasi } from '../src/wasi/wasi.js';

test('WASI_PREVIEW1_FUNCTIONS is exactly the set of functions Wasi implements', () => {
  const wasi = new Wasi({ args: [], env: {}, preopens: [], stdio: { stdin: 0, stdout: 1, stderr: 2 } }, { pauseRequested: () => false, unwind: () => {} });
  assert.deepEqual([...Object.keys(wasi.imports)].sort(), [...WASI_PREVIEW1_FUNCTIONS].sort());
  for (const f of Object.values(wasi.imports)) assert.equal(typeof f, 'function');
  wasi.close();
});
