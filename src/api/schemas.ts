// Validation of request bodies (zod): the server never hands a controller an unchecked body.
// Objects are strict so a misspelt option (e.g. "downtimeTargetMS") is an error, not ignored.
import { z } from 'zod';
import type { MigrateRequest, ResumeMigrationRequest, SnapshotRequest } from './types.js';

const nonEmpty = z.string().min(1, 'must not be empty');

const tlsSchema = z.object({
  psk: z.string().regex(/^(?:[0-9a-fA-F]{2})+$/, 'must be an even number of hex digits').optional(),
  pskIdentity: nonEmpty.optional(),
  cert: nonEmpty.optional(),
  key: nonEmpty.optional(),
  ca: nonEmpty.optional(),
  insecure: z.boolean().optional(),
}).strict();

export const migrateRequestSchema = z.object({
  to: nonEmpty,
  mode: z.enum(['precopy', 'postcopy', 'auto']).optional(),
  maxBandwidth: z.number().finite().positive().optional(),
  downtimeTargetMs: z.number().finite().nonnegative().optional(),
  precopyTimeoutS: z.number().finite().positive().optional(),
  verify: z.boolean().optional(),
  recoverTimeoutS: z.number().positive().max(86400).optional(),
  tls: tlsSchema.optional(),
  serviceAddresses: z.array(nonEmpty).max(16).optional(),
  onRelease: nonEmpty.optional(),
}).strict();

export const resumeMigrationRequestSchema = z.object({
  to: nonEmpty.optional(),
  tls: tlsSchema.optional(),
}).strict();

export const snapshotRequestSchema = z.object({
  to: nonEmpty,
  diffFrom: nonEmpty.optional(),
  resume: z.boolean().optional(),
}).strict();

// Compile-time check that the schemas and the hand-written interfaces agree both ways.
type Same<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false;
const migrateMatches: Same<z.infer<typeof migrateRequestSchema>, MigrateRequest> = true;
const snapshotMatches: Same<z.infer<typeof snapshotRequestSchema>, SnapshotRequest> = true;
void migrateMatches;
void snapshotMatches;
const resumeMatches: Same<z.infer<typeof resumeMigrationRequestSchema>, ResumeMigrationRequest> = true;
void resumeMatches;

/** Turns zod issues into one readable line: "tls.psk: must be an even number of hex digits; ...". */
export function describeIssues(error: z.ZodError): string {
  return error.issues
    .map((i) => `${i.path.length > 0 ? i.path.join('.') : 'body'}: ${i.message}`)
    .join('; ');
}
