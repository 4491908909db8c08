// match.ts — policy evaluation for new flows (DESIGN §6): first match wins.
//
// Theory of operation
// The orchestrator compiles a policy (orchestrator/src/engine/policy-table.ts) into one of two slots
// at POLICY_BASE and then flips ST_POLICY_ACTIVE, so a running sandbox can be given a new policy
// and the very next new flow sees it; the slot in force is never written. Evaluation runs once
// per new flow (TCP SYN, first UDP datagram of a flow), never per established packet: a linear
// scan of fixed 64-byte records, each tested on the cheap fields first (direction, protocol,
// ports) and the address last.
//
// Addresses are 16 bytes, IPv4 as ::ffff:a.b.c.d. Groups are disjoint and tested in the order
// Host > Metadata > Loopback > Private > LinkLocal > Multicast > Public; an IPv6 address that
// carries an IPv4 address is first rewritten to the mapped form, so groups and CIDR rules judge
// it by that IPv4 address and no IPv6 spelling reaches what its IPv4 form may not. The forms
// (orchestrator/src/model/groups.ts has the same list; one test table holds both):
//   ::ffff:a.b.c.d mapped · ::a.b.c.d compatible · ::ffff:0:a.b.c.d SIIT (RFC 6145)
//   64:ff9b::a.b.c.d NAT64 (RFC 6052) · 2002:AABB:CCDD::/48 6to4 (RFC 3056, the /48's IPv4)
//   2001:0::/32 Teredo (RFC 4380: the client's IPv4, stored inverted in the last 32 bits)
// Every group but Host comes from one table, the IANA special-purpose registries with their
// sources (orchestrator/src/model/special-purpose.ts, which also says which group each range
// falls into and why), compiled into comparisons by engine-wasm/gen-groups.mjs (groups.gen.ts);
// the orchestrator's classifyAddress reads the same table. The local-use NAT64 prefix
// 64:ff9b:1::/48 is there as Private: it may embed its IPv4 at any of several offsets.
//
// Domain and DomainSuffix rules match through the pin set (DNS answers this sandbox received),
// which the DNS interceptor fills; without a pin they match nothing: a hard-coded IP never
// matches a domain rule.

import {
  ST_POLICY_ACTIVE, POLICY_BASE, POLICY_SLOT_BYTES, POLICY_HEADER_BYTES, POLICY_RULE_BYTES,
  PR_ACTION, PR_DIRECTION, PR_PROTO, PR_KIND, PR_GROUP, PR_PREFIX, PR_PORT_LO, PR_PORT_HI, PR_NAME,
  PR_ADDR, PR_HAS_PORTS, POLICY_ADDR_SCRATCH, GROUP_HOST, CFG_GATEWAY_IP4, CFG_GATEWAY_IP6, CFG_GATEWAY_LL6,
  HOST_ADDR_ACTIVE, HOST_ADDR_BASE, HOST_ADDR_SLOT_BYTES, HOST_ADDR_MAX, HOST_ADDR_ENTRY_BYTES,
  PH_RULE_COUNT, PH_DEFAULT_ACTION, PH_DENY_RESPONSE, PH_DEFAULT_INBOUND,
  RULE_ANY, RULE_CIDR, RULE_DOMAIN, RULE_DOMAIN_SUFFIX, RULE_GROUP,
} from "../layout";
import { eq16 } from "../wire/bytes";
import { pinMatches } from "./pinset";
import { tableGroup4, tableGroup6 } from "./groups.gen";

/**
 * Write the canonical form of `addr` at `out`: an IPv6 address that carries an IPv4 address
 * (compatible ::a.b.c.d, NAT64 64:ff9b::a.b.c.d) becomes ::ffff:a.b.c.d, so groups and IPv4
 * CIDR rules judge every spelling of an IPv4 address alike. :: and ::1 stay as they are.
 */
function canonical(addr: usize, out: usize): void {
  const hi = load<u64>(addr);
  const w2 = load<u32>(addr, 8);
  let v4 = load<u32>(addr, 12);
  let carried = (hi == 0 && w2 == 0 && v4 != 0 && v4 != 0x01000000) || // compatible (not :: or ::1)
    (hi == 0 && w2 == 0x0000ffff) || // SIIT ::ffff:0:a.b.c.d
    (hi == 0x9bff6400 && w2 == 0); // NAT64 64:ff9b::/96
  if (!carried && load<u16>(addr) == 0x0220) { v4 = load<u32>(addr, 2); carried = true; } // 6to4 2002::/16
  else if (!carried && load<u32>(addr) == 0x00000120) { v4 = ~v4; carried = true; } // Teredo 2001::/32
  if (carried) {
    store<u64>(out, 0);
    store<u32>(out, 0xffff0000, 8);
    store<u32>(out, v4, 12);
  } else {
    v128.store(out, v128.load(addr));
  }
}

/** Canonicalise the address at `p` in place. */
export function canonicalAt(p: usize): void {
  canonical(p, POLICY_ADDR_SCRATCH);
  v128.store(p, v128.load(POLICY_ADDR_SCRATCH));
}

/**
 * True when the canonical address is one of the host's own: an address, or a prefix the host
 * treats as local altogether (AnyIP), in the table in force.
 */
function isHostAddress(addr: usize): bool {
  const slot = HOST_ADDR_BASE + <usize>(atomic.load<u32>(HOST_ADDR_ACTIVE) & 1) * HOST_ADDR_SLOT_BYTES;
  const n = min<u32>(load<u32>(slot), HOST_ADDR_MAX);
  const a0 = bswap<u64>(load<u64>(addr));
  const a1 = bswap<u64>(load<u64>(addr, 8));
  for (let i: u32 = 0; i < n; i++) {
    const e = slot + 16 + <usize>i * HOST_ADDR_ENTRY_BYTES;
    if (inPrefix(a0, a1, e, <u32>load<u8>(e, 16))) return true;
  }
  return false;
}

