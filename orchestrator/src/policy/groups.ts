// groups.ts — the destination group of an address, in TypeScript, for the slow paths (the DNS
// interceptor's rebinding protection). The engine has its own for new flows
// (engine-wasm/assembly/policy/match.ts); test/engine/policy-match.test.ts holds both to the
// same table.
import ipaddr from "ipaddr.js";
import type { Group } from "./model.js";

const METADATA = new Set(["169.254.169.254", "fd00:ec2::254"]);

/** The group of `ip`; `gateway` lists this sandbox's gateway addresses (Group "host"). */
export function classifyAddress(ip: string, gateway: readonly string[] = []): Group {
  let a: ipaddr.IPv4 | ipaddr.IPv6 = ipaddr.parse(ip);
  if (a.kind() === "ipv6") {
    const v6 = a as ipaddr.IPv6;
    const b = v6.toByteArray();
    const carried = v6.isIPv4MappedAddress() ||
      (b.slice(0, 12).every((x) => x === 0) && !(b.slice(12).every((x) => x === 0)) && !(b[15] === 1 && b.slice(12, 15).every((x) => x === 0))) ||
      (b[0] === 0 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && b.slice(4, 12).every((x) => x === 0));
    if (carried) a = ipaddr.fromByteArray(b.slice(12));
  }
  const text = a.toString();
  if (gateway.some((g) => ipaddr.parse(g).toString() === text)) return "host";
  if (METADATA.has(text)) return "metadata";
  if (a.kind() === "ipv4") {
    const [o0, o1] = (a as ipaddr.IPv4).octets as [number, number, number, number];
    if (o0 === 127 || o0 === 0) return "loopback";
    if (o0 === 10 || (o0 === 172 && (o1 & 0xf0) === 16) || (o0 === 192 && o1 === 168) || (o0 === 100 && (o1 & 0xc0) === 64)) return "private";
    if (o0 === 169 && o1 === 254) return "link-local";
    if ((o0 & 0xf0) === 224) return "multicast";
    if ((o0 & 0xf0) === 240) return "private";
    return "public";
  }
  const b = (a as ipaddr.IPv6).toByteArray();
  if (b.every((x, i) => (i === 15 ? x <= 1 : x === 0))) return "loopback"; // :: and ::1
  if ((b[0]! & 0xfe) === 0xfc) return "private";
  if (b[0] === 0xfe && (b[1]! & 0xc0) === 0x80) return "link-local";
  if (b[0] === 0xff) return "multicast";
  return "public";
}
