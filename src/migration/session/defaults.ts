// A migration's defaults, in a module of their own: `ferry migrate --help` and `ferry run --help`
// show them without loading the migration engine (see src/cli/main.ts on start-up time).
import type { MigrationMode } from './report.js';

export const SOURCE_DEFAULTS = { mode: 'auto' as MigrationMode, downtimeTargetMs: 20, precopyTimeoutS: 60, recoverTimeoutS: 600 };

/** How long a postcopy destination waits for a lost source to reconnect, by default (s). */
export const DEFAULT_RECOVER_TIMEOUT_S = 600;
