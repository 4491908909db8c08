// builder.ts — the builder form of the API, mirroring the reference documents:
//
//   const sandbox = await Sandbox.builder("agent-7")
//     .network((n) => n.policy(NetworkPolicy.publicOnly().withRules(Rule.allowOutbound(Destination.cidr("10.1.2.3"))))
//                      .maxConnections(64))
//     .create();
//
// Every builder call only records a value; validation happens in create(), which reports the
// first problem as a ConfigError.
import { NetnsSandbox, type NetnsSandboxOptions, type DnsOptions } from "./sandbox/netns-sandbox.js";
import { VmSandbox, type VmOptions } from "./vm/vm-sandbox.js";
import type { PortSpec } from "./gateway/ports.js";
import { ConfigError } from "./errors.js";
import type { Action } from "./model/policy.js";
import type { RateLimits, BandwidthLimit } from "./gateway/limits.js";

export class DnsBuilder {
  /** @internal */ readonly options: DnsOptions = {};
  blockDomain(name: string): this { (this.options.blockDomains ??= []).push(name); return this; }
  blockDomainSuffix(suffix: string): this { (this.options.blockDomainSuffixes ??= []).push(suffix); return this; }
  nameservers(servers: string[]): this { this.options.nameservers = [...servers]; return this; }
  queryTimeoutMs(ms: number): this { this.options.queryTimeoutMs = ms; return this; }
  rebindProtection(enabled: boolean): this { this.options.rebindProtection = enabled; return this; }
  blockedResponse(rcode: "refused" | "nxdomain"): this { this.options.blockedResponse = rcode; return this; }
}
import type { NetworkPolicyShape } from "./model/policy.js";
import type { TlsOptions } from "./tls/setup.js";
import type { SecretSpec, ViolationAction } from "./secrets/secrets.js";

/** TLS interception, as the reference's TlsBuilder: n.tls(t => t.bypass("*.pinned.example")). */
export class TlsBuilder {
  /** @internal */ readonly options: TlsOptions = { intercept: true };
  bypass(pattern: string): this { (this.options.bypass ??= []).push(pattern); return this; }
  interceptedPorts(ports: number[]): this { this.options.ports = [...ports]; return this; }
  interceptCaCert(path: string): this { this.options.caCert = path; return this; }
  interceptCaKey(path: string): this { this.options.caKey = path; return this; }
  upstreamCaCert(path: string): this { (this.options.upstreamCa ??= []).push(path); return this; }
  verifyUpstream(enabled: boolean): this { this.options.verifyUpstream = enabled; return this; }
  blockQuic(enabled: boolean): this { this.options.blockQuic = enabled; return this; }
  caOut(path: string): this { this.options.caOut = path; return this; }
  /** The guest trusts the host's whole CA store besides moat's CA (default: the distribution's CA set and moat's CA). */
  trustHostCas(enabled = true): this { this.options.trustHostCas = enabled; return this; }
}
import type { DenyResponse } from "./model/policy.js";
import type { DenyEvent, AuditLogOptions } from "./policy/audit.js";
import type { GatewayEvent } from "./gateway/events.js";

