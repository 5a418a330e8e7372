// fd_write from and fd_read into guest pages that are userfaultfd holes: the views go straight to the
// syscall, so the kernel itself faults on the hole and the fault server fills it (as in postcopy).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { GuestMemory, PageStateTable, FaultServer, HOST_PAGE_SIZE } from '../src/memory/index.js';
import { Wasi } from '../src/wasi/wasi.js';
import { RIGHTS, OFLAGS } from '../src/wasi/constants.js';

type Fn = (...args: (number | bigint)[]) => number;

test('fd_write from a hole and fd_read into a hole are served by the fault server', async () => {
  const mem = GuestMemory.create(1, 4);
  const PAGE_W = 4, PAGE_R = 5; // inside wasm page 0 (16 host pages)
  const image = new SharedArrayBuffer(16 * HOST_PAGE_SIZE);
  const img = new Uint8Array(image);
  for (let i = 0; i < img.length; i++) img[i] = 0x41 + ((i >> 12) % 26); // page p holds letter 'A'+p
  const view = mem.view();
  view.set(img.subarray(PAGE_W * HOST_PAGE_SIZE, (PAGE_R + 1) * HOST_PAGE_SIZE), PAGE_W * HOST_PAGE_SIZE);
  const states = new PageStateTable(mem.maxPageCount);
  states.markPending(PAGE_W);
  states.markPending(PAGE_R);
  mem.dropPages([[PAGE_W, PAGE_R + 1]]); // [start, end) runs // now holes: only the source has their bytes
  const server = await FaultServer.start(mem, states, { kind: 'buffer', image });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ferry-wasi-holes-'));
  const wasi = new Wasi({ args: [], env: {}, preopens: [{ guestPath: '/d', hostPath: dir }], stdio: { stdin: 0, stdout: 1, stderr: 2 } }, { pauseRequested: () => false, unwind: () => {} });
  try {
    wasi.setMemory(mem.memory);
    const call = (name: string, ...a: (number | bigint)[]): number => (wasi.imports[name] as Fn)(...a);
    const dv = new DataView(mem.memory.buffer);
    // Arguments live on page 0 (resident).
    const name = Buffer.from('f');
    new Uint8Array(mem.memory.buffer).set(name, 64);
    assert.equal(call('path_open', 3, 0, 64, 1, OFLAGS.CREAT, RIGHTS.FD_READ | RIGHTS.FD_WRITE | RIGHTS.FD_SEEK, 0n, 0, 128), 0);
    const fd = dv.getUint32(128, true);
    dv.setUint32(256, PAGE_W * HOST_PAGE_SIZE, true);
    dv.setUint32(260, HOST_PAGE_SIZE, true);
    assert.equal(call('fd_write', fd, 256, 1, 300), 0);
    assert.equal(dv.getUint32(300, true), HOST_PAGE_SIZE);
    assert.deepEqual(fs.readFileSync(path.join(dir, 'f')), Buffer.alloc(HOST_PAGE_SIZE, 0x41 + PAGE_W), 'the kernel read the page the server placed');

    fs.writeFileSync(path.join(dir, 'f'), 'zz');
    assert.equal(call('fd_seek', fd, 0n, 0, 320), 0);
    dv.setUint32(256, PAGE_R * HOST_PAGE_SIZE + 100, true);
    dv.setUint32(260, 50, true);
    assert.equal(call('fd_read', fd, 256, 1, 300), 0);
    assert.equal(dv.getUint32(300, true), 2);
    const page = new Uint8Array(mem.memory.buffer, PAGE_R * HOST_PAGE_SIZE, HOST_PAGE_SIZE);
    assert.equal(Buffer.from(page.subarray(100, 102)).toString(), 'zz');
    assert.equal(page[99], 0x41 + PAGE_R, 'the rest of the page came from the source');
    assert.equal(page[102], 0x41 + PAGE_R);
    assert.ok(server.stats().faults >= 2, `faults served: ${JSON.stringify(server.stats())}`);
  } finally {
    wasi.close();
    await server.stop();
  }
});
