// Ferry's public TypeScript API: embed guests in a Node service, move them, save and restore them.
//
//   import { Guest, MigrationSource, MigrationDestination } from 'ferry';
//   const guest = await Guest.start({ module: bytes, args: ['app'] });
//   await guest.pause(); const state = guest.capture(); guest.resume();
export { Guest, GuestError, DEFAULT_MAX_MEMORY } from './guest/guest.js';
export type { GuestExit, GuestStatus, GuestStartOptions, GuestRestoreOptions, GuestPrepareOptions, PreparedGuest } from './guest/guest.js';
export { ModuleCache } from './guest/module-cache.js';
export { keepGuestThreadReady } from './guest/spare-worker.js';
export { ModuleRejected, instrumentModule } from './guest/instrument.js';
export { encodeGuestState, decodeGuestState, validateGuestState } from './state/guest-state.js';
export type { GuestState } from './state/guest-state.js';
export type { Preopen, StdioBinding, WasiState } from './wasi/wasi.js';

export { GuestMemory, HOST_PAGE_SIZE, WASM_PAGE_SIZE } from './memory/guest-memory.js';

export { MigrationSource, SOURCE_DEFAULTS } from './migration/send/source.js';
export type { SourceOptions } from './migration/send/source.js';
export { MigrationDestination, DEFAULT_RECOVER_TIMEOUT_S } from './migration/receive/destination.js';
export type { DestinationOptions, IncomingResult, DestinationSummary } from './migration/receive/destination.js';
export { MigrationError } from './migration/session/report.js';
export type { MigrationReport, MigrationProgress, PostcopyReport } from './migration/session/report.js';
export type { Security } from './migration/transport/index.js';

export * as snapshot from './snapshot/index.js';

export { ApiServer } from './api/server.js';
export { ApiClient, ApiError } from './api/client.js';
export type { GuestInfo, MigrateRequest, MigrationStatus, SnapshotRequest } from './api/types.js';
