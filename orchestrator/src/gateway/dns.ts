// dns.ts — a gateway's DNS interception (DESIGN §7): two interceptors of the same settings and
// hooks (dns/hooks.ts), one in the engine's worker for guest DNS over UDP, one here behind the
// DNS-over-TCP listener (and the TLS proxy's DoT), fed the same policy inputs (updateDns) and
// their events turned into the gateway's. An answer's pins go to the engine (domain rules reach
// the answered addresses) and to the names the TLS proxy holds SNIs to.
import ipaddr from "ipaddr.js";
import { enginePins } from "../engine/engine-config.js";
import type { EngineHost } from "../engine/engine-host.js";
import type { DnsWorkerSetup } from "../engine/engine-worker.js";
import { hostSet } from "../model/groups.js";
import type { NetworkPolicy } from "../model/policy.js";
import { DnsInterceptor, type DnsOutcome, type DnsQueryContext, type DnsSettings } from "../dns/interceptor.js";
import { SandboxDnsHooks, type DnsInputs } from "../dns/hooks.js";
import { UpstreamResolver } from "../dns/upstream.js";
import { DnsTcpServer } from "../dns/tcp-proxy.js";
import type { DnsStats } from "../dns/dns-stats.js";
import type { SandboxAddresses } from "./addressing.js";
import type { DnsEvent, Emit } from "./events.js";
import type { ValidOptions } from "./options.js";

/** What a gateway's DNS needs of it. */
export interface DnsWiring {
  readonly addresses: SandboxAddresses;
  readonly options: Pick<ValidOptions, "dns" | "dnsForward" | "secrets" | "tls">;
  /** Proves a redirect preamble came from this sandbox's engine. */
  readonly redirectToken: Buffer;
  /** Queries answered on this thread (the worker counts UDP's). */
  readonly stats: DnsStats;
  engine(): EngineHost | undefined;
  /** The DNS rate (the engine's bucket): may this thread answer the next query? */
  admit(): boolean | Promise<boolean>;
  readonly emit: Emit;
  /** A secret's placeholder in a query name. */
  secretViolation(secret: string, destination: string, where: string, form: string): void;
  /** A name this sandbox's DNS answered with an address, for `ttlMs` (what an SNI is held to). */
  pinned(ip: string, name: string, ttlMs: number): void;
}

/** The names a Deny domain rule covers: DNS for them is answered as blocked (DESIGN §7). */
export function denyNames(policy: NetworkPolicy): { domains: string[]; suffixes: string[] } {
  const domains: string[] = [];
  const suffixes: string[] = [];
  for (const r of policy.rules) {
    if (r.action !== "deny" || r.direction !== "outbound" || r.protocol !== undefined || r.ports !== undefined) continue;
    if (r.destination.kind === "domain") domains.push(r.destination.name);
    if (r.destination.kind === "domain-suffix") suffixes.push(r.destination.suffix);
  }
  return { domains, suffixes };
}

export class GatewayDns {
  private dns: DnsInterceptor | undefined;
  private dnsTcp: DnsTcpServer | undefined;
  /** Group Host for DNS rebinding protection: the gateway's addresses and the host's own. */
  private hostAddresses: string[] = [];
  /** What this thread's interceptor reads; the worker's is made from the same inputs. */
  private readonly hooks: SandboxDnsHooks;

  constructor(private readonly gw: DnsWiring) {
    this.hooks = new SandboxDnsHooks({}, gw.options.secrets, gw.options.tls !== undefined, () => gw.admit());
  }

