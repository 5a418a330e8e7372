// Migration transport: TCP or TLS (PSK / mutual certificates), HELLO-matched channels, framed I/O.
export * from './errors.js';
export * from './security.js';
export * from './token-bucket.js';
export * from './framed-channel.js';
export * from './connect.js';
export * from './listen.js';
export * from './accept-channel.js';
