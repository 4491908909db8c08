// model.ts — the network policy model of the reference documents (DESIGN §6), in TypeScript.
//
// A policy is a default action plus an ordered list of rules; the first rule that matches a new
// flow decides. Builders mirror the reference API (NetworkPolicy.publicOnly(), Rule.allowOutbound,
// Destination.group, PortRange.single, ...); plain objects of the same shape are accepted too.
import ipaddr from "ipaddr.js";
import { ConfigError } from "../errors.js";

export type Action = "allow" | "deny";
export type Direction = "outbound" | "inbound";
export type Protocol = "tcp" | "udp" | "icmpv4" | "icmpv6";
/** Disjoint address groups, tested in this order (DESIGN §6). */
export const GROUPS = ["host", "metadata", "loopback", "private", "link-local", "multicast", "public"] as const;
export type Group = (typeof GROUPS)[number];

export type Destination =
  | { kind: "any" }
  | { kind: "cidr"; cidr: string }
  | { kind: "domain"; name: string }
  | { kind: "domain-suffix"; suffix: string }
  | { kind: "group"; group: Group };

export interface PortRange { start: number; end: number }

export interface Rule {
  action: Action;
  direction: Direction;
  destination: Destination;
  protocol?: Protocol;
  ports?: PortRange;
}

/** What a denied guest sees: silence, a reset / ICMP prohibited, or that and a 403 page for HTTP. */
export type DenyResponse = "drop" | "reject" | "http";

export interface NetworkPolicyShape {
  defaultAction: Action;
  rules: Rule[];
  /** none(): no network interface at all. */
  offline?: boolean;
}

export const Destination = {
  any: (): Destination => ({ kind: "any" }),
  cidr: (cidr: string): Destination => ({ kind: "cidr", cidr: normalizeCidr(cidr) }),
  domain: (name: string): Destination => ({ kind: "domain", name: normalizeName(name) }),
  domainSuffix: (suffix: string): Destination => ({ kind: "domain-suffix", suffix: normalizeName(suffix.replace(/^\*?\./, "")) }),
  group: (group: Group): Destination => {
    if (!GROUPS.includes(group)) throw new ConfigError(`unknown destination group "${group}"`, `groups are ${GROUPS.join(", ")}`);
    return { kind: "group", group };
  },
};

export const PortRange = {
  single: (port: number): PortRange => PortRange.range(port, port),
  range: (start: number, end: number): PortRange => {
    for (const p of [start, end]) {
      if (!Number.isInteger(p) || p < 0 || p > 65535) throw new ConfigError(`port ${p} is out of range`, "ports are integers from 0 to 65535");
    }
    if (start > end) throw new ConfigError(`port range ${start}-${end} is empty`, "write the lower port first, e.g. 8000-8080");
    return { start, end };
  },
};

export const Rule = {
  allowOutbound: (destination: Destination): Rule => ({ action: "allow", direction: "outbound", destination }),
  denyOutbound: (destination: Destination): Rule => ({ action: "deny", direction: "outbound", destination }),
};

export class NetworkPolicy implements NetworkPolicyShape {
  /**
   * The rules in evaluation order (first match wins): the user's own — given here or added with
   * withRules() — and then the preset's (publicOnly()'s "allow public"), so a rule a user adds to
   * a preset always takes effect, as --net-rule does on the command line.
   */
  readonly rules: Rule[];
  private readonly userRules: Rule[];

  constructor(public defaultAction: Action, rules: Rule[] = [], public offline = false, readonly presetRules: readonly Rule[] = []) {
    this.userRules = [...rules];
    this.rules = [...rules, ...presetRules];
  }

  /** No network interface at all: the command still runs, fully offline. */
  static none(): NetworkPolicy {
    return new NetworkPolicy("deny", [], true);
  }

  /**
   * The default: the gateway's DNS is answered, the public internet is reachable, and the host,
   * metadata endpoints, loopback, private, link-local and multicast ranges are not.
   */
  static publicOnly(): NetworkPolicy {
    return new NetworkPolicy("deny", [], false, [Rule.allowOutbound(Destination.group("public"))]);
  }

  /** No filtering, including the host machine and the local network. */
  static allowAll(): NetworkPolicy {
    return new NetworkPolicy("allow", []);
  }

