// Defaults of a listener's handshake limits, in a module of their own: `ferry run` shows them in
// its --help, and importing them from the transport itself would load node:tls, node:net and the
// wire protocol into every `ferry run` (≈ 90 ms of start-up), migration or not.

/** Limit on TLS handshake + HELLO for one incoming connection. */
export const DEFAULT_HANDSHAKE_MS = 5_000;
/** Connections still before HELLO_ACK at once; more are closed on arrival. */
export const DEFAULT_MAX_UNAUTHENTICATED = 64;
