// policy-table.ts — a NetworkPolicy, compiled into the engine's policy table (engine-wasm/assembly/
// policy/match.ts reads it; layout.ts PR_* gives the record). Two slots: a running engine keeps
// reading the slot in force while the other is written, then ST_POLICY_ACTIVE flips, so a new
// policy applies to the next new flow and never to a half-written table. The gateway installs
// one through EngineHost.installPolicy (tables.ts).
import ipaddr from "ipaddr.js";
import { layout as L, wire } from "./layout.js";
import { ConfigError } from "../errors.js";
import { GROUPS, type Action, type DenyResponse, type NetworkPolicy, type Protocol } from "../model/policy.js";

/** A rule's protocol as the engine reads it (layout.ts PR_PROTO; 0 = any). */
export const PROTOCOL_NUMBER: Readonly<Record<Protocol, number>> = { tcp: wire.PROTO_TCP, udp: wire.PROTO_UDP, icmpv4: wire.PROTO_ICMP, icmpv6: wire.PROTO_ICMP6 };
const KIND = { any: L.RULE_ANY, cidr: L.RULE_CIDR, domain: L.RULE_DOMAIN, "domain-suffix": L.RULE_DOMAIN_SUFFIX, group: L.RULE_GROUP } as const;
const DENY_RESPONSE: Readonly<Record<DenyResponse, number>> = { drop: L.DENY_DROP, reject: L.DENY_REJECT, http: L.DENY_HTTP };
const actionOf = (a: Action): number => (a === "deny" ? L.POLICY_DENY : L.POLICY_ALLOW);

/** Names used by domain rules get ids; the DNS interceptor pins answers under the same ids. */
export class NameTable {
  private readonly ids = new Map<string, number>();
  readonly names: string[] = [];
  idOf(name: string, suffix: boolean): number {
    const key = `${suffix ? "." : ""}${name}`;
    let id = this.ids.get(key);
    if (id === undefined) {
      id = this.names.length + 1;
      this.ids.set(key, id);
      this.names.push(key);
    }
    return id;
  }
}

/**
 * Write `policy` into slot `slot` (0/1) of the engine memory. `defaultIngress`: what happens to a
 * peer on a published port that no inbound rule matched.
 */
export function writePolicySlot(mem: Uint8Array, slot: number, policy: NetworkPolicy, denyResponse: DenyResponse, names: NameTable, defaultIngress: Action = "allow"): void {
  if (policy.rules.length > L.POLICY_MAX_RULES) {
    throw new ConfigError(`the policy has ${policy.rules.length} rules`, `at most ${L.POLICY_MAX_RULES} are supported`);
  }
  const base = L.POLICY_BASE + slot * L.POLICY_SLOT_BYTES;
  const dv = new DataView(mem.buffer, mem.byteOffset, mem.byteLength);
  mem.fill(0, base, base + L.POLICY_HEADER_BYTES + policy.rules.length * L.POLICY_RULE_BYTES);
  policy.rules.forEach((r, i) => {
    const o = base + L.POLICY_HEADER_BYTES + i * L.POLICY_RULE_BYTES;
    mem[o + L.PR_ACTION] = actionOf(r.action);
    mem[o + L.PR_DIRECTION] = r.direction === "inbound" ? L.DIR_INBOUND : L.DIR_OUTBOUND;
    mem[o + L.PR_PROTO] = r.protocol ? PROTOCOL_NUMBER[r.protocol] : 0;
    mem[o + L.PR_KIND] = KIND[r.destination.kind];
    if (r.ports) {
      mem[o + L.PR_HAS_PORTS] = 1;
      dv.setUint16(o + L.PR_PORT_LO, r.ports.start, true);
      dv.setUint16(o + L.PR_PORT_HI, r.ports.end, true);
    }
    const d = r.destination;
    if (d.kind === "group") mem[o + L.PR_GROUP] = GROUPS.indexOf(d.group);
    if (d.kind === "cidr") {
      const [addr, len] = ipaddr.parseCIDR(d.cidr);
      const v6 = addr.kind() === "ipv4" ? (addr as ipaddr.IPv4).toIPv4MappedAddress() : (addr as ipaddr.IPv6);
      const prefix = addr.kind() === "ipv4" ? len + 96 : len;
      const bytes = v6.toByteArray();
      for (let b = 0; b < 16; b++) {
        const keep = Math.max(0, Math.min(8, prefix - b * 8));
        bytes[b] = bytes[b]! & ((0xff << (8 - keep)) & 0xff);
      }
      mem.set(bytes, o + L.PR_ADDR);
      mem[o + L.PR_PREFIX] = prefix;
    }
    if (d.kind === "domain") dv.setUint32(o + L.PR_NAME, names.idOf(d.name, false), true);
    if (d.kind === "domain-suffix") dv.setUint32(o + L.PR_NAME, names.idOf(d.suffix, true), true);
  });
  dv.setUint32(base + L.PH_DEFAULT_ACTION, actionOf(policy.defaultAction), true);
  dv.setUint32(base + L.PH_DENY_RESPONSE, DENY_RESPONSE[denyResponse] ?? L.DENY_DROP, true);
  dv.setUint32(base + L.PH_DEFAULT_INBOUND, actionOf(defaultIngress), true);
  dv.setUint32(base + L.PH_GENERATION, (dv.getUint32(base + L.PH_GENERATION, true) + 1) >>> 0, true);
  dv.setUint32(base + L.PH_RULE_COUNT, policy.rules.length, true);
}

/** Install `policy` on a running (or not yet started) engine: fill the idle slot, then flip. */
export function installPolicy(mem: Uint8Array, policy: NetworkPolicy, denyResponse: DenyResponse, names: NameTable, first = false, defaultIngress: Action = "allow"): void {
  const i32 = new Int32Array(mem.buffer, mem.byteOffset + L.ST_POLICY_ACTIVE, 1);
  const next = first ? 0 : (Atomics.load(i32, 0) & 1) ^ 1;
  writePolicySlot(mem, next, policy, denyResponse, names, defaultIngress);
  Atomics.store(i32, 0, next);
}
