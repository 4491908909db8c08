// options.ts — what a gateway is asked to do (GatewayOptions: every kind of sandbox shares them),
// and validateOptions, which checks every option before anything is created and fills in the
// defaults (ValidOptions). An option's bounds, defaults and messages are written here; the CLI's
// flags (cli/main.ts) and the config file (cli/config-file.ts) map onto these.
import { DEFAULT_POOL4 } from "./addressing.js";
import { validatePort, type PortSpec, type PublishedPort } from "./ports.js";
import { applyLimits, NO_LIMITS, type RateLimits, type ValidLimits } from "./limits.js";
import type { GatewayEvent } from "./events.js";
import { ConfigError } from "../errors.js";
import { layout as L } from "../engine/layout.js";
import { NetworkPolicy, validatePolicy, normalizeName, type NetworkPolicyShape, type Action, type DenyResponse } from "../model/policy.js";
import { matchesPattern } from "../model/names.js";
import type { AuditLogOptions, DenyEvent } from "../policy/audit.js";
import { hostResolvers, parseNameserverAddress } from "../dns/upstream.js";
import { validatePcap, validateFaults, parseFaults, type PcapOptions, type FaultOptions, type LinkMiddleware } from "../links/middleware.js";
import type { TlsEvent } from "../tls/proxy.js";
import { validateTls, tlsRequested, type TlsOptions, type ValidTls } from "../tls/setup.js";
import { validateSecrets, type SecretSpec, type Secret, type ViolationAction } from "../secrets/secrets.js";

/** DNS interception (DESIGN §7; the reference's NetworkBuilder::dns). */
export interface DnsOptions {
  /** Names answered locally as blocked, never sent upstream. */
  blockDomains?: string[];
  /** Blocks the name and every name under it ("tracking.example" blocks a.tracking.example). */
  blockDomainSuffixes?: string[];
  /** Upstreams for DNS to the gateway, tried in order: IP, IP:PORT, [IPv6]:PORT, HOST, HOST:PORT (default: the host's /etc/resolv.conf). */
  nameservers?: string[];
  /** Per upstream attempt (default 5000). */
  queryTimeoutMs?: number;
  /** Answers carrying private, loopback, link-local or metadata addresses become REFUSED (default true). */
  rebindProtection?: boolean;
  /** The answer to a blocked name (default "refused"). */
  blockedResponse?: "refused" | "nxdomain";
}

