// options.ts — what a gateway is asked to do (GatewayOptions: every kind of sandbox shares them),
// and validateOptions, which checks every option before anything is created and fills in the
// defaults (ValidOptions). The options of one plain value, their types, bounds, defaults and
// words, are the options schema's (schema.ts); what is here is the rest: callbacks, the policy,
// ports, secrets, TLS, and how the options bear on each other.
import { OPTIONS, type OptionEntry, type SchemaFields } from "./schema.js";
import { validatePort, type PortSpec, type PublishedPort } from "./ports.js";
import { applyLimits, NO_LIMITS, type RateLimits, type ValidLimits } from "./limits.js";
import type { GatewayEvent } from "./events.js";
import { ConfigError } from "../errors.js";
import { layout as L } from "../engine/layout.js";
export { DEFAULT_MTU } from "./schema.js";
import { NetworkPolicy, validatePolicy, normalizeName, type NetworkPolicyShape } from "../model/policy.js";
import { matchesPattern } from "../model/names.js";
import type { AuditLogOptions, DenyEvent } from "../policy/audit.js";
import { hostResolvers, parseNameserverAddress } from "../dns/upstream.js";
import { validatePcap, validateFaults, parseFaults, type PcapOptions, type FaultOptions, type LinkMiddleware } from "../links/middleware.js";
import type { TlsEvent } from "../tls/proxy.js";
import { validateTls, tlsRequested, type TlsOptions, type ValidTls } from "../tls/setup.js";
import { validateSecrets, type SecretSpec, type Secret, type ViolationAction } from "../secrets/secrets.js";

/**
 * DNS interception (DESIGN §7; the reference's NetworkBuilder::dns): blockDomains,
 * blockDomainSuffixes, nameservers, queryTimeoutMs, rebindProtection, blockedResponse (the
 * entries "dns.*" of the options schema: --dns-* in `moat run --help`).
 */
export interface DnsOptions extends SchemaFields<"dns."> {}

/**
 * What a gateway does for its guest: the options every kind of sandbox shares. Those of one plain
 * value (name, mtu, maxConnections, udpIdleMs, maxUdpFlows, exitGraceMs, denyResponse,
 * defaultIngress, dnsForward, ipv4Pool, auditLog, onSecretViolation) are the options schema's
 * (schema.ts: each one's type, range, default and help); the rest are here.
 */
export interface GatewayOptions extends SchemaFields<""> {
  /** DNS interception settings. */
  dns?: DnsOptions;
  /** Network policy (default NetworkPolicy.publicOnly()); NetworkPolicy.none() gives no interface. */
  policy?: NetworkPolicyShape;
  /**
   * Rate limits (gateway/limits.ts): egress and ingress bandwidth ("50mbit", "50mbit:512k"), new
   * connections and DNS queries per second (20, "20:5"). TCP is paced, UDP and ICMP over a
   * budget dropped, SYNs over the connection rate held, DNS over its rate refused. Changed
   * later with setLimits().
   */
  limits?: RateLimits;
  /** Bounds of the audit log: aggregation interval, size cap, keys held (policy/audit.ts). */
  auditLogOptions?: AuditLogOptions;
  /** Called with every denial (after it was written to the audit log). onEvent sees these and every other event. */
  onDeny?: (event: DenyEvent) => void;
  /**
   * Called with every event of the gateway (gateway/events.ts: flow denied, DNS blocked or
   * rewritten, TLS refused, secret violation, port published/unpublished, sandbox created/
   * destroyed, limit hit), in the shape the audit log writes. gateway.on("event", fn) and
   * sandbox.on("event", fn) subscribe later.
   */
  onEvent?: (event: GatewayEvent) => void;
  /**
   * Ports to publish: host (BIND:HOSTPORT) -> guest port. A host connection (or UDP peer)
   * becomes a flow toward the guest, judged by the inbound rules; the guest sees it come from
   * the gateway's address. More can be published and withdrawn later (publish(), unpublish()).
   */
  ports?: PortSpec[];
  /** Warnings (e.g. a port published beyond loopback); default: printed to stderr. */
  onWarning?: (message: string) => void;
  /** TLS interception (off unless asked for: any setting turns it on). */
  tls?: TlsOptions;
  /** Called with every TLS refusal (after it was written to the audit log). */
  onTlsEvent?: (event: TlsEvent) => void;
  /**
   * Secrets: the command sees each as a placeholder; the value is put into requests to its hosts
   * only (HTTP/1.1 headers and Basic auth over intercepted TLS). Turns TLS interception on.
   */
  secrets?: SecretSpec[];
  /** Called with every secret violation (never with the value). */
  onSecretEvent?: (event: SecretViolationEvent) => void;
  /** Record every frame at the guest's link in a pcap file (a path, or { path, maxBytes }: default bound 256 MiB). */
  pcap?: string | PcapOptions;
  /**
   * Testing only: faults injected at the guest's link (links/middleware.ts). Without it, the
   * MOAT_FAULTS environment variable ("drop=0.01,reorder=0.01,dup=0.005,seed=7") is read.
   */
  faults?: FaultOptions | string;
}

/** A secret's placeholder headed where it may not go (the value never appears here). */
export interface SecretViolationEvent { secret: string; destination: string; where: string; form: string; action: ViolationAction }