  /**
   * Add rules after the user's earlier ones and before the preset's (first match wins):
   * publicOnly().withRules(Rule.denyOutbound(x)) denies x, as `--net-rule deny@x` does.
   */
  withRules(...rules: Rule[]): NetworkPolicy {
    if (this.offline && rules.length) {
      throw new ConfigError("NetworkPolicy.none() has no interface: rules cannot apply to it", "start from publicOnly() or allowAll()");
    }
    return new NetworkPolicy(this.defaultAction, [...this.userRules, ...rules], this.offline, this.presetRules);
  }
}

/** Human-readable form of a rule, for audit events and messages. */
export function describeRule(r: Rule): string {
  const d = r.destination;
  const target = d.kind === "any" ? "any" : d.kind === "cidr" ? d.cidr : d.kind === "domain" ? d.name : d.kind === "domain-suffix" ? `*.${d.suffix}` : `group:${d.group}`;
  const ports = r.ports ? `:${r.ports.start === r.ports.end ? r.ports.start : `${r.ports.start}-${r.ports.end}`}` : "";
  return `${r.action}:${r.direction === "outbound" ? "egress" : "ingress"}@${target}${r.protocol ? `:${r.protocol}` : ""}${ports}`;
}

export function normalizeName(name: string): string {
  if (typeof name !== "string") throw new ConfigError(`${JSON.stringify(name)} is not a domain name`, "e.g. example.com");
  const n = name.trim().toLowerCase().replace(/\.$/, "");
  if (/(^|\.)\d+$/.test(n) || /^0x/.test(n)) {
    throw new ConfigError(`"${name}" looks like an address, not a domain name`, "use a CIDR destination for addresses, e.g. 10.0.0.1/32");
  }
  if (!/^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)(\.[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?)*$/.test(n)) {
    throw new ConfigError(`"${name}" is not a domain name`, "e.g. example.com or api.example.com");
  }
  return n;
}

export function normalizeCidr(text: string): string {
  if (typeof text !== "string") throw new ConfigError(`${JSON.stringify(text)} is not an IP address or CIDR`, "e.g. 10.0.0.0/8");
  const t = text.replace(/^\[(.*)\](\/\d+)?$/, "$1$2");
  const addrPart = t.split("/")[0]!;
  // Only the plain forms: ipaddr.js would also read "10/8", "010.0.0.1" (octal) or "127.1" as
  // other addresses than the writer meant, and a zone id has no place in a policy.
  if (addrPart.includes("%") || (!addrPart.includes(":") && !/^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/.test(addrPart))) {
    throw new ConfigError(`"${text}" is not an IP address or CIDR`, "write IPv4 as four decimal octets, e.g. 10.0.0.0/8 or 192.0.2.7; IPv6 as [2001:db8::]/32");
  }
  try {
    if (!t.includes("/")) {
      const a = ipaddr.parse(t);
      return `${a.toString()}/${a.kind() === "ipv4" ? 32 : 128}`;
    }
    const [addr, len] = ipaddr.parseCIDR(t);
    return `${addr.toString()}/${len}`;
  } catch {
    throw new ConfigError(`"${text}" is not an IP address or CIDR`, "e.g. 10.0.0.0/8, 192.0.2.7, [2001:db8::]/32");
  }
}

/** Validate a policy given as a plain object (e.g. from a config file); `where` prefixes errors. */
export function validatePolicy(p: NetworkPolicyShape, where = "policy"): NetworkPolicy {
  if (p.defaultAction !== "allow" && p.defaultAction !== "deny") {
    throw new ConfigError(`${where}.defaultAction is ${JSON.stringify(p.defaultAction)}`, `expected "allow" or "deny"`);
  }
  if (!Array.isArray(p.rules)) throw new ConfigError(`${where}.rules is not a list`, "expected an array of rules");
  const rules = p.rules.map((r, i) => validateRule(r, `${where}.rules[${i}]`));
  if (p.offline === true && rules.length) throw new ConfigError(`${where} is offline (none) but has rules`, "none() has no interface: drop the rules or choose another preset");
  return new NetworkPolicy(p.defaultAction, rules, p.offline === true);
}

/**
 * Why an outbound allow rule could never take effect because everything it names is multicast
 * or broadcast — group:multicast, or a CIDR inside 224.0.0.0/3 or ff00::/8 (also as
 * ::ffff:a.b.c.d) — else undefined. The engine never forwards those (engine.ts: counted as
 * DROP_MULTICAST and audited as not-routed, whatever the policy), so such a rule is refused
 * where it is written rather than accepted and silently ineffective.
 *
 * Why not forward it instead: a host socket sending to a group speaks on the host's own network
 * segment, on an interface and with a TTL the host's configuration decides, to every listener
 * there (the other VMs and the LAN moat exists to keep a sandbox away from); answers come from
 * unicast addresses the flow never named, which a flow table of one remote per flow cannot
 * match to the request; and receiving needs group membership on the host's interfaces. The
 * protocols that use it inside a sandbox — mDNS, LLMNR, SSDP — are the ones DESIGN §7 refuses
 * so stubs fall back to unicast DNS. A service is reached at its unicast address.
 */