/** What a gateway does for its guest: the options every kind of sandbox shares. */
export interface GatewayOptions {
  /** DNS interception settings. */
  dns?: DnsOptions;
  /** Name shown in audit events (default: the namespace's name). */
  name?: string;
  /** Network policy (default NetworkPolicy.publicOnly()); NetworkPolicy.none() gives no interface. */
  policy?: NetworkPolicyShape;
  /** What a denied guest sees: "drop" (silence, the default), "reject" (RST / ICMP prohibited), or "http" (reject, and a 403 page naming the rule for denied HTTP, and HTTPS when intercepted). */
  denyResponse?: DenyResponse;
  /** Most TCP + UDP connections at once (default 4096). */
  maxConnections?: number;
  /**
   * Rate limits (gateway/limits.ts): egress and ingress bandwidth ("50mbit", "50mbit:512k"), new
   * connections and DNS queries per second (20, "20:5"). TCP is paced, UDP and ICMP over a
   * budget dropped, SYNs over the connection rate held, DNS over its rate refused. Changed
   * later with setLimits().
   */
  limits?: RateLimits;
  /** Append every denial as a JSON line to this file. */
  auditLog?: string;
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
  /** MTU of the guest link (default 65520, the largest a TAP/Ethernet frame allows here). */
  mtu?: number;
  /** IPv4 pool carved into /30 per sandbox (default 172.30.0.0/16). */
  ipv4Pool?: string;
  /** Where DNS sent to the gateway is forwarded: "host" (every nameserver of /etc/resolv.conf, in order, the default), "none", or "IP[:PORT]" / "[IPv6]:PORT". */
  dnsForward?: string;
  /** Idle time after which a UDP flow and its host socket are closed (default 60000). */
  udpIdleMs?: number;
  /** Most UDP flows a sandbox may hold at once (default 4096). */
  maxUdpFlows?: number;
  /**
   * At destroy(), how long the guest's TCP connections may go without moving data before they
   * are cut (default 5000 ms; 0: cut at once). Until then moat keeps serving, so data the
   * guest's kernel still held when the command exited is delivered and closed cleanly; a
   * connection cut short reaches its peer as a reset, never as a clean end.
   */
  exitGraceMs?: number;
  /**
   * Ports to publish: host (BIND:HOSTPORT) -> guest port. A host connection (or UDP peer)
   * becomes a flow toward the guest, judged by the inbound rules; the guest sees it come from
   * the gateway's address. More can be published and withdrawn later (publish(), unpublish()).
   */
  ports?: PortSpec[];
  /** What happens to a peer on a published port that no inbound rule matched (default "allow"). */
  defaultIngress?: Action;
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
  /** What a placeholder headed anywhere else does: "block" (default), "block-and-log", "block-and-terminate". */
  onSecretViolation?: ViolationAction;
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

export const DEFAULT_MTU = L.MTU_DEFAULT;

export type ValidOptions = Required<Omit<GatewayOptions, "dnsForward" | "name" | "auditLog" | "auditLogOptions" | "onDeny" | "onEvent" | "policy" | "dns" | "ports" | "onWarning" | "tls" | "onTlsEvent" | "secrets" | "onSecretEvent" | "pcap" | "faults" | "limits">> & { dns: DnsOptions; limits: ValidLimits } &
  Pick<GatewayOptions, "name" | "auditLog" | "auditLogOptions" | "onDeny" | "onEvent" | "onTlsEvent" | "onSecretEvent"> & { secrets: Secret[] } & { middleware: LinkMiddleware } & { dnsForward: { ip: string; port: number }[]; policy: NetworkPolicy; ports: PublishedPort[]; onWarning: (m: string) => void; tls: ValidTls | undefined };

/** Check every option (before anything is created) and fill in the defaults. */
export function validateOptions(o: GatewayOptions): ValidOptions {
  const mtu = o.mtu ?? DEFAULT_MTU;
  if (!Number.isInteger(mtu) || mtu < L.MTU_MIN || mtu > L.MTU_MAX) {
    throw new ConfigError(`MTU ${o.mtu} is out of range`, `use an integer from ${L.MTU_MIN} (the IPv6 minimum) to ${L.MTU_MAX}`);
  }
  const udpIdleMs = o.udpIdleMs ?? 60000;
  if (!Number.isInteger(udpIdleMs) || udpIdleMs < 100) throw new ConfigError(`UDP idle timeout ${o.udpIdleMs} ms is too small`, "use at least 100 ms");
  const maxUdpFlows = o.maxUdpFlows ?? 4096;
  if (!Number.isInteger(maxUdpFlows) || maxUdpFlows < 1 || maxUdpFlows > L.FLOW_CAPACITY) {
    throw new ConfigError(`max UDP flows ${o.maxUdpFlows} is out of range`, `use 1 to ${L.FLOW_CAPACITY}`);
  }
  const exitGraceMs = o.exitGraceMs ?? 5000;
  if (!Number.isInteger(exitGraceMs) || exitGraceMs < 0 || exitGraceMs > 600000) {
    throw new ConfigError(`exit grace ${o.exitGraceMs} ms is out of range`, "use 0 (cut connections at once) to 600000 ms");
  }
  const maxConnections = o.maxConnections ?? 4096;
  if (!Number.isInteger(maxConnections) || maxConnections < 1 || maxConnections > L.FLOW_CAPACITY) {
    throw new ConfigError(`max connections ${o.maxConnections} is out of range`, `use 1 to ${L.FLOW_CAPACITY}`);
  }
  const denyResponse = o.denyResponse ?? "drop";
  if (denyResponse !== "drop" && denyResponse !== "reject" && denyResponse !== "http") throw new ConfigError(`deny response "${denyResponse}" is unknown`, `use "drop", "reject" or "http"`);
  const policy = o.policy ? validatePolicy(o.policy) : NetworkPolicy.publicOnly();
  const fwd = o.dnsForward ?? "host";
  // "host": every nameserver of the host's resolv.conf, in order, failing over (a dead first
  // entry must not break DNS).
  const dnsForward = fwd === "host" ? hostResolvers() : fwd === "none" ? [] : [parseNameserverAddress(fwd)];
  const dns = o.dns ?? {};
  if (dns.queryTimeoutMs !== undefined && (!Number.isInteger(dns.queryTimeoutMs) || dns.queryTimeoutMs < 10 || dns.queryTimeoutMs > 60000)) {
    throw new ConfigError(`DNS query timeout ${dns.queryTimeoutMs} ms is out of range`, "use 10 to 60000 ms");
  }
  if (dns.blockedResponse !== undefined && dns.blockedResponse !== "refused" && dns.blockedResponse !== "nxdomain") {
    throw new ConfigError(`DNS blocked response "${dns.blockedResponse}" is unknown`, `use "refused" or "nxdomain"`);
  }
  const dnsNames = {
    ...dns,
    blockDomains: (dns.blockDomains ?? []).map((n) => normalizeName(n)),
    blockDomainSuffixes: (dns.blockDomainSuffixes ?? []).map((n) => normalizeName(n.replace(/^\*?\./, ""))),
  };
  const defaultIngress = o.defaultIngress ?? "allow";
  if (defaultIngress !== "allow" && defaultIngress !== "deny") throw new ConfigError(`default ingress "${o.defaultIngress}" is unknown`, `use "allow" or "deny"`);
  if (o.ports !== undefined && !Array.isArray(o.ports)) throw new ConfigError("ports is not a list", "e.g. ports: [{ host: 8080, guest: 80 }]");
  const ports = (o.ports ?? []).map((p, i) => validatePort(p, `ports[${i}]`));
  if (ports.length > L.PUB_MAX) throw new ConfigError(`${ports.length} ports to publish`, `at most ${L.PUB_MAX} per sandbox`);
  if (ports.length && policy.offline) throw new ConfigError("NetworkPolicy.none() has no interface, so ports cannot be published to it", "drop the ports, or choose another policy");
  const onWarning = o.onWarning ?? ((m: string) => { process.stderr.write(`moat: warning: ${m}\n`); });
  const secrets = validateSecrets(o.secrets ?? []);
  const onSecretViolation = o.onSecretViolation ?? "block";
  if (!["block", "block-and-log", "block-and-terminate"].includes(onSecretViolation)) throw new ConfigError(`secret violation action "${onSecretViolation}" is unknown`, "use block, block-and-log or block-and-terminate");
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
  return { limits, middleware, mtu, ipv4Pool: o.ipv4Pool ?? DEFAULT_POOL4, udpIdleMs, maxUdpFlows, maxConnections, exitGraceMs, denyResponse, policy, dnsForward, dns: dnsNames, name: o.name, auditLog: o.auditLog, auditLogOptions: o.auditLogOptions, onDeny: o.onDeny, onEvent: o.onEvent, onTlsEvent: o.onTlsEvent, onSecretEvent: o.onSecretEvent, ports, defaultIngress, onWarning, tls, secrets, onSecretViolation };
}
