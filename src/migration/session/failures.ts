// Which errors are a broken or damaged connection (as opposed to a refusal or a bug): after the
// commit point, postcopy waits these out and reconnects instead of giving up the guest.
import { TransportError } from '../transport/index.js';
import { WireError } from '../wire/index.js';

/** The urgent channel's thread lost its connection, or ended: a channel failure like the others. */
export class UrgentChannelError extends Error {
  constructor(what: string) {
    super(`urgent channel: ${what}`);
    this.name = 'UrgentChannelError';
  }
}

export function isChannelFailure(err: unknown): boolean {
  return err instanceof TransportError || err instanceof WireError || err instanceof UrgentChannelError;
}
