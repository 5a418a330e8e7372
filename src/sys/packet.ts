// Link-layer datagrams (AF_PACKET, SOCK_DGRAM: the kernel adds the Ethernet header with the
// interface's own source address).
import { K, native } from './native.js';
import { sys } from './errors.js';

export const ETH_P_ARP = K('ETH_P_ARP');

/** Sends one datagram of `ethertype` to `dstMac` on interface `ifindex`; bytes sent. */
export function sendLinkDatagram(ifindex: number, ethertype: number, dstMac: Uint8Array, payload: Uint8Array): number {
  return sys(() => native.packetSend(ifindex, ethertype, dstMac, payload));
}
