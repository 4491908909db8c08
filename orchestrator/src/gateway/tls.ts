// tls.ts — a gateway's TLS interception (DESIGN §8): its TLS proxy (tls/proxy.ts), which also
// serves the deny page, held to this sandbox's policy, its DNS answers and its secrets. An SNI,
// and every request's authority, must name what the domain rule that admitted the connection
// covers and what this sandbox's DNS answered with the connection's address (the pinned names);
// DoT is answered by this sandbox's DNS; refusals become the gateway's events.
import ipaddr from "ipaddr.js";
import type { NameTable } from "../engine/policy-table.js";
import { hostSet } from "../model/groups.js";
import { ruleCovers } from "../model/names.js";
import { describeRule, type NetworkPolicy } from "../model/policy.js";
import type { DnsQueryContext } from "../dns/interceptor.js";
import type { RedirectOrigin } from "../dns/tcp-proxy.js";
import { TlsProxy, type TlsEvent } from "../tls/proxy.js";
import { PinnedNames, processCertificateAuthority, type ValidTls } from "../tls/setup.js";
import type { SandboxAddresses } from "./addressing.js";
import type { Emit, TlsRefusedEvent } from "./events.js";
import type { ValidOptions } from "./options.js";

/** What a gateway's TLS interception needs of it. */
export interface TlsWiring {
  readonly addresses: SandboxAddresses;
  readonly options: Pick<ValidOptions, "secrets" | "onTlsEvent">;
  /** Proves a redirect preamble came from this sandbox's engine. */
  readonly redirectToken: Buffer;
  /** The domain rules' names by id (what admitted a connection: RedirectOrigin.admitNameId). */
  readonly names: NameTable;
  /** The policy in force (the deny page names the rule that denied). */
  policy(): NetworkPolicy;
  /** A DNS query answered by this sandbox's DNS, as over TCP (DoT). */
  dnsAnswer(query: Buffer, ctx: DnsQueryContext): Promise<Buffer | null>;
  readonly emit: Emit;
  /** A secret's placeholder in a request to where it may not go. */
  secretViolation(secret: string, destination: string, where: string, form: string): void;
}

export class GatewayTls {
  private tlsProxy: TlsProxy | undefined;
  /** Names this sandbox's DNS answered with an address: what an SNI is held to. */
  readonly pinnedNames = new PinnedNames();

  constructor(private readonly gw: TlsWiring) {}

  /** The proxy is serving (interception, or the deny page of deny response "http"). */
  get serving(): boolean {
    return this.tlsProxy !== undefined;
  }

  /** Start this sandbox's TLS proxy (DESIGN §8); returns where the engine sends intercepted flows. */
  async startTls(t: ValidTls | undefined): Promise<{ ip: string; port: number }> {
    const { addresses } = this.gw;
    const gateway = hostSet([addresses.gatewayIp4, addresses.gatewayIp6, addresses.gatewayLl6]);
    this.tlsProxy = new TlsProxy({
      token: this.gw.redirectToken,
      ca: t?.ca ?? processCertificateAuthority(),
      bypass: t?.bypass ?? [],
      verifyUpstream: t?.verifyUpstream ?? true,
      upstreamCa: t?.upstreamCa ?? [],
      // TLS to the gateway itself (Group Host, where policy allows it) goes where the engine
      // sends the gateway's other traffic: the host's loopback.
      upstreamAddress: (ip) => (ip === addresses.gatewayIp4 ? "127.0.0.1" : gateway.has(ipaddr.parse(ip).toString()) ? "::1" : ip),
      denyReason: (rule) => {
        const rules = this.gw.policy().rules;
        return rule === 0 ? "the default action (deny)" : `rule ${rules[rule - 1] ? describeRule(rules[rule - 1]!) : rule - 1}`;
      },
      // SNI held to the pins: a connection a domain rule admitted must name, in its SNI, a name
      // this sandbox's DNS answered with that address and that the rule covers. A connection a
      // CIDR or group rule admitted is not constrained by its SNI.
      checkSni: (origin, sni) => this.boundName(origin, sni, "SNI"),
      // And every HTTP request's authority on such a connection (Host, :authority, an
      // absolute-form target): a shared front routes by it, not by the SNI.
      checkAuthority: (origin, host) => this.boundName(origin, host, "the request's authority"),
      // DoT, to whatever resolver: answered by this sandbox's DNS (its upstreams), like DNS to the gateway.
      dnsQuery: (query, origin) => this.gw.dnsAnswer(query, { protocol: "tcp", toGateway: true, dest: { ip: gateway.has(origin.ip) ? origin.ip : addresses.gatewayIp4, port: 53 } }),
      onEvent: (e) => this.afterTls(e),
      secrets: this.gw.options.secrets,
      pinned: (ip, name) => this.pinnedNames.has(ip, name),
      onViolation: (v, destination) => this.gw.secretViolation(v.secret.env, destination, v.where, v.form),
    });
    await this.tlsProxy.listen();
    const a = this.tlsProxy.address();
    return { ip: a.address, port: a.port };
  }

  /**
   * A connection a domain rule admitted may name (in its SNI, in each request's authority) only a
   * name that rule covers and that this sandbox's DNS answered with the connection's address; why
   * not, or null. A connection a CIDR or group rule admitted is not held to names.
   */
  private boundName(origin: RedirectOrigin, name: string | undefined, what: string): string | null {
    if (!origin.admitNameId) return null;
    const key = this.gw.names.names[origin.admitNameId - 1];
    if (key === undefined) return "admitted by a rule that is no longer in force";
    const rule = key.startsWith(".") ? `*${key}` : key;
    if (!name) return `no ${what}, but ${origin.ip} was admitted only as ${rule}`;
    if (!ruleCovers(key, name)) return `${what} ${name} is not covered by the rule that admitted ${origin.ip} (${rule})`;
    if (!this.pinnedNames.has(origin.ip, name)) return `this sandbox's DNS never answered ${name} with ${origin.ip}`;
    return null;
  }

  /** TLS refusals (SNI not pinned, upstream not verified, hostile ClientHello) go to the audit log. */
  private afterTls(e: TlsEvent): void {
    this.gw.emit<TlsRefusedEvent>({ kind: e.kind, ...(e.sni !== undefined ? { name: e.sni } : {}), destination: e.destination, detail: `${e.destination}: ${e.detail}` });
    this.gw.options.onTlsEvent?.(e);
  }

  /** What the TLS proxy has done (zeros without interception). */
  tlsStats(): TlsProxy["stats"] {
    return this.tlsProxy ? { ...this.tlsProxy.stats } : { denyPages: 0, intercepted: 0, bypassed: 0, dot: 0, badHello: 0, sniDenied: 0, upstreamFailed: 0, httpRefused: 0, scrubbed: 0, substituted: 0 };
  }

  async close(): Promise<void> {
    await this.tlsProxy?.close();
  }
}
