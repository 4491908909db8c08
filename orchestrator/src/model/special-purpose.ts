// special-purpose.ts — which addresses are not the internet, as data: the IANA IPv4 and IPv6
// Special-Purpose Address Registries (RFC 6890, updated by RFC 8190) whole, plus the few blocks
// other registries set apart (multicast, the IPv6 space outside global unicast) and the cloud
// metadata endpoints. Every address group but Host (DESIGN §6) is decided here, by the longest
// prefix that contains the address; an address no entry covers is public.
//
// One table, two readers that cannot disagree: the orchestrator's classifyAddress (groups.ts:
// DNS rebinding protection) reads it, and the engine's classification of new flows is generated
// from it at build time (engine-wasm/gen-groups.mjs → engine-wasm/assembly/policy/groups.gen.ts).
// Keep this file data only — no imports but types, no code — so the generator can load it
// without the rest of the orchestrator. test/unit/special-purpose.test.ts checks the entries
// against the rules below; test/engine/policy-match.test.ts holds both readers to every range.
//
// Which group a registry entry falls into
// - Its own group where the registry names one: Loopback (127/8, ::1; also "this network" 0/8
//   and the unspecified ::, which Linux dials as this host), Link-Local (169.254/16, fe80::/10).
// - Public where the registry says "Globally Reachable: True" (anycast services, AS112, AMT,
//   ORCHIDv2, DETs): real services on the internet, nested inside blocks that are not.
// - Private for everything else that is not globally reachable: private-use and shared space,
//   IETF protocol assignments, benchmarking, reserved, deprecated and discard-only blocks, the
//   limited broadcast address. Private is their natural home: like RFC 1918 space they are
//   addresses that mean something only on some operator's network (a CGN, a benchmarking lab, a
//   NAT64 gateway, an SRv6 domain) and nothing on the internet, so public-only denies them, DNS
//   rebinding protection refuses answers carrying them, and `allow@group:private` (or a CIDR
//   rule) opens them together where a sandbox must reach one. Loopback, Link-Local and
//   Multicast each mean one precise thing these do not, and Metadata is one service.
//   A block the registry lists without a reachability (terminated: 192.88.99.0/24, 2001:10::/28)
//   is not used any more and fails closed, as Private.
// - Judged by the IPv4 address it carries (ipv4-mapped, NAT64 64:ff9b::/96, 6to4, Teredo):
//   group "carried". Policy and rebinding protection rewrite these to their IPv4 address first
//   (groups.ts carriedIPv4, the engine's canonical()), so the entries are listed for completeness
//   and never looked up.
// - EXCEPT the documentation ranges 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24 and
//   2001:db8::/32: not globally reachable by the registry, but public here, because test worlds
//   everywhere (moat's own, test/testbed/world.ts, among them) use them as stand-ins for the
//   internet, and they route nowhere, so treating them as public reaches nothing real. The newer
//   documentation block 3fff::/20 (RFC 9637, 2024) is not one of those stand-ins and follows the
//   rule: Private.
//
// Outside the special-purpose registries: multicast (224/4, ff00::/8: Multicast), the cloud
// metadata endpoints (Metadata), and IPv6 outside 2000::/3, which the IANA IPv6 Address Space
// registry keeps reserved by the IETF (site-local fec0::/10 deprecated, and the rest never
// assigned): Private, as 240/4 is for IPv4 — nothing there is the internet today.
//
// Sources: https://www.iana.org/assignments/iana-ipv4-special-registry/ and
// .../iana-ipv6-special-registry/ (both as updated 2025), .../ipv6-address-space/,
// .../multicast-addresses/, .../ipv6-multicast-addresses/.
import type { Group } from "./policy.js";

export interface SpecialRange {
  /** The block, as a CIDR with no host bits. */
  readonly prefix: string;
  /** The registry's name for it. */
  readonly name: string;
  /** The registry and the RFC (or other document) that define it. */
  readonly source: string;
  /** The registry's "Globally Reachable" column; null where it says N/A or lists none. */
  readonly globallyReachable: boolean | null;
  /** Its address group (see above); "carried": judged by the IPv4 address inside. */
  readonly group: Exclude<Group, "host"> | "carried";
}

const V4 = "IANA IPv4 Special-Purpose Address Registry";
const V6 = "IANA IPv6 Special-Purpose Address Registry";

