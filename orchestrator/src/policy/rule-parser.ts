// rule-parser.ts — the text form of a policy rule, as given to `--net-rule` (and as a string in a
// config file's network.policy.rules):
//
//   ACTION[:DIRECTION]@TARGET[:PROTO[:PORTS]]
//
//   ACTION     allow | deny
//   DIRECTION  egress (default) | ingress          → "outbound" | "inbound"
//   TARGET     any | 192.0.2.7 | 10.0.0.0/8 | [2001:db8::1] | [2001:db8::]/32
//              | api.example.com (exact name) | .example.com or *.example.com (name and below)
//              | group:NAME (host, metadata, loopback, private, link-local, multicast, public)
//   PROTO      tcp | udp | icmp (ICMPv4) | icmpv4 | icmpv6 | any (default)
//   PORTS      N or N-M, tcp and udp only
//
// Addresses are parsed strictly: IPv4 only as four decimal octets (no octal, hex or short forms,
// which would silently mean another address), a CIDR must have no host bits set, and IPv6 goes in
// brackets because its colons would otherwise be taken for the separators above.
import ipaddr from "ipaddr.js";
import { ConfigError } from "../errors.js";
import { Destination, GROUPS, NEVER_FORWARDED_HINT, PortRange, neverForwarded, type Direction, type Group, type Protocol, type Rule } from "../model/policy.js";

const FORM = "ACTION[:DIRECTION]@TARGET[:PROTO[:PORTS]]";

type Fail = (problem: string, hint: string) => never;

const GROUP_ALIASES: Readonly<Record<string, Group>> = { link_local: "link-local", linklocal: "link-local" };

const PROTOCOLS: Readonly<Record<string, Protocol | "any">> = {
  tcp: "tcp", udp: "udp", icmp: "icmpv4", icmpv4: "icmpv4", icmpv6: "icmpv6", any: "any",
};

/**
 * Parse one rule in the `--net-rule` syntax. `context` names where the text came from and starts
 * every error message (the default suits the command line; a config file passes its own).
 */