export function neverForwarded(r: Rule): string | undefined {
  if (r.action !== "allow" || r.direction !== "outbound") return undefined;
  const d = r.destination;
  if (d.kind === "group") return d.group === "multicast" ? "group:multicast is multicast (224.0.0.0/4, ff00::/8)" : undefined;
  if (d.kind !== "cidr") return undefined;
  const [net, len] = ipaddr.parseCIDR(d.cidr);
  let b = net.toByteArray();
  let v4len = len;
  if (b.length === 16) {
    if (b[0] === 0xff && len >= 8) return `${d.cidr} is multicast (ff00::/8)`;
    const mapped = b.slice(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff && len >= 96;
    if (!mapped) return undefined;
    b = b.slice(12);
    v4len = len - 96;
  }
  if (b[0]! >= 240) return `${d.cidr} is reserved and broadcast space (240.0.0.0/4)`;
  if (b[0]! >= 224) return v4len >= 4 ? `${d.cidr} is multicast (224.0.0.0/4)` : `${d.cidr} is multicast and broadcast (224.0.0.0/3)`;
  return undefined;
}

/** The hint of the error for a rule neverForwarded() refuses. */
export const NEVER_FORWARDED_HINT =
  "moat never carries multicast or broadcast out of a sandbox (they would reach every host on the host's network): " +
  "drop the rule, and reach the service at its unicast address, e.g. allow@192.168.1.20:udp:5353";

export function validateRule(r: Rule, where: string): Rule {
  if (typeof r !== "object" || r === null) throw new ConfigError(`${where} is not a rule object`, "expected { action, direction, destination, protocol?, ports? }");
  if (r.action !== "allow" && r.action !== "deny") throw new ConfigError(`${where}.action is ${JSON.stringify(r.action)}`, `expected "allow" or "deny"`);
  if (r.direction !== "outbound" && r.direction !== "inbound") throw new ConfigError(`${where}.direction is ${JSON.stringify(r.direction)}`, `expected "outbound" or "inbound"`);
  if (r.protocol !== undefined && !["tcp", "udp", "icmpv4", "icmpv6"].includes(r.protocol)) {
    throw new ConfigError(`${where}.protocol is ${JSON.stringify(r.protocol)}`, `expected "tcp", "udp", "icmpv4" or "icmpv6", or leave it out for any`);
  }
  const d = r.destination as Destination | undefined;
  let destination: Destination;
  try {
    switch (d?.kind) {
      case "any": destination = Destination.any(); break;
      case "cidr": destination = Destination.cidr(d.cidr); break;
      case "domain": destination = Destination.domain(d.name); break;
      case "domain-suffix": destination = Destination.domainSuffix(d.suffix); break;
      case "group": destination = Destination.group(d.group); break;
      default: throw new ConfigError(`kind is ${JSON.stringify((d as { kind?: unknown } | undefined)?.kind)}`, `expected "any", "cidr", "domain", "domain-suffix" or "group"`);
    }
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    throw new ConfigError(`${where}.destination: ${e.message}`, e.hint);
  }
  let ports: PortRange | undefined;
  if (r.ports !== undefined) {
    if (typeof r.ports !== "object" || r.ports === null) throw new ConfigError(`${where}.ports is ${JSON.stringify(r.ports)}`, "expected { start, end }, e.g. { \"start\": 443, \"end\": 443 }");
    try {
      ports = PortRange.range(r.ports.start, r.ports.end);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      throw new ConfigError(`${where}.ports: ${e.message}`, e.hint);
    }
    if (r.protocol !== "tcp" && r.protocol !== "udp") {
      throw new ConfigError(`${where} has ports but protocol ${r.protocol ?? "any"}`, "ports apply to tcp or udp: give protocol \"tcp\" or \"udp\"");
    }
  }
  const rule: Rule = { action: r.action, direction: r.direction, destination, ...(r.protocol ? { protocol: r.protocol } : {}), ...(ports ? { ports } : {}) };
  const unforwarded = neverForwarded(rule);
  if (unforwarded) throw new ConfigError(`${where} allows what is never forwarded: ${unforwarded}`, NEVER_FORWARDED_HINT);
  return rule;
}
