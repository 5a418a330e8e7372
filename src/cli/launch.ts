// What bin/ferry.js needs before the full program: the control commands' fast path and the start of
// the guest's thread ahead. bin/ferry.js is CommonJS and loads this module's one-file CommonJS bundle
// (scripts/bundle.mjs) with require(): an ES entry and its first imports kept the thread's start
// waiting for Node's ES loader, 15-25 ms of every `ferry run` and `ferry restore` on these machines.
export { fastPath } from './fast-path.js';
export { startSpareWorker } from '../guest/spare-worker.js';
