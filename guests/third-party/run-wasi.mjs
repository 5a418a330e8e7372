// Runs a WASI command module under node:wasi with the current directory preopened as "/".
// Used by build.sh to run a freshly built tool (bc's libmath generator) during the build.
import { readFileSync } from 'node:fs';
import { WASI } from 'node:wasi';
const [file, ...args] = process.argv.slice(2);
const wasi = new WASI({ version: 'preview1', args: [file, ...args], env: {}, preopens: { '/': process.cwd() } });
const mod = await WebAssembly.compile(readFileSync(file));
const instance = await WebAssembly.instantiate(mod, wasi.getImportObject());
process.exitCode = wasi.start(instance);
