// Small checking helpers for loading state from untrusted bytes: every error names the field.
export class StateError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'StateError';
  }
}

export function obj(x: unknown, field: string): Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw new StateError(`${field}: expected an object`);
  return x as Record<string, unknown>;
}

export function arr(x: unknown, field: string, max = 1 << 20): unknown[] {
  if (!Array.isArray(x)) throw new StateError(`${field}: expected an array`);
  if (x.length > max) throw new StateError(`${field}: more than ${max} entries`);
  return x;
}

export function int(x: unknown, field: string, min = 0, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof x !== 'number' || !Number.isInteger(x) || x < min || x > max) {
    throw new StateError(`${field}: expected an integer in [${min}, ${max}], got ${JSON.stringify(x)}`);
  }
  return x;
}

export function str(x: unknown, field: string, pattern?: RegExp, maxLen = 4096): string {
  if (typeof x !== 'string' || x.length > maxLen) throw new StateError(`${field}: expected a string of at most ${maxLen} characters`);
  if (pattern && !pattern.test(x)) throw new StateError(`${field}: malformed value ${JSON.stringify(x.slice(0, 80))}`);
  return x;
}