export class NetworkBuilder {
  /** @internal */ readonly options: NetnsSandboxOptions = {};
  policy(policy: NetworkPolicyShape): this { this.options.policy = policy; return this; }
  maxConnections(max: number): this { this.options.maxConnections = max; return this; }
  /** Rate limits, all at once: { egress: "50mbit", ingress: "100mbit:1m", connRate: 20, dnsRate: 50 } (gateway/limits.ts). */
  limits(limits: RateLimits): this { this.options.limits = { ...this.options.limits, ...limits }; return this; }
  /** Most bandwidth from the guest: "50mbit", "50mbit:512k" (BURST in bytes), or { bitsPerSecond, burstBytes }. TCP is paced, UDP/ICMP over it dropped. */
  limitEgress(rate: string | BandwidthLimit): this { return this.limits({ egress: rate }); }
  /** Most bandwidth to the guest, as limitEgress. */
  limitIngress(rate: string | BandwidthLimit): this { return this.limits({ ingress: rate }); }
  /** Most new connections the guest opens a second (TCP SYNs over it wait; UDP/ICMP dropped); burst default perSecond/10. */
  limitConnRate(perSecond: number, burst?: number): this { return this.limits({ connRate: { perSecond, burst } }); }
  /** Most DNS queries a second (over it: REFUSED); burst default perSecond. */
  limitDnsRate(perSecond: number, burst?: number): this { return this.limits({ dnsRate: { perSecond, burst } }); }
  denyResponse(response: DenyResponse): this { this.options.denyResponse = response; return this; }
  /** Append denials as JSON lines to `path`; `limits` bound it (aggregation interval, size cap). */
  auditLog(path: string, limits?: AuditLogOptions): this { this.options.auditLog = path; this.options.auditLogOptions = limits; return this; }
  /** At destroy(), how long the guest's connections may go without moving data before they are reset (default 5000 ms). */
  exitGraceMs(ms: number): this { this.options.exitGraceMs = ms; return this; }
  onDeny(listener: (event: DenyEvent) => void): this { this.options.onDeny = listener; return this; }
  /** Every event of the sandbox (gateway/events.ts), from its creation on. */
  onEvent(listener: (event: GatewayEvent) => void): this { this.options.onEvent = listener; return this; }
  mtu(bytes: number): this { this.options.mtu = bytes; return this; }
  dnsForward(address: string): this { this.options.dnsForward = address; return this; }
  /** DNS interception: n.dns(d => d.blockDomain("x.example").nameservers(["192.0.2.53"])) */
  dns(configure: (d: DnsBuilder) => DnsBuilder): this {
    const d = new DnsBuilder();
    configure(d);
    this.options.dns = { ...this.options.dns, ...d.options };
    return this;
  }
  /** What happens to a peer on a published port that no inbound rule matched (default "allow"). */
  defaultIngress(action: Action): this { this.options.defaultIngress = action; return this; }
  /** TLS interception: n.tls(t => t.bypass("*.pinned.example").interceptedPorts([443, 8443])) */
  tls(configure: (t: TlsBuilder) => TlsBuilder): this {
    const t = new TlsBuilder();
    configure(t);
    this.options.tls = { ...this.options.tls, ...t.options };
    return this;
  }
  /** A secret: n.secret({ env: "API_KEY", allowedHosts: ["api.example.com"] }) (turns TLS interception on). */
  secret(spec: SecretSpec): this { (this.options.secrets ??= []).push({ ...spec }); return this; }
  /** What a placeholder headed anywhere else does (ViolationAction.Block by default). */
  onSecretViolation(action: ViolationAction): this { this.options.onSecretViolation = action; return this; }
  /** The reference's dns_rebind_protection() on the network builder. */
  dnsRebindProtection(enabled: boolean): this { this.options.dns = { ...this.options.dns, rebindProtection: enabled }; return this; }
}

export class SandboxBuilder<S extends NetnsSandbox | VmSandbox = NetnsSandbox> {
  private readonly net = new NetworkBuilder();
  private readonly ports: PortSpec[] = [];
  private vmOptions: VmOptions | undefined;
  private sandboxUser: { uid: number; gid?: number } | undefined;
  constructor(private readonly name: string) {}
  /**
   * The host uid (and gid; default: the uid's primary group) a namespace sandbox's root is.
   * Default: under sudo the user who ran it, else nobody (65534). Not for VM sandboxes.
   */
  user(uid: number, gid?: number): this {
    this.sandboxUser = { uid, gid };
    return this;
  }
  /**
   * Run the guest in a QEMU microVM instead of a network namespace:
   * `.vm({ memoryMiB: 512, cpus: 2, link: "vhost-user" })`; `await sandbox.run(argv, { stdout, stderr })`.
   */
  vm(options: VmOptions = {}): SandboxBuilder<VmSandbox> {
    this.vmOptions = { ...options };
    return this as unknown as SandboxBuilder<VmSandbox>;
  }
  /** Publish guest TCP port `guest` on 127.0.0.1:`host` (the reference's SandboxBuilder::port). */
  port(host: number, guest: number): this { this.ports.push({ host, guest, protocol: "tcp" }); return this; }
  /** Publish guest UDP port `guest` on 127.0.0.1:`host` (the reference's port_udp). */
  portUdp(host: number, guest: number): this { this.ports.push({ host, guest, protocol: "udp" }); return this; }
  /** Publish with every field: { bind, host, guest, protocol }. */
  publish(spec: PortSpec): this { this.ports.push({ ...spec }); return this; }
  network(configure: (n: NetworkBuilder) => NetworkBuilder): this {
    configure(this.net);
    return this;
  }
  /** Create the sandbox (a network namespace, or with vm() a microVM, served by a moat gateway). */
  create(): Promise<S> {
    const options = { ...this.net.options, ports: [...(this.net.options.ports ?? []), ...this.ports], name: this.name };
    if (this.vmOptions && this.sandboxUser) return Promise.reject(new ConfigError("user() is for namespace sandboxes", "a VM's command runs as root of its own kernel: drop user()"));
    return (this.vmOptions ? VmSandbox.create({ ...options, vm: this.vmOptions }) : NetnsSandbox.create({ ...options, user: this.sandboxUser })) as Promise<S>;
  }
}

export const Sandbox = {
  builder: (name: string): SandboxBuilder => new SandboxBuilder(name),
};