export function parseRule(text: string, context = "--net-rule"): Rule {
  const fail: Fail = (problem, hint) => {
    throw new ConfigError(`${context} ${JSON.stringify(text)}: ${problem}`, hint);
  };
  const t = text.trim();
  if (t === "") fail("the rule is empty", `expected ${FORM}, e.g. allow@group:private:tcp:5432`);

  // ACTION[:DIRECTION] — everything before the first '@'.
  const at = t.indexOf("@");
  if (at < 0) fail(`missing "@" between the action and the target`, `expected ${FORM}, e.g. deny@169.254.169.254 or allow@api.example.com:tcp:443`);
  const head = t.slice(0, at).split(":");
  if (head.length > 2) fail(`unexpected "${head.slice(2).join(":")}" before "@"`, `before "@" comes only ACTION[:DIRECTION], e.g. allow:egress@any:udp:53`);
  const actionText = head[0]!;
  const action = actionText.toLowerCase();
  if (action !== "allow" && action !== "deny") {
    fail(actionText === "" ? "missing action before \"@\"" : `unknown action "${actionText}"`, "expected allow or deny, e.g. allow@group:private:tcp:5432");
  }
  let direction: Direction = "outbound";
  if (head.length === 2) {
    const d = head[1]!.toLowerCase();
    if (d === "egress" || d === "outbound") direction = "outbound";
    else if (d === "ingress" || d === "inbound") direction = "inbound";
    else fail(head[1] === "" ? `missing direction after "${actionText}:"` : `unknown direction "${head[1]}"`, "expected egress (the default) or ingress, e.g. deny:ingress@10.0.0.0/8");
  }

  // TARGET — up to the next ':' that is not inside brackets or after "group".
  const rest = t.slice(at + 1);
  if (rest.includes("@")) fail(`more than one "@"`, `expected ${FORM}, e.g. allow@api.example.com:tcp:443`);
  if (!rest.startsWith("[") && rest.includes(":")) {
    const v6 = unbracketedIpv6(rest);
    if (v6 !== undefined) {
      const [addr, len] = v6.split("/");
      fail(`IPv6 target "${v6}" must be in brackets`, `write [ADDRESS] or [ADDRESS]/LEN, e.g. allow@[${addr}]${len === undefined ? "" : `/${len}`}:tcp:443`);
    }
  }
  if (rest === "" || rest.startsWith(":")) fail(`empty target after "@"`, "expected any, an address, a CIDR, a domain name, .suffix or group:NAME, e.g. allow@group:public or deny@10.0.0.0/8");
  let targetEnd: number;
  if (rest.startsWith("[")) {
    const close = rest.indexOf("]");
    if (close < 0) fail(`"[" without a closing "]" in target "${rest}"`, "write IPv6 addresses in brackets, e.g. allow@[2001:db8::1]:tcp:443 or deny@[fd00::]/8");
    targetEnd = rest.indexOf(":", close);
  } else if (/^group:/i.test(rest)) {
    targetEnd = rest.indexOf(":", "group:".length);
  } else {
    targetEnd = rest.indexOf(":");
  }
  const targetText = targetEnd < 0 ? rest : rest.slice(0, targetEnd);
  const destination = parseTarget(targetText, fail);

  // [:PROTO[:PORTS]]
  const rule: Rule = { action, direction, destination };
  const checked = (r: Rule): Rule => {
    const unforwarded = neverForwarded(r);
    if (unforwarded) fail(`this allows what is never forwarded: ${unforwarded}`, NEVER_FORWARDED_HINT);
    return r;
  };
  if (targetEnd < 0) return checked(rule);
  const tail = rest.slice(targetEnd + 1).split(":");
  const protoText = tail[0]!;
  const proto = PROTOCOLS[protoText.toLowerCase()];
  if (proto === undefined) {
    fail(protoText === "" ? `missing protocol after "${targetText}:"` : `unknown protocol "${protoText}"`,
      "expected tcp, udp, icmp, icmpv6 or any, e.g. allow@any:udp:53");
  }
  if (proto !== "any") rule.protocol = proto;
  if (tail.length === 1) return checked(rule);
  if (tail.length > 2) fail(`unexpected "${tail.slice(2).join(":")}" after the ports`, `PORTS is the last part: N or N-M, e.g. allow@.example.com:tcp:80-90`);
  const portsText = tail[1]!;
  if (proto !== "tcp" && proto !== "udp") {
    fail(`ports "${portsText}" given with protocol ${protoText}`, "ports apply to tcp or udp only: e.g. allow@group:private:tcp:5432, or leave the ports out");
  }
  const m = /^(\d{1,5})(?:-(\d{1,5}))?$/.exec(portsText);
  if (!m) {
    if (/^\d+(-\d+)?$/.test(portsText)) fail(`port in "${portsText}" is out of range`, "ports are integers from 0 to 65535, e.g. allow@any:tcp:443");
    fail(portsText === "" ? `missing ports after "${protoText}:"` : `bad ports "${portsText}"`, "expected a port N or a range N-M, e.g. allow@any:tcp:443 or allow@any:tcp:8000-8080");
  }
  try {
    rule.ports = m![2] === undefined ? PortRange.single(Number(m![1])) : PortRange.range(Number(m![1]), Number(m![2]));
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    fail(`ports "${portsText}": ${e.message}`, `${e.hint ?? "ports are integers from 0 to 65535"}${e.hint?.includes("e.g.") ? "" : ", e.g. allow@any:tcp:443 or allow@any:tcp:8000-8080"}`);
  }
  return checked(rule);
}

function parseTarget(target: string, fail: Fail): Destination {
  const lower = target.toLowerCase();
  if (lower === "any") return Destination.any();

  if (lower.startsWith("group:")) {
    const name = lower.slice("group:".length);
    const group = (GROUP_ALIASES[name] ?? name) as Group;
    if (!GROUPS.includes(group)) {
      fail(name === "" ? `missing group name after "group:"` : `unknown group "${target.slice("group:".length)}"`,
        `groups are ${GROUPS.join(", ")}, e.g. deny@group:metadata`);
    }
    return Destination.group(group);
  }

  if (target.startsWith("[")) {
    const m = /^\[([^\]]*)\](?:\/(\d+))?$/.exec(target);
    if (!m) fail(`bad bracketed target "${target}"`, "expected [IPv6] or [IPv6]/LEN, e.g. allow@[2001:db8::1]:tcp:443 or deny@[fd00::]/8");
    const cidr = strictCidr(m![2] === undefined ? m![1]! : `${m![1]}/${m![2]}`, "ipv6");
    if (typeof cidr !== "string") fail(`${cidr.problem} in target "${target}"`, cidr.hint);
    return Destination.cidr(cidr as string);
  }

  if (/^[0-9./]+$/.test(target) || target.includes("/")) {
    const cidr = strictCidr(target, "ipv4");
    if (typeof cidr !== "string") fail(cidr.problem, cidr.hint);
    return Destination.cidr(cidr as string);
  }

  if (target.startsWith(".") || target.startsWith("*")) {
    if (!/^\*?\.[^*]/.test(target)) fail(`bad domain suffix "${target}"`, "write .example.com or *.example.com to match example.com's subdomains, e.g. allow@*.example.com:tcp:443");
    try {
      return Destination.domainSuffix(target);
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      fail(`bad domain suffix "${target}"`, "expected .example.com or *.example.com");
    }
  }

  const bareGroup = GROUP_ALIASES[lower] ?? lower;
  if ((GROUPS as readonly string[]).includes(bareGroup)) {
    fail(`"${target}" is a group name, not a host name`, `write group:${bareGroup}, e.g. deny@group:${bareGroup}; for a host really named "${target}" write "${target}." (with the final dot)`);
  }
  if (/(^|\.)\d+\.?$/.test(target)) {
    fail(`"${target}" is neither an IP address nor a domain name (its last label is a number)`, "write IPv4 as four decimal numbers, e.g. deny@192.0.2.7, or a name such as api.example.com");
  }
  try {
    return Destination.domain(target);
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    return fail(`"${target}" is not any, an IP address, a CIDR, a domain name or group:NAME`,
      "e.g. allow@api.example.com:tcp:443, deny@10.0.0.0/8, allow@[2001:db8::]/32, allow@.example.com or deny@group:metadata");
  }
}

