// The content hash that names a module (its identity in the guest state, the module cache and the
// migration handshake) and checks snapshot files.
import { createHash } from 'node:crypto';

export function sha256Hex(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}
