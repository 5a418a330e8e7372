// Test helpers for the transport tests: a throwaway CA and certificates made with the openssl CLI.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestPki {
  ca: string;
  serverCert: string;
  serverKey: string;
  clientCert: string;
  clientKey: string;
  /** A second, unrelated CA and a client certificate it signed. */
  otherCa: string;
  otherClientCert: string;
  otherClientKey: string;
}

export function makeTestPki(): TestPki {
  const dir = mkdtempSync(join(tmpdir(), 'ferry-pki-'));
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  try {
    const ca = (name: string) => {
      ssl('req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${name}`);
    };
    const leaf = (name: string, signer: string, ext: string) => {
      ssl('req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
      writeFileSync(join(dir, `${name}.ext`), ext);
      ssl('x509', '-req', '-in', `${name}.csr`, '-CA', `${signer}.crt`, '-CAkey', `${signer}.key`, '-CAcreateserial', '-out', `${name}.crt`, '-days', '2', '-extfile', `${name}.ext`);
    };
    ca('ca');
    ca('otherca');
    leaf('server', 'ca', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n');
    leaf('client', 'ca', 'extendedKeyUsage=clientAuth\n');
    leaf('otherclient', 'otherca', 'extendedKeyUsage=clientAuth\n');
    const r = (f: string) => readFileSync(join(dir, f), 'utf8');
    return {
      ca: r('ca.crt'),
      serverCert: r('server.crt'),
      serverKey: r('server.key'),
      clientCert: r('client.crt'),
      clientKey: r('client.key'),
      otherCa: r('otherca.crt'),
      otherClientCert: r('otherclient.crt'),
      otherClientKey: r('otherclient.key'),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
