// groups.ts — the destination group of an address, in TypeScript, for the slow paths (the DNS
// interceptor's rebinding protection). The engine has its own for new flows
// (engine-wasm/assembly/policy/match.ts); both take every group but Host from one table, the
// special-purpose ranges of special-purpose.ts (the engine's compiled from it at build time),
// and test/engine/policy-match.test.ts holds both to every range in it.
import ipaddr from "ipaddr.js";
import type { Group } from "./policy.js";
import { SPECIAL_PURPOSE } from "./special-purpose.js";

interface TableEntry { bytes: number[]; bits: number; group: Exclude<Group, "host"> }

/** The table's ranges of one family, longest prefix first: the first that matches decides. */
function tableOf(v6: boolean): TableEntry[] {
  return SPECIAL_PURPOSE
    .filter((e) => e.group !== "carried" && e.prefix.includes(":") === v6)
    .map((e) => {
      const [net, bits] = ipaddr.parseCIDR(e.prefix);
      return { bytes: net.toByteArray(), bits, group: e.group as Exclude<Group, "host"> };
    })
    .sort((a, b) => b.bits - a.bits);
}
const TABLE4 = tableOf(false);
const TABLE6 = tableOf(true);

function inPrefix(b: readonly number[], e: TableEntry): boolean {
  const whole = e.bits >> 3;
  for (let i = 0; i < whole; i++) if (b[i] !== e.bytes[i]) return false;
  const rest = e.bits & 7;
  return rest === 0 || ((b[whole]! ^ e.bytes[whole]!) & (0xff00 >> rest) & 0xff) === 0;
}

/** The group the table gives the address `b` (4 or 16 bytes): its longest matching prefix's, else Public. */
function tableGroup(b: readonly number[]): Group {
  for (const e of b.length === 4 ? TABLE4 : TABLE6) if (inPrefix(b, e)) return e.group;
  return "public";
}

/** The four octets of a canonical dotted quad ("10.0.0.1", no leading zeros), else null. */
function dottedQuad(s: string): number[] | null {
  const out: number[] = [];
  let v = 0, digits = 0;
  for (let i = 0; i <= s.length; i++) {
    const c = i < s.length ? s.charCodeAt(i) : 46; // a final "." closes the last octet
    if (c === 46) {
      if (digits === 0 || v > 255 || out.length === 4) return null;
      out.push(v);
      v = 0;
      digits = 0;
    } else if (c >= 48 && c <= 57) {
      if (digits > 0 && v === 0) return null; // a leading zero
      v = v * 10 + (c - 48);
      if (++digits > 3) return null;
    } else {
      return null;
    }
  }
  return out.length === 4 ? out : null;
}
const zero = (b: number[], from: number, to: number) => b.slice(from, to).every((x) => x === 0);

/**
 * The IPv4 address an IPv6 address carries, in the forms the engine knows (policy/match.ts):
 * mapped, compatible, SIIT ::ffff:0:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16, Teredo
 * 2001::/32 (the client, inverted); undefined for any other address.
 */
export function carriedIPv4(b: number[]): number[] | undefined {
  if (zero(b, 0, 10) && b[10] === 0xff && b[11] === 0xff) return b.slice(12); // mapped
  if (zero(b, 0, 12) && !zero(b, 12, 16) && !(zero(b, 12, 15) && b[15] === 1)) return b.slice(12); // compatible
  if (zero(b, 0, 8) && b[8] === 0xff && b[9] === 0xff && zero(b, 10, 12)) return b.slice(12); // SIIT
  if (b[0] === 0 && b[1] === 0x64 && b[2] === 0xff && b[3] === 0x9b && zero(b, 4, 12)) return b.slice(12); // NAT64
  if (b[0] === 0x20 && b[1] === 0x02) return b.slice(2, 6); // 6to4
  if (b[0] === 0x20 && b[1] === 0x01 && b[2] === 0 && b[3] === 0) return b.slice(12).map((x) => x ^ 0xff); // Teredo
  return undefined;
}

/** A set of Group Host addresses in the form classifyAddress compares (see hostSet). */
export type HostSet = ReadonlySet<string>;

/** `addresses` (the gateway's and the host's own) normalised once, for classifyAddress. */
export function hostSet(addresses: readonly string[]): HostSet {
  return new Set(addresses.map((g) => {
    const a = ipaddr.parse(g);
    const v4 = a.kind() === "ipv6" ? carriedIPv4((a as ipaddr.IPv6).toByteArray()) : undefined;
    return v4 ? v4.join(".") : a.toString();
  }));
}

/**
 * The group of `ip`; `host` lists this sandbox's Group Host addresses (its gateway's, the host's
 * own): a list, or a hostSet() made once where this runs per DNS answer.
 */
export function classifyAddress(ip: string, host: readonly string[] | HostSet = []): Group {
  const hosts = host instanceof Set ? host : hostSet(host as readonly string[]);
  // A canonical dotted quad (what nearly every A record is) is judged without a parser.
  const quad = dottedQuad(ip);
  if (quad) return group4(ip, quad, hosts);
  let a: ipaddr.IPv4 | ipaddr.IPv6 = ipaddr.parse(ip);
  if (a.kind() === "ipv6") {
    const v4 = carriedIPv4((a as ipaddr.IPv6).toByteArray());
    if (v4) a = ipaddr.fromByteArray(v4);
  }
  const text = a.toString();
  if (a.kind() === "ipv4") return group4(text, (a as ipaddr.IPv4).octets, hosts);
  if (hosts.has(text)) return "host";
  return tableGroup((a as ipaddr.IPv6).toByteArray());
}

/** The group of an IPv4 address: `text` canonical, `octets` its four numbers. */
function group4(text: string, octets: readonly number[], hosts: HostSet): Group {
  if (hosts.has(text)) return "host";
  return tableGroup(octets);
}