  /**
   * Set up DNS interception: the setup of the interceptor the engine worker runs for DNS over UDP,
   * and, here, an interceptor of the same settings behind the DNS-over-TCP listener; returns the
   * setup and where the engine dials TCP/53.
   */
  async start(): Promise<{ listener: { ip: string; port: number }; setup: DnsWorkerSetup }> {
    const o = this.gw.options;
    const d = o.dns;
    const fwd = o.dnsForward;
    const servers = d.nameservers?.length ? await UpstreamResolver.resolveNameservers(d.nameservers)
      : fwd;
    const upstream = new UpstreamResolver(servers, d.queryTimeoutMs);
    const addr = this.gw.addresses;
    const gateway = hostSet([addr.gatewayIp4, addr.gatewayIp6, addr.gatewayLl6]);
    // One set of settings for both interceptors (the interceptor keeps a frozen copy of its own).
    const settings: DnsSettings = {
      blockDomains: d.blockDomains ?? [],
      blockDomainSuffixes: d.blockDomainSuffixes ?? [],
      blockedResponse: d.blockedResponse,
      rebindProtection: d.rebindProtection,
      queryTimeoutMs: d.queryTimeoutMs,
      maxInFlight: 64,
    };
    this.dns = new DnsInterceptor(settings, upstream, this.hooks);
    // The engine relays TCP/53 to any resolver here, with the resolver the guest addressed in a
    // preamble: the gateway's own go to the upstreams, others to the resolver itself (policy
    // admitted that connection), pinning nothing.
    this.dnsTcp = new DnsTcpServer(async (query, peer) => {
      const dest = peer.dest ?? { ip: addr.gatewayIp4, port: 53 };
      return this.answer(query, { protocol: "tcp", toGateway: gateway.has(ipaddr.parse(dest.ip).toString()), dest });
    }, { redirectToken: this.gw.redirectToken });
    await this.dnsTcp.listen();
    const a = this.dnsTcp.address();
    const setup: DnsWorkerSetup = {
      settings,
      upstreams: [...servers],
      update: {},
      reportAnswers: o.tls !== undefined, // the TLS proxy holds SNIs to the pinned names
      placeholders: o.secrets.map((x) => ({ env: x.env, placeholder: x.placeholder })),
    };
    return { listener: { ip: a.address, port: a.port }, setup };
  }

  /** A query answered on this thread (DNS over TCP, DoT): counted, its event and pins applied. */
  async answer(query: Buffer, ctx: DnsQueryContext): Promise<Buffer | null> {
    return (await this.answerWithPins(query, ctx)).answer;
  }

  /** answer(), and the pins the answer made (DoT: the TLS worker holds them before the guest reads it). */
  async answerWithPins(query: Buffer, ctx: DnsQueryContext): Promise<{ answer: Buffer | null; pins: DnsOutcome["pins"] }> {
    const started = performance.now();
    const out = await this.dns!.handle(query, ctx);
    this.gw.stats.record("tcp", (performance.now() - started) / 1000, out);
    if (out.event) this.onEvent(out.event);
    this.applyPins(out.pins);
    return { answer: out.answer, pins: out.pins };
  }

  /** New inputs for both DNS interceptors: this thread's and the worker's (dns/hooks.ts). */
  private update(u: DnsInputs): void {
    this.hooks.update(u);
    this.gw.engine()?.updateDns(u);
  }

  /** A policy was installed: its domain rules' names and deny names; returns every input. */
  setPolicy(names: readonly string[], policy: NetworkPolicy): DnsInputs {
    const u = { names: [...names], deny: denyNames(policy) };
    this.update(u);
    return { ...u, host: this.hostAddresses };
  }

  /** The host's own addresses changed: Group Host is they and the gateway's addresses. */
  setHostAddresses(addrs: readonly string[]): void {
    const a = this.gw.addresses;
    // (Rebinding protection compares whole addresses; local prefixes are the engine's to judge.)
    this.hostAddresses = [...hostSet([a.gatewayIp4, a.gatewayIp6, a.gatewayLl6, ...addrs.filter((x) => !x.includes("/"))])];
    this.update({ host: this.hostAddresses });
  }

  /** The engine started: host addresses that changed meanwhile reached no worker; send them. */
  started(): void {
    this.gw.engine()?.updateDns({ host: this.hostAddresses });
  }

  /** Either interceptor's events (blocked names, rebinding rewrites, ...) go to the audit log. */
  onEvent(event: NonNullable<DnsOutcome["event"]>): void {
    if (event.kind === "secret-violation") {
      return this.gw.secretViolation(event.secret ?? "?", "DNS", `the query name ${event.name ?? ""}`, "raw");
    }
    const { kind, name, detail } = event;
    this.gw.emit<DnsEvent>({ kind: `dns-${kind}` as DnsEvent["kind"], ...(name !== undefined ? { name } : {}), ...(detail !== undefined ? { detail } : {}) });
  }

  /** An answer given on this thread: its pins to the engine and the TLS proxy's name table. */
  private applyPins(pins: DnsOutcome["pins"]): void {
    if (!pins.length) return;
    this.gw.engine()?.installPins(enginePins(pins));
    for (const p of pins) this.gw.pinned(p.ip, p.name, p.ttlSec * 1000);
  }

  async close(): Promise<void> {
    await this.dnsTcp?.close();
  }
}
