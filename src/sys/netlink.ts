// rtnetlink requests (NETLINK_ROUTE): an IPv4 address added to or removed from an interface, as
// `ip addr add|del ADDR/PREFIX dev IFACE` does, without a process spawned for it (each `ip` run
// cost about 25 ms of a migration's downtime). The message is laid out here; the addon sends it
// and returns the kernel's answer.
import { constants } from 'node:os';
import { K, native } from './native.js';
import { sys } from './errors.js';

const errnoName = (code: number) => Object.entries(constants.errno).find(([, n]) => n === code)?.[0] ?? `errno ${code}`;

const NLMSG_HDRLEN = 16;
const IFADDRMSG_LEN = 8;
const RTA_IPV4_LEN = 8;

/** RTM_NEWADDR (fails with EEXIST if the address is there) or RTM_DELADDR (EADDRNOTAVAIL if not). */
export function changeIpv4Address(op: 'add' | 'del', ifindex: number, octets: Uint8Array, prefix: number): void {
  if (octets.length !== 4) throw new RangeError(`an IPv4 address has 4 bytes, not ${octets.length}`);
  const address = octets.join('.');
  const len = NLMSG_HDRLEN + IFADDRMSG_LEN + 2 * RTA_IPV4_LEN;
  const b = new Uint8Array(len);
  const v = new DataView(b.buffer);
  const flags = K('NLM_F_REQUEST') | K('NLM_F_ACK') | (op === 'add' ? K('NLM_F_CREATE') | K('NLM_F_EXCL') : 0);
  // struct nlmsghdr: length, type, flags, sequence, port id (0: the kernel fills it in)
  v.setUint32(0, len, true);
  v.setUint16(4, op === 'add' ? K('RTM_NEWADDR') : K('RTM_DELADDR'), true);
  v.setUint16(6, flags, true);
  v.setUint32(8, 1, true);
  // struct ifaddrmsg: family, prefix length, flags, scope, interface index
  b[16] = K('AF_INET');
  b[17] = prefix;
  b[19] = K('RT_SCOPE_UNIVERSE');
  v.setUint32(20, ifindex, true);
  // IFA_LOCAL and IFA_ADDRESS, both the address (on a broadcast link they are the same)
  for (const [at, type] of [[24, K('IFA_LOCAL')], [32, K('IFA_ADDRESS')]] as const) {
    v.setUint16(at, RTA_IPV4_LEN, true);
    v.setUint16(at + 2, type, true);
    b.set(octets, at + 4);
  }
  const code = sys(() => native.netlinkRoute(b));
  if (code !== 0) throw new Error(`rtnetlink ${op === 'add' ? 'RTM_NEWADDR' : 'RTM_DELADDR'} ${address}/${prefix} on interface ${ifindex}: ${errnoName(code)}`);
}
