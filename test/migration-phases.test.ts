// The migration phase table: the moves each side makes on its real paths are legal, the ones that
// would misreport a migration are not, and PhaseLog refuses an illegal move loudly.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { PHASE_MOVES, PhaseLog, phaseMoveAllowed } from '../src/migration/session/phases.js';
import type { MigrationPhase } from '../src/migration/session/report.js';

function walk(path: MigrationPhase[]): PhaseLog {
  const log = new PhaseLog('source');
  for (const p of path) log.enter(p);
  return log;
}

test('the paths a migration takes are legal moves', () => {
  walk(['handshake', 'precopy', 'switchover', 'verifying', 'completed']); // precopy
  walk(['handshake', 'precopy', 'switchover', 'postcopy', 'verifying', 'completed']); // postcopy, source
  walk(['handshake', 'precopy', 'switchover', 'postcopy', 'completed']); // postcopy, destination
  walk(['handshake', 'precopy', 'switchover', 'postcopy', 'postcopy-paused', 'postcopy', 'verifying', 'postcopy-paused', 'postcopy', 'completed']);
  assert.equal(walk(['handshake', 'precopy', 'failed']).current, 'failed');
  assert.equal(walk(['handshake', 'cancelled']).current, 'cancelled');
  assert.equal(walk(['handshake', 'handshake']).current, 'handshake', 'the same phase again is no move');
  walk(['handshake', 'connecting', 'handshake', 'precopy']); // a destination refused one source's SETUP, then took another
});

test('moves that would misreport a migration are refused', () => {
  assert.equal(phaseMoveAllowed('precopy', 'postcopy'), false, 'postcopy only after a switchover');
  assert.equal(phaseMoveAllowed('connecting', 'postcopy'), false);
  assert.equal(phaseMoveAllowed('completed', 'failed'), false, 'nothing leaves an ended migration');
  assert.equal(phaseMoveAllowed('failed', 'postcopy'), false);
  assert.equal(phaseMoveAllowed('precopy', 'postcopy-paused'), false, 'recovery exists only after the commit');
  assert.equal(phaseMoveAllowed('switchover', 'completed'), false);
  assert.equal(phaseMoveAllowed('precopy', 'connecting'), false, 'once pages move, a session is not given up for another');
  const log = walk(['handshake', 'precopy']);
  assert.throws(() => log.enter('postcopy'), /precopy -> postcopy is not a legal move/);
  assert.equal(log.current, 'precopy', 'a refused move leaves the phase as it was');
});

test('every phase is in the table, and only ended phases have no way out', () => {
  for (const [from, to] of Object.entries(PHASE_MOVES) as [MigrationPhase, readonly MigrationPhase[]][]) {
    const ended = from === 'completed' || from === 'failed' || from === 'cancelled';
    assert.equal(to.length === 0, ended, from);
    for (const t of to) assert.ok(t in PHASE_MOVES, `${from} -> ${t}`);
  }
});