/**
 * The group of a canonical 16-byte address. Host: this sandbox's gateway addresses, and every
 * address of the host itself (reaching 203.0.113.1 on the host's uplink is reaching the host).
 */
export function classify(addr: usize): u32 {
  const hi = load<u64>(addr);
  const w2 = load<u32>(addr, 8);
  const v4 = load<u32>(addr, 12);
  if (hi == 0 && w2 == 0xffff0000) { // ::ffff:a.b.c.d
    if (v4 == load<u32>(CFG_GATEWAY_IP4) || isHostAddress(addr)) return GROUP_HOST;
    return tableGroup4(bswap<u32>(v4));
  }
  if (eq16(addr, CFG_GATEWAY_IP6) || eq16(addr, CFG_GATEWAY_LL6) || isHostAddress(addr)) return GROUP_HOST;
  return tableGroup6(bswap<u64>(hi), bswap<u64>(load<u64>(addr, 8)));
}

/** The group of any spelling of an address (tests and tools; the engine canonicalises once). */
export function classifyAny(addr: usize): u32 {
  canonical(addr, POLICY_ADDR_SCRATCH);
  return classify(POLICY_ADDR_SCRATCH);
}

/** True when the address (big-endian halves a0:a1) lies in the rule's network (prefix of 128 bits). */
@inline function inPrefix(a0: u64, a1: u64, net: usize, prefix: u32): bool {
  if (prefix == 0) return true;
  const n0 = bswap<u64>(load<u64>(net));
  if (prefix <= 64) {
    const m: u64 = prefix == 64 ? 0xffffffffffffffff : ~(0xffffffffffffffff >> <u64>prefix);
    return (a0 & m) == n0;
  }
  if (a0 != n0) return false;
  const m: u64 = prefix == 128 ? 0xffffffffffffffff : ~(0xffffffffffffffff >> <u64>(prefix - 64));
  return (a1 & m) == bswap<u64>(load<u64>(net, 8));
}

/**
 * Evaluate the policy in force for a new flow: `proto` (PROTO_*), remote address `addr`
 * (16 bytes), remote `port` (0 for ICMP), `direction` (DIR_*). Returns
 * (rule index + 1) * 2 + action, i.e. bit 0 is the action (POLICY_DENY) and the rest the rule that
 * decided (0 = the default action).
 */
export function policyEvaluate(proto: u32, addr: usize, port: u32, direction: u32): u32 {
  const slot = POLICY_BASE + <usize>(atomic.load<u32>(ST_POLICY_ACTIVE) & 1) * POLICY_SLOT_BYTES;
  const n = load<u32>(slot, PH_RULE_COUNT);
  // CIDR rules match the address as the guest wrote it or in its canonical form: a rule about
  // 2002::/16 or 64:ff9b::/96 itself still matches after the IPv4 inside was brought out.
  const r0 = bswap<u64>(load<u64>(addr));
  const r1 = bswap<u64>(load<u64>(addr, 8));
  canonical(addr, POLICY_ADDR_SCRATCH);
  addr = POLICY_ADDR_SCRATCH;
  const a0 = bswap<u64>(load<u64>(addr));
  const a1 = bswap<u64>(load<u64>(addr, 8));
  let group: u32 = 0xff; // computed on first need
  let r = slot + POLICY_HEADER_BYTES;
  for (let i: u32 = 0; i < n; i++, r += POLICY_RULE_BYTES) {
    if (<u32>load<u8>(r, PR_DIRECTION) != direction) continue;
    const p = <u32>load<u8>(r, PR_PROTO);
    if (p != 0 && p != proto) continue;
    const lo = <u32>load<u16>(r, PR_PORT_LO);
    const hi = <u32>load<u16>(r, PR_PORT_HI);
    if (load<u8>(r, PR_HAS_PORTS) && (port < lo || port > hi)) continue;
    const kind = <u32>load<u8>(r, PR_KIND);
    if (kind == RULE_GROUP) {
      if (group == 0xff) group = classify(addr);
      if (group != <u32>load<u8>(r, PR_GROUP)) continue;
    } else if (kind == RULE_CIDR) {
      const prefix = load<u8>(r, PR_PREFIX);
      if (!inPrefix(a0, a1, r + PR_ADDR, prefix) && !inPrefix(r0, r1, r + PR_ADDR, prefix)) continue;
    } else if (kind == RULE_DOMAIN || kind == RULE_DOMAIN_SUFFIX) {
      if (!pinMatches(addr, load<u32>(r, PR_NAME))) continue;
    } else if (kind != RULE_ANY) {
      continue; // unknown kind from a newer compiler: never matches (fail closed for allows)
    }
    return ((i + 1) << 1) | <u32>load<u8>(r, PR_ACTION);
  }
  return load<u32>(slot + (direction ? PH_DEFAULT_INBOUND : PH_DEFAULT_ACTION)) & 1; // the default outbound or inbound action
}

/** The deny response of the policy in force (DENY_*). */
export function policyDenyResponse(): u32 {
  const slot = POLICY_BASE + <usize>(atomic.load<u32>(ST_POLICY_ACTIVE) & 1) * POLICY_SLOT_BYTES;
  return load<u32>(slot, PH_DENY_RESPONSE);
}
