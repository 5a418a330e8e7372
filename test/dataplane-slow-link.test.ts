// The native answer thread on a slow link (native/dataplane/dp_answer.c, bulk_room_us): once the
// round trip shows a standing queue in the path, the bulk stream keeps only about a quarter of a
// millisecond of the link's rate ahead of an answer, in frames short on the wire, and a request's
// pages after its first (fault-around) follow as the bulk stream's next frames rather than with
// the answer. A real slow link: the loopback of a network namespace of its own, limited by `tc`
// tbf to 40 Mbit/s with up to 20 ms of queue, which TCP fills (no timing is asserted: what is
// checked is the shape of the frames).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ip } from './fixtures/net/topology.js';

const NS = `ferry-test-slowlink-${process.pid}`;
const FIXTURE = fileURLToPath(new URL('./fixtures/dataplane/slow-link-answer.js', import.meta.url));

test('on a slow link the bulk stream shrinks its frames, and an answer carries only the faulting page', () => {
  ip('netns', 'add', NS);
  try {
    ip('-n', NS, 'link', 'set', 'lo', 'up');
    execFileSync('ip', ['netns', 'exec', NS, 'tc', 'qdisc', 'add', 'dev', 'lo', 'root', 'tbf', 'rate', '40mbit', 'burst', '256kb', 'latency', '20ms']);
    const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, FIXTURE], { encoding: 'utf8', timeout: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as { asked: number; before: number[]; frames: Array<[number, number]> };
    assert.equal(out.before[0], 16, 'before a rate is measured, bulk frames are whole runs');
    assert.ok(out.before.slice(-3).every((n) => n < 16), `the bulk frames shrank once the link was found slow: ${out.before.join(',')}`);
    assert.deepEqual(out.frames[0], [out.asked, 1], 'the faulting page comes first, alone');
    const pages = out.frames.slice(1).flatMap(([first, n]) => Array.from({ length: n }, (_, i) => first + i)).filter((p) => p > out.asked && p < out.asked + 16);
    assert.deepEqual(pages, Array.from({ length: 15 }, (_, i) => out.asked + 1 + i), 'the fault-around pages follow, in order, each once');
    assert.ok(out.frames.slice(1).every(([, n]) => n < 15), `in short bulk frames, not one 15-page answer: ${JSON.stringify(out.frames)}`);
  } finally {
    ip('netns', 'del', NS);
  }
});
