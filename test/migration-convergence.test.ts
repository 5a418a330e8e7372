// The decision taken after each precopy pass (src/migration/send/convergence.ts), as a pure function.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AUTO_POSTCOPY_BUDGET, FUTILE_AHEAD_SHARE, FUTILE_PASS_MIN_COVER, FUTILE_PASS_SHARE, STALL_PASSES, decideAfterPass, passZeroFutile, type PassMeasure } from '../src/migration/send/convergence.js';

const GiB = 1024 ** 3;
const base: PassMeasure = {
  mode: 'auto', expectedDowntimeMs: 500, downtimeTargetMs: 20, stalledPasses: 0, elapsedS: 1, precopyTimeoutS: 60,
  nextTotalBytes: 0.5 * GiB, memoryBytes: GiB,
};
const d = (m: Partial<PassMeasure>) => decideAfterPass({ ...base, ...m });

test('a rest that fits the downtime target stops and copies, in every mode', () => {
  for (const mode of ['auto', 'precopy', 'postcopy'] as const) {
    assert.equal(d({ mode, expectedDowntimeMs: 20 }), 'stop-and-copy');
    assert.equal(d({ mode, expectedDowntimeMs: 19, stalledPasses: 99, elapsedS: 999 }), 'stop-and-copy');
  }
});

test('postcopy mode moves to postcopy after pass 0', () => {
  assert.equal(d({ mode: 'postcopy' }), 'postcopy');
});

test('auto: another pass while precopy pays off; postcopy when it stalls, runs out of budget, or would pass one memory', () => {
  assert.equal(d({}), 'another-pass');
  assert.equal(d({ stalledPasses: 1 }), 'another-pass');
  assert.equal(d({ stalledPasses: 2 }), 'postcopy');
  assert.equal(d({ elapsedS: 60 * AUTO_POSTCOPY_BUDGET }), 'another-pass');
  assert.equal(d({ elapsedS: 60 * AUTO_POSTCOPY_BUDGET + 0.1 }), 'postcopy');
  assert.equal(d({ nextTotalBytes: GiB }), 'another-pass');
  assert.equal(d({ nextTotalBytes: GiB + 1 }), 'postcopy', 'with postcopy the total must stay within 2 x memory');
});

test('precopy: passes until it stalls STALL_PASSES times or times out, then gives up (never postcopy)', () => {
  assert.equal(d({ mode: 'precopy', stalledPasses: STALL_PASSES - 1, nextTotalBytes: 3 * GiB }), 'another-pass');
  assert.equal(d({ mode: 'precopy', stalledPasses: STALL_PASSES }), 'give-up');
  assert.equal(d({ mode: 'precopy', elapsedS: 60.5 }), 'give-up');
  for (let s = 0; s < 10; s++) assert.notEqual(d({ mode: 'precopy', stalledPasses: s, elapsedS: s * 10 }), 'postcopy');
});

test('pass 0 is futile (cut short for postcopy) once most of what it covered was written again and the guest writes ahead of it too; never in precopy mode, never judged too early', () => {
  const pageCount = 262_144;
  const covered = pageCount / 4;
  const ahead = pageCount - covered;
  const m = {
    mode: 'postcopy' as const, coveredPages: covered, pageCount,
    presentCovered: covered, writtenCovered: covered * FUTILE_PASS_SHARE, presentAhead: ahead, writtenAhead: ahead * FUTILE_AHEAD_SHARE,
  };
  assert.equal(passZeroFutile(m), true);
  assert.equal(passZeroFutile({ ...m, mode: 'auto' }), true);
  assert.equal(passZeroFutile({ ...m, mode: 'precopy' }), false, 'precopy mode needs every page before the pause');
  assert.equal(passZeroFutile({ ...m, writtenCovered: covered * FUTILE_PASS_SHARE - 1 }), false, 'a guest that leaves most of it alone');
  assert.equal(passZeroFutile({ ...m, writtenAhead: ahead * FUTILE_AHEAD_SHARE - 1 }), false, 'writes kept to what the pass crossed: the rest is worth sending');
  assert.equal(passZeroFutile({ ...m, presentAhead: 0, writtenAhead: 0 }), true, 'nothing present ahead');
  const early = Math.floor(pageCount * FUTILE_PASS_MIN_COVER) - 1;
  assert.equal(passZeroFutile({ ...m, coveredPages: early, presentCovered: early, writtenCovered: early }), false, 'too little covered to judge');
  assert.equal(passZeroFutile({ ...m, presentCovered: 0, writtenCovered: 0 }), false, 'nothing present: nothing to judge by');
});
