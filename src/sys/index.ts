// Kernel interfaces (no policy): the only code that loads the ferry_native addon.
export { native, K, type Bytes, type FerryNative } from './native.js';
export { SysError } from './errors.js';
export * from './fd.js';
export * from './mman.js';
export * from './uffd.js';
export * from './pagemap.js';
