// Snapshots: the on-disk format, writing full and diff snapshots of a live guest, loading and
// validating a chain, eager and lazy (userfaultfd) restore, and serving a snapshot as a migration source.
export * from './format.js';
export { writeSnapshot, type WriteSnapshotOptions, type SnapshotWriteReport } from './writer.js';
export { loadSnapshot, verifyChunks, type SnapshotChain, type SnapshotLayer } from './chain.js';
export { restoreSnapshot, prepareRestore, openLazyMemory, loadEagerly, type PreparedRestore, type LazyMemory, type RestoreSnapshotOptions, type RestoredSnapshot, type SnapshotLoadReport } from './restore.js';
export { SnapshotSession, type TakeSnapshotRequest, type TakeSnapshotResult } from './session.js';
export { serveSnapshot, type ServeSnapshotOptions, type ServeSnapshotReport } from './serve.js';