/** If `rest` starts with an IPv6 address or CIDR written without brackets, that address. */
function unbracketedIpv6(rest: string): string | undefined {
  const parts = rest.split(":");
  for (let n = parts.length; n >= 3; n--) {
    const candidate = parts.slice(0, n).join(":");
    if (ipaddr.IPv6.isValid(candidate) || ipaddr.IPv6.isValidCIDR(candidate)) return candidate;
  }
  return undefined;
}

/**
 * A strictly parsed IP address or CIDR (no brackets) in the canonical "ADDRESS/LEN" form of
 * Destination.cidr, or what is wrong with it. IPv4 must be four decimal octets without leading
 * zeros; IPv6 may not carry a zone; a CIDR may not have host bits set.
 */
export function strictCidr(text: string, family: "ipv4" | "ipv6" | "either" = "either"): string | { problem: string; hint: string } {
  const slash = text.indexOf("/");
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const lenText = slash < 0 ? undefined : text.slice(slash + 1);
  const v6 = addrText.includes(":");
  if (family === "ipv4" && v6) return { problem: `IPv6 address "${text}" must be in brackets`, hint: "e.g. allow@[2001:db8::1]:tcp:443 or deny@[fd00::]/8" };
  if (family === "ipv6" && !v6) return { problem: `"${addrText}" is not an IPv6 address`, hint: "brackets are for IPv6 only; write IPv4 without them, e.g. deny@192.0.2.7 or deny@10.0.0.0/8" };
  let addr: ipaddr.IPv4 | ipaddr.IPv6;
  if (v6) {
    if (addrText.includes("%") || !ipaddr.IPv6.isValid(addrText)) {
      return { problem: `"${addrText}" is not an IPv6 address`, hint: "e.g. 2001:db8::1, fd00::, ::1 (no zone index)" };
    }
    addr = ipaddr.IPv6.parse(addrText);
  } else {
    if (!/^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/.test(addrText)) {
      return { problem: `"${addrText}" is not an IPv4 address`, hint: "expected four decimal numbers 0-255 without leading zeros, e.g. 192.0.2.7 or 10.0.0.0/8" };
    }
    addr = ipaddr.IPv4.parse(addrText);
  }
  const max = addr.kind() === "ipv4" ? 32 : 128;
  if (lenText === undefined) return `${addr.toString()}/${max}`;
  if (!/^(0|[1-9]\d{0,2})$/.test(lenText) || Number(lenText) > max) {
    return { problem: `prefix length "/${lenText}" of "${text}" is not 0 to ${max}`, hint: v6 ? "e.g. [2001:db8::]/32 or [fd00::]/8" : "e.g. 10.0.0.0/8 or 192.168.0.0/16" };
  }
  const len = Number(lenText);
  const network = addr.kind() === "ipv4"
    ? ipaddr.IPv4.networkAddressFromCIDR(`${addr.toString()}/${len}`)
    : ipaddr.IPv6.networkAddressFromCIDR(`${addr.toString()}/${len}`);
  if (network.toString() !== addr.toString()) {
    const suggestion = v6 ? `[${network.toString()}]/${len} or [${addr.toString()}]` : `${network.toString()}/${len} or ${addr.toString()}`;
    return { problem: `"${text}" has host bits set beyond /${len}`, hint: `did you mean ${suggestion}?` };
  }
  return `${addr.toString()}/${len}`;
}
