// Guest memory: host pages of a shared WebAssembly.Memory, page sets and states, dirty tracking,
// residency, and the userfaultfd fault server with its page sources.
export * from './guest-memory.js';
export * from './page-bitmap.js';
export * from './page-state.js';
export * from './dirty-tracker.js';
export * from './residency.js';
export * from './zero-pages.js';
export * from './uffd-registration.js';
export * from './page-source.js';
export * from './fault-stats.js';
export { FaultServer, type FaultServerOptions, type PageFiles } from './fault-server.js';
