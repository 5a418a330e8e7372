// The package's version, read from its package.json (dist/src/ → the package root) once.
import { readFileSync } from 'node:fs';

let version: string | null = null;

export function packageVersion(): string {
  if (version === null) {
    try {
      const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
      version = typeof pkg.version === 'string' ? pkg.version : 'unknown';
    } catch {
      version = 'unknown';
    }
  }
  return version;
}
