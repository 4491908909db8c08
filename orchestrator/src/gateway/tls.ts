// tls.ts — a gateway's TLS interception (DESIGN §8): its TLS proxy (tls/proxy.ts, on a TLS worker:
// tls/tls-host.ts), which also serves the deny page, held to this sandbox's policy, its DNS answers and its secrets. An SNI,
// and every request's authority, must name what the domain rule that admitted the connection
// covers and what this sandbox's DNS answered with the connection's address (the pinned names);
// DoT is answered by this sandbox's DNS; refusals become the gateway's events.
import type { NameTable } from "../engine/policy-table.js";
import { hostSet } from "../model/groups.js";
import { describeRule, type NetworkPolicy } from "../model/policy.js";
import type { DnsOutcome, DnsQueryContext } from "../dns/interceptor.js";
import type { RedirectOrigin } from "../engine/redirect.js";
import { tlsStatsOver, type TlsEvent, type TlsProxyStats } from "../tls/proxy.js";
import { RemoteTlsProxy } from "../tls/tls-host.js";
import { PinnedNames, boundName, processCertificateAuthority, type ValidTls } from "../tls/setup.js";
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
  dnsAnswer(query: Buffer, ctx: DnsQueryContext): Promise<{ answer: Buffer | null; pins: DnsOutcome["pins"] }>;
  readonly emit: Emit;
  /** A secret's placeholder in a request to where it may not go. */
  secretViolation(secret: string, destination: string, where: string, form: string): void;
  /** The TLS proxy is gone: the sandbox's network must go down. */
  failed(reason: string): void;
}

export class GatewayTls {
  private tlsProxy: RemoteTlsProxy | undefined;
  /** Names this sandbox's DNS answered with an address: what an SNI is held to (the TLS worker has a replica). */
  private readonly pinnedNames = new PinnedNames();

  constructor(private readonly gw: TlsWiring) {}

  /** The proxy is serving (interception, or the deny page of deny response "http"). */
  get serving(): boolean {
    return this.tlsProxy !== undefined;
  }

  /**
   * Start this sandbox's TLS proxy (DESIGN §8) on a TLS worker (tls/tls-host.ts); returns where
   * the engine sends intercepted flows. The worker checks names on a replica of this gateway's
   * names and pins, and asks boundName here before it refuses a connection.
   */
  async startTls(t: ValidTls | undefined): Promise<{ ip: string; port: number }> {
    const { addresses } = this.gw;
    const gateway = hostSet([addresses.gatewayIp4, addresses.gatewayIp6, addresses.gatewayLl6]);
    this.tlsProxy = await RemoteTlsProxy.open({
      token: this.gw.redirectToken,
      ca: t?.ca ?? processCertificateAuthority(),
      bypass: [...(t?.bypass ?? [])],
      verifyUpstream: t?.verifyUpstream ?? true,
      upstreamCa: [...(t?.upstreamCa ?? [])],
      // TLS to the gateway itself (Group Host, where policy allows it) goes where the engine
      // sends the gateway's other traffic: the host's loopback.
      gatewayIp4: addresses.gatewayIp4,
      gatewayOthers: [addresses.gatewayIp6, addresses.gatewayLl6],
      secrets: [...this.gw.options.secrets],
      dot: true,
      ...this.forWorker(this.gw.names.names, this.gw.policy()),
      calls: {
        // SNI held to the pins: a connection a domain rule admitted must name, in its SNI, a name
        // this sandbox's DNS answered with that address and that the rule covers (and so must
        // every request's authority: a shared front routes by it). A CIDR or group rule's is not.
        check: (origin, name, what) => this.boundName(origin, name, what),
        pinnedUntil: (ip, name) => this.pinnedNames.until(ip, name),
        // DoT, to whatever resolver: answered by this sandbox's DNS (its upstreams), like DNS to the gateway.
        // The answer's pins go with it: the worker holds them before the guest reads the answer.
        dnsQuery: async (query, origin) => {
          const { answer, pins } = await this.gw.dnsAnswer(Buffer.from(query.buffer, query.byteOffset, query.byteLength),
            { protocol: "tcp", toGateway: true, dest: { ip: gateway.has(origin.ip) ? origin.ip : addresses.gatewayIp4, port: 53 } });
          return {
            answer: answer && new Uint8Array(answer), // (exactly the answer: a view's whole backing store would go with it)
            pins: pins.map((p) => ({ ip: p.ip, name: p.name, until: this.pinnedNames.until(p.ip, p.name) })),
          };
        },
        event: (e) => this.afterTls(e),
        violation: (v, destination) => this.gw.secretViolation(v.secret, destination, v.where, v.form),
      },
    });
    // Its worker gone, the proxy's listener is gone: the guest's network goes down with it (fail
    // closed), rather than redirect to a port anyone may bind next.
    this.tlsProxy.onFailure = (reason) => this.gw.failed(`its TLS proxy stopped (${reason})`);
    const a = this.tlsProxy.address();
    return { ip: a.address, port: a.port };
  }

  /** Names this sandbox's DNS answered with an address: here, and to the TLS worker's replica. */
  pin(answered: { ip: string; name: string; ttlMs: number }[]): void {
    for (const a of answered) this.pinnedNames.add(a.ip, a.name, a.ttlMs);
    this.tlsProxy?.pins(answered);
  }

  /** The policy just installed (its names, its rules for the deny page), to the TLS worker's replica. */
  setPolicy(names: readonly string[], policy: NetworkPolicy): void {
    const r = this.forWorker(names, policy);
    this.tlsProxy?.policy(r.names, r.rules);
  }

  private forWorker(names: readonly string[], policy: NetworkPolicy): { names: string[]; rules: string[] } {
    return { names: [...names], rules: policy.rules.map((r) => describeRule(r)) };
  }

  /**
   * A connection a domain rule admitted may name (in its SNI, in each request's authority) only a
   * name that rule covers and that this sandbox's DNS answered with the connection's address; why
   * not, or null. A connection a CIDR or group rule admitted is not held to names.
   */
  private boundName(origin: RedirectOrigin, name: string | undefined, what: string): string | null {
    return boundName(this.gw.names.names, this.pinnedNames, origin.admitNameId, origin.ip, name, what);
  }

  /** TLS refusals (SNI not pinned, upstream not verified, hostile ClientHello) go to the audit log. */
  private afterTls(e: TlsEvent): void {
    this.gw.emit<TlsRefusedEvent>({ kind: e.kind, ...(e.sni !== undefined ? { name: e.sni } : {}), destination: e.destination, detail: `${e.destination}: ${e.detail}` });
    this.gw.options.onTlsEvent?.(e);
  }

  /** What the TLS proxy has done (zeros without interception), read from its worker's counters. */
  tlsStats(): TlsProxyStats {
    return { ...(this.tlsProxy?.stats ?? tlsStatsOver()) };
  }

  async close(): Promise<void> {
    await this.tlsProxy?.close();
  }
}
