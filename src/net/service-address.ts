// The service address a guest's clients connect to (`ADDR/PREFIX@IFACE`), moved with the guest:
// the destination adds it and announces it, the source removes it. Addresses are added and removed
// with one rtnetlink request each (sys/netlink.ts: RTM_NEWADDR / RTM_DELADDR, what `ip addr
// add|del` sends), inside the downtime: an `ip` process spawned for each cost about 25 ms there.
// `holds` still reads `ip -o addr show` (at SETUP, outside the downtime). IPv4 only for now: IPv6
// needs an unsolicited neighbour advertisement instead of the gratuitous ARP.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import { isIPv4 } from 'node:net';
import { announceIpv4, interfaceIndex, ipv4Bytes } from './announce.js';
import { changeIpv4Address } from '../sys/netlink.js';

export interface ServiceAddress {
  address: string;
  prefix: number;
  iface: string;
}

/** Parses `ADDR/PREFIX@IFACE` (e.g. 10.0.0.5/24@eth0). */
export function parseServiceAddress(text: string): ServiceAddress {
  const m = /^([^/@]+)\/(\d{1,2})@([^\s/@]{1,15})$/.exec(text);
  if (!m) throw new Error(`service address ${JSON.stringify(text)}: expected ADDR/PREFIX@IFACE, e.g. 10.0.0.5/24@eth0`);
  const [, address, prefixText, iface] = m as unknown as [string, string, string, string];
  if (!isIPv4(address)) throw new Error(`service address ${text}: ${address} is not an IPv4 address (IPv6 is not supported yet)`);
  const prefix = Number(prefixText);
  if (prefix < 1 || prefix > 32) throw new Error(`service address ${text}: prefix must be 1..32`);
  return { address, prefix, iface };
}

export function formatServiceAddress(s: ServiceAddress): string {
  return `${s.address}/${s.prefix}@${s.iface}`;
}

function ip(args: string[]): string {
  try {
    return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    throw new Error(`ip ${args.join(' ')}: ${(e.stderr ?? '').trim() || e.message}`);
  }
}

/** Why this host cannot take the address, or null if it can (checked before a commit). */
export function cannotTake(s: ServiceAddress): string | null {
  if (!fs.existsSync(`/sys/class/net/${s.iface}`)) return `no interface ${s.iface} here`;
  if (holds(s)) return `${s.address} is already on ${s.iface} here`;
  return null;
}

/** Whether the address is on its interface in this network namespace. */
export function holds(s: ServiceAddress): boolean {
  if (!fs.existsSync(`/sys/class/net/${s.iface}`)) return false;
  const out = ip(['-o', '-4', 'addr', 'show', 'dev', s.iface]);
  return out.split('\n').some((line) => line.includes(` inet ${s.address}/`));
}

/** Adds the address to its interface and announces it (gratuitous ARP, `announcements` times). */
export function takeAddress(s: ServiceAddress, announcements = 3): void {
  changeIpv4Address('add', interfaceIndex(s.iface), ipv4Bytes(s.address), s.prefix);
  announceIpv4(s.iface, s.address, announcements);
}

/** Removes the address from its interface. */
export function releaseAddress(s: ServiceAddress): void {
  changeIpv4Address('del', interfaceIndex(s.iface), ipv4Bytes(s.address), s.prefix);
}


