// Telling a link that an IPv4 address now lives at this interface: a gratuitous ARP request
// (sender and target both the address, to the broadcast MAC), as QEMU announces a migrated NIC.
// Neighbours that cache the address update their entry at once (the kernel lets a gratuitous ARP
// override an entry even within its lock time) instead of sending to the old host until it expires.
import * as fs from 'node:fs';
import { ETH_P_ARP, sendLinkDatagram } from '../sys/packet.js';

const BROADCAST = new Uint8Array([0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);

function macBytes(text: string): Uint8Array {
  const parts = text.trim().split(':');
  if (parts.length !== 6) throw new Error(`not an Ethernet address: ${text}`);
  return new Uint8Array(parts.map((p) => parseInt(p, 16)));
}

/** The four bytes of a dotted IPv4 address. */
export function ipv4Bytes(address: string): Uint8Array {
  const parts = address.split('.').map(Number);
  if (parts.length !== 4 || parts.some((p) => !Number.isInteger(p) || p < 0 || p > 255)) throw new Error(`not an IPv4 address: ${address}`);
  return new Uint8Array(parts);
}

/** The ARP request (RFC 826 over Ethernet) announcing `address` at `mac`. */
export function gratuitousArp(mac: Uint8Array, address: string): Uint8Array {
  const ip = ipv4Bytes(address);
  const b = new Uint8Array(28);
  const v = new DataView(b.buffer);
  v.setUint16(0, 1); // hardware: Ethernet
  v.setUint16(2, 0x0800); // protocol: IPv4
  b[4] = 6;
  b[5] = 4;
  v.setUint16(6, 1); // request
  b.set(mac, 8);
  b.set(ip, 14);
  b.set(ip, 24); // target hardware address stays zero
  return b;
}

/** Sends `count` gratuitous ARPs for `address` on interface `iface` (of this process's network namespace). */
export function announceIpv4(iface: string, address: string, count = 1): void {
  const ifindex = interfaceIndex(iface);
  const mac = macBytes(fs.readFileSync(`/sys/class/net/${iface}/address`, 'utf8'));
  const packet = gratuitousArp(mac, address);
  for (let i = 0; i < count; i++) sendLinkDatagram(ifindex, ETH_P_ARP, BROADCAST, packet);
}

/** The index of interface `iface` in this process's network namespace. */
export function interfaceIndex(iface: string): number {
  try {
    return Number(fs.readFileSync(`/sys/class/net/${iface}/ifindex`, 'utf8'));
  } catch {
    throw new Error(`no interface ${iface} here`);
  }
}