export const SPECIAL_PURPOSE: readonly SpecialRange[] = [
  // ---- IPv4 ----
  { prefix: "0.0.0.0/8", name: "\"This network\"", source: `${V4}, RFC 791 §3.2`, globallyReachable: false, group: "loopback" },
  { prefix: "0.0.0.0/32", name: "\"This host on this network\"", source: `${V4}, RFC 1122 §3.2.1.3`, globallyReachable: false, group: "loopback" },
  { prefix: "10.0.0.0/8", name: "Private-Use", source: `${V4}, RFC 1918`, globallyReachable: false, group: "private" },
  { prefix: "100.64.0.0/10", name: "Shared Address Space", source: `${V4}, RFC 6598`, globallyReachable: false, group: "private" },
  { prefix: "127.0.0.0/8", name: "Loopback", source: `${V4}, RFC 1122 §3.2.1.3`, globallyReachable: false, group: "loopback" },
  { prefix: "169.254.0.0/16", name: "Link Local", source: `${V4}, RFC 3927`, globallyReachable: false, group: "link-local" },
  { prefix: "172.16.0.0/12", name: "Private-Use", source: `${V4}, RFC 1918`, globallyReachable: false, group: "private" },
  { prefix: "192.0.0.0/24", name: "IETF Protocol Assignments", source: `${V4}, RFC 6890 §2.1`, globallyReachable: false, group: "private" },
  { prefix: "192.0.0.0/29", name: "IPv4 Service Continuity Prefix", source: `${V4}, RFC 7335`, globallyReachable: false, group: "private" },
  { prefix: "192.0.0.8/32", name: "IPv4 dummy address", source: `${V4}, RFC 7600`, globallyReachable: false, group: "private" },
  { prefix: "192.0.0.9/32", name: "Port Control Protocol Anycast", source: `${V4}, RFC 7723`, globallyReachable: true, group: "public" },
  { prefix: "192.0.0.10/32", name: "Traversal Using Relays around NAT Anycast", source: `${V4}, RFC 8155`, globallyReachable: true, group: "public" },
  { prefix: "192.0.0.170/32", name: "NAT64/DNS64 Discovery", source: `${V4}, RFC 8880, RFC 7050 §2.2`, globallyReachable: false, group: "private" },
  { prefix: "192.0.0.171/32", name: "NAT64/DNS64 Discovery", source: `${V4}, RFC 8880, RFC 7050 §2.2`, globallyReachable: false, group: "private" },
  { prefix: "192.0.2.0/24", name: "Documentation (TEST-NET-1)", source: `${V4}, RFC 5737`, globallyReachable: false, group: "public" },
  { prefix: "192.31.196.0/24", name: "AS112-v4", source: `${V4}, RFC 7535`, globallyReachable: true, group: "public" },
  { prefix: "192.52.193.0/24", name: "AMT", source: `${V4}, RFC 7450`, globallyReachable: true, group: "public" },
  { prefix: "192.88.99.0/24", name: "Deprecated (6to4 Relay Anycast)", source: `${V4}, RFC 7526`, globallyReachable: null, group: "private" },
  { prefix: "192.88.99.2/32", name: "6a44-relay anycast address", source: `${V4}, RFC 6751`, globallyReachable: false, group: "private" },
  { prefix: "192.168.0.0/16", name: "Private-Use", source: `${V4}, RFC 1918`, globallyReachable: false, group: "private" },
  { prefix: "192.175.48.0/24", name: "Direct Delegation AS112 Service", source: `${V4}, RFC 7534`, globallyReachable: true, group: "public" },
  { prefix: "198.18.0.0/15", name: "Benchmarking", source: `${V4}, RFC 2544`, globallyReachable: false, group: "private" },
  { prefix: "198.51.100.0/24", name: "Documentation (TEST-NET-2)", source: `${V4}, RFC 5737`, globallyReachable: false, group: "public" },
  { prefix: "203.0.113.0/24", name: "Documentation (TEST-NET-3)", source: `${V4}, RFC 5737`, globallyReachable: false, group: "public" },
  { prefix: "240.0.0.0/4", name: "Reserved", source: `${V4}, RFC 1112 §4`, globallyReachable: false, group: "private" },
  { prefix: "255.255.255.255/32", name: "Limited Broadcast", source: `${V4}, RFC 8190, RFC 919 §7`, globallyReachable: false, group: "private" },
  // Outside the special-purpose registry.
  { prefix: "224.0.0.0/4", name: "Multicast", source: "IANA IPv4 Multicast Address Space Registry, RFC 5771", globallyReachable: null, group: "multicast" },
  { prefix: "169.254.169.254/32", name: "Instance metadata service", source: "AWS, GCP, Azure, OCI, DigitalOcean instance metadata", globallyReachable: false, group: "metadata" },

  // ---- IPv6 ----
  { prefix: "::1/128", name: "Loopback Address", source: `${V6}, RFC 4291`, globallyReachable: false, group: "loopback" },
  { prefix: "::/128", name: "Unspecified Address", source: `${V6}, RFC 4291`, globallyReachable: false, group: "loopback" },
  { prefix: "::ffff:0:0/96", name: "IPv4-mapped Address", source: `${V6}, RFC 4291`, globallyReachable: false, group: "carried" },
  { prefix: "64:ff9b::/96", name: "IPv4-IPv6 Translat.", source: `${V6}, RFC 6052`, globallyReachable: true, group: "carried" },
  // The local-use NAT64 prefix embeds its IPv4 at an offset the operator chooses (RFC 6052 §2.2),
  // so which IPv4 it reaches is ambiguous.
  { prefix: "64:ff9b:1::/48", name: "IPv4-IPv6 Translat.", source: `${V6}, RFC 8215`, globallyReachable: false, group: "private" },
  { prefix: "100::/64", name: "Discard-Only Address Block", source: `${V6}, RFC 6666`, globallyReachable: false, group: "private" },
  { prefix: "100:0:0:1::/64", name: "Dummy IPv6 Prefix", source: `${V6}, RFC 9780`, globallyReachable: false, group: "private" },
  { prefix: "2001::/23", name: "IETF Protocol Assignments", source: `${V6}, RFC 2928`, globallyReachable: false, group: "private" },
  { prefix: "2001::/32", name: "TEREDO", source: `${V6}, RFC 4380, RFC 8190`, globallyReachable: null, group: "carried" },
  { prefix: "2001:1::1/128", name: "Port Control Protocol Anycast", source: `${V6}, RFC 7723`, globallyReachable: true, group: "public" },
  { prefix: "2001:1::2/128", name: "Traversal Using Relays around NAT Anycast", source: `${V6}, RFC 8155`, globallyReachable: true, group: "public" },
  { prefix: "2001:1::3/128", name: "DNS-SD Service Registration Protocol Anycast Address", source: `${V6}, RFC 9665`, globallyReachable: true, group: "public" },
  { prefix: "2001:2::/48", name: "Benchmarking", source: `${V6}, RFC 5180, RFC Errata 1752`, globallyReachable: false, group: "private" },
  { prefix: "2001:3::/32", name: "AMT", source: `${V6}, RFC 7450`, globallyReachable: true, group: "public" },
  { prefix: "2001:4:112::/48", name: "AS112-v6", source: `${V6}, RFC 7535`, globallyReachable: true, group: "public" },
  { prefix: "2001:10::/28", name: "Deprecated (previously ORCHID)", source: `${V6}, RFC 4843`, globallyReachable: null, group: "private" },
  { prefix: "2001:20::/28", name: "ORCHIDv2", source: `${V6}, RFC 7343`, globallyReachable: true, group: "public" },
  { prefix: "2001:30::/28", name: "Drone Remote ID Protocol Entity Tags (DETs) Prefix", source: `${V6}, RFC 9374`, globallyReachable: true, group: "public" },
  { prefix: "2001:db8::/32", name: "Documentation", source: `${V6}, RFC 3849`, globallyReachable: false, group: "public" },
  { prefix: "2002::/16", name: "6to4", source: `${V6}, RFC 3056`, globallyReachable: null, group: "carried" },
  { prefix: "2620:4f:8000::/48", name: "Direct Delegation AS112 Service", source: `${V6}, RFC 7534`, globallyReachable: true, group: "public" },
  { prefix: "3fff::/20", name: "Documentation", source: `${V6}, RFC 9637`, globallyReachable: false, group: "private" },
  { prefix: "5f00::/16", name: "Segment Routing (SRv6) SIDs", source: `${V6}, RFC 9602`, globallyReachable: false, group: "private" },
  { prefix: "fc00::/7", name: "Unique-Local", source: `${V6}, RFC 4193, RFC 8190`, globallyReachable: false, group: "private" },
  { prefix: "fe80::/10", name: "Link-Local Unicast", source: `${V6}, RFC 4291`, globallyReachable: false, group: "link-local" },
  // Outside the special-purpose registry.
  { prefix: "::/0", name: "Reserved by IETF (outside Global Unicast)", source: "IANA IPv6 Address Space Registry, RFC 4291, RFC 3879 (fec0::/10)", globallyReachable: false, group: "private" },
  { prefix: "2000::/3", name: "Global Unicast", source: "IANA IPv6 Address Space Registry, RFC 4291", globallyReachable: true, group: "public" },
  { prefix: "ff00::/8", name: "Multicast", source: "IANA IPv6 Multicast Address Space Registry, RFC 4291 §2.7", globallyReachable: null, group: "multicast" },
  { prefix: "fd00:ec2::254/128", name: "Instance metadata service (IPv6)", source: "AWS instance metadata", globallyReachable: false, group: "metadata" },
];

/** The documentation ranges that stay public (see the top of this file). */
export const DOCUMENTATION_STAND_INS: readonly string[] = ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32"];