export type ValidOptions = Required<Omit<GatewayOptions, "dnsForward" | "name" | "auditLog" | "auditLogOptions" | "onDeny" | "onEvent" | "policy" | "dns" | "ports" | "onWarning" | "tls" | "onTlsEvent" | "secrets" | "onSecretEvent" | "pcap" | "faults" | "limits">> & { dns: DnsOptions & Required<Pick<DnsOptions, "queryTimeoutMs" | "rebindProtection" | "blockedResponse">>; limits: ValidLimits } &
  Pick<GatewayOptions, "name" | "auditLog" | "auditLogOptions" | "onDeny" | "onEvent" | "onTlsEvent" | "onSecretEvent"> & { secrets: Secret[] } & { middleware: LinkMiddleware } & { dnsForward: { ip: string; port: number }[]; policy: NetworkPolicy; ports: PublishedPort[]; onWarning: (m: string) => void; tls: ValidTls | undefined };

/** Check every option (before anything is created) and fill in the defaults. */
export function validateOptions(o: GatewayOptions): ValidOptions {
  const { mtu, udpIdleMs, maxUdpFlows, exitGraceMs, maxConnections, denyResponse, defaultIngress, onSecretViolation, ipv4Pool, dnsForward: fwd } =
    plainOptions(o, "") as Required<SchemaFields<"">>;
  const policy = o.policy ? validatePolicy(o.policy) : NetworkPolicy.publicOnly();
  // "host": every nameserver of the host's resolv.conf, in order, failing over (a dead first
  // entry must not break DNS).
  const dnsForward = fwd === "host" ? hostResolvers() : fwd === "none" ? [] : [parseNameserverAddress(fwd)];
  const dns = { ...o.dns, ...plainOptions(o.dns ?? {}, "dns.") } as ValidOptions["dns"];
  const dnsNames = {
    ...dns,
    blockDomains: (dns.blockDomains ?? []).map((n) => normalizeName(n)),
    blockDomainSuffixes: (dns.blockDomainSuffixes ?? []).map((n) => normalizeName(n.replace(/^\*?\./, ""))),
  };
  if (o.ports !== undefined && !Array.isArray(o.ports)) throw new ConfigError("ports is not a list", "e.g. ports: [{ host: 8080, guest: 80 }]");
  const ports = (o.ports ?? []).map((p, i) => validatePort(p, `ports[${i}]`));
  if (ports.length > L.PUB_MAX) throw new ConfigError(`${ports.length} ports to publish`, `at most ${L.PUB_MAX} per sandbox`);
  if (ports.length && policy.offline) throw new ConfigError("NetworkPolicy.none() has no interface, so ports cannot be published to it", "drop the ports, or choose another policy");
  const onWarning = o.onWarning ?? ((m: string) => { process.stderr.write(`moat: warning: ${m}\n`); });
  const secrets = validateSecrets(o.secrets ?? []);
  if (secrets.length && policy.offline) throw new ConfigError("NetworkPolicy.none() has no interface, so secrets have nowhere to go", "drop the secrets, or choose another policy");
  // A secret turns TLS interception on (its hosts must be intercepted to be substituted).
  const tls = (tlsRequested(o.tls) || secrets.length) && !policy.offline ? validateTls({ intercept: true, ...o.tls }) : undefined;
  for (const sec of secrets) {
    for (const h of sec.hosts) {
      if (tls && matchesPattern(h.replace(/^\*\./, ""), tls.bypass)) throw new ConfigError(`secret ${sec.env} is for ${h}, which --tls-bypass passes through untouched`, "a bypassed host's requests cannot carry a secret: drop the bypass for it");
    }
  }
  const faultText = o.faults === undefined ? process.env.MOAT_FAULTS : undefined;
  const faults = typeof o.faults === "string" ? parseFaults(o.faults, "faults") : o.faults ? validateFaults(o.faults) : faultText ? parseFaults(faultText) : undefined;
  const middleware: LinkMiddleware = { pcap: o.pcap !== undefined ? validatePcap(o.pcap) : undefined, faults };
  const limits = applyLimits(NO_LIMITS, o.limits ?? {}, (k) => `limits.${k}`);
  return { limits, middleware, mtu, ipv4Pool, udpIdleMs, maxUdpFlows, maxConnections, exitGraceMs, denyResponse, policy, dnsForward, dns: dnsNames, name: o.name, auditLog: o.auditLog, auditLogOptions: o.auditLogOptions, onDeny: o.onDeny, onEvent: o.onEvent, onTlsEvent: o.onTlsEvent, onSecretEvent: o.onSecretEvent, ports, defaultIngress, onWarning, tls, secrets, onSecretViolation };
}

/**
 * The options under `prefix` ("" or "dns.") that are one plain value (schema entries without a
 * grammar of their own), each checked against its entry's range or choices, defaults filled in.
 */
function plainOptions(o: object, prefix: string): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const e of OPTIONS as readonly OptionEntry[]) {
    const key = e.api?.startsWith(prefix) && !e.parse ? e.api.slice(prefix.length) : undefined;
    if (key === undefined || key.includes(".")) continue;
    const value = checked(e, (o as Record<string, unknown>)[key]);
    if (value !== undefined) out[key] = value;
  }
  return out;
}

/** `value` (or the entry's default), or a ConfigError saying what was wrong and what to use. */
function checked(e: OptionEntry, value: unknown): unknown {
  const v = value ?? e.default;
  if (v === undefined) return undefined;
  const unit = e.unit ?? "";
  if (e.type === "int" && (typeof v !== "number" || !Number.isInteger(v) || v < e.min! || v > e.max!)) {
    throw new ConfigError(`${e.noun} ${String(value)}${unit} is out of range`, `use an integer from ${e.min}${e.minNote ? ` (${e.minNote})` : ""} to ${e.max}${unit}`);
  }
  if (e.type === "enum" && !e.choices!.includes(v as string)) {
    const names = e.choices!.map((c) => `"${c}"`);
    throw new ConfigError(`${e.noun} "${String(value)}" is unknown`, `use ${names.slice(0, -1).join(", ")} or ${names.at(-1)}`);
  }
  return v;
}
