// The service-address mover (src/net/service-address.ts): parsing, and in two network namespaces
// the test makes (a peer that watches, a host that takes and releases the address): the address
// is added, announced (the peer's neighbour entry moves to the host's MAC without the peer asking),
// refused where the interface is missing, and removed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseServiceAddress } from '../src/net/service-address.js';

const CLI = fileURLToPath(new URL('./fixtures/net/service-address-cli.js', import.meta.url));
const tag = String(process.pid % 100000);
const PEER = `f16sp-${tag}`;
const HOST = `f16sh-${tag}`;

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function inHost(op: string, text: string): { ok?: boolean; holds?: boolean; cannot?: string | null; error?: string } {
  return JSON.parse(execFileSync('ip', ['netns', 'exec', HOST, process.execPath, CLI, op, text], { encoding: 'utf8' }));
}

function teardown(): void {
  for (const ns of [PEER, HOST]) {
    try {
      ip('netns', 'del', ns);
    } catch {
      /* not there */
    }
  }
}

test('ADDR/PREFIX@IFACE is parsed and bad forms are refused with the expected shape named', () => {
  assert.deepEqual(parseServiceAddress('10.0.0.5/24@eth0'), { address: '10.0.0.5', prefix: 24, iface: 'eth0' });
  for (const bad of ['10.0.0.5@eth0', '10.0.0.5/24', '10.0.0.5/33@eth0', '10.0.0.256/24@eth0', 'fd00::1/64@eth0', '10.0.0.5/24@a-name-too-long-for-linux']) {
    assert.throws(() => parseServiceAddress(bad), /service address/, bad);
  }
});

test('taking the address adds and announces it, a missing interface is refused, releasing removes it', { skip: process.getuid?.() !== 0 && 'needs root (network namespaces)' }, () => {
  teardown();
  try {
    ip('netns', 'add', PEER);
    ip('netns', 'add', HOST);
    ip('-n', PEER, 'link', 'add', 'eth0', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', HOST);
    ip('-n', PEER, 'addr', 'add', '10.79.0.1/24', 'dev', 'eth0');
    ip('-n', PEER, 'link', 'set', 'eth0', 'up');
    ip('-n', HOST, 'link', 'set', 'eth0', 'up');
    // The peer believes the service lives at another MAC, as it would after talking to the old host.
    ip('-n', PEER, 'neigh', 'replace', '10.79.0.10', 'lladdr', '02:00:00:00:00:01', 'dev', 'eth0', 'nud', 'reachable');
    const text = '10.79.0.10/24@eth0';
    const hostIndex = () => /^(\d+):/.exec(ip('-n', HOST, '-o', 'link', 'show', 'eth0'))![1];
    assert.deepEqual(inHost('check', text), { ok: true, holds: false, cannot: null });
    assert.deepEqual(inHost('check', '10.79.0.10/24@eth9'), { ok: true, holds: false, cannot: 'no interface eth9 here' });
    assert.deepEqual(inHost('take', text), { ok: true, holds: true, cannot: '10.79.0.10 is already on eth0 here' });
    const hostMac = /link\/ether ([0-9a-f:]{17})/.exec(ip('-n', HOST, 'link', 'show', 'eth0'))![1];
    assert.match(ip('-n', PEER, 'neigh', 'show', '10.79.0.10'), new RegExp(`lladdr ${hostMac}`), 'the announcement moved the peer\'s entry');
    // Taken and released with rtnetlink requests (src/sys/netlink.ts): iproute2 sees what they did,
    // and the kernel's refusals come back naming their errno.
    assert.deepEqual(inHost('take', text), { error: 'rtnetlink RTM_NEWADDR 10.79.0.10/24 on interface ' + hostIndex() + ': EEXIST' }, 'taking it twice is refused by the kernel');
    assert.match(ip('-n', HOST, '-o', '-4', 'addr', 'show', 'dev', 'eth0'), /inet 10\.79\.0\.10\/24 /, 'iproute2 sees the address with its prefix');
    assert.deepEqual(inHost('release', text), { ok: true, holds: false, cannot: null });
    assert.deepEqual(inHost('release', text), { error: 'rtnetlink RTM_DELADDR 10.79.0.10/24 on interface ' + hostIndex() + ': EADDRNOTAVAIL' }, 'releasing it twice is refused by the kernel');
  } finally {
    teardown();
  }
});
