// The migration wire format: frames, typed messages, stream checks. See docs/wire-format.md.
export * from './errors.js';
export * from './limits.js';
export * from './types.js';
export * from './frame.js';
export * from './messages.js';
export * from './chunks.js';
export * from './page-checker.js';
