// gateway.ts — everything between a guest's NIC and the world, whatever the guest is (DESIGN §13).
//
// A Gateway owns the engine (its worker, the link it serves) and wires its parts to it and to
// each other: options.ts (what it is asked, checked), policy.ts (the policy in force; its
// denials), events.ts (one event type, one sink, the audit log), dns.ts (the worker's interceptor
// for UDP, this thread's for TCP and DoT), tls.ts (interception, the deny page), secrets.ts,
// ports.ts, limits.ts and engine.ts (the engine's configuration, the drain at the end). It does
// not know what the guest is: a network namespace (sandbox/netns-sandbox.ts), a QEMU microVM
// (vm/vm-sandbox.ts), or a VMM someone else runs (sandbox/serve.ts). The guest's owner gives it
// addresses, a link and a way to stop the guest (for a secret violation whose action is to
// terminate).
//
// Lifecycle: Gateway.start() -> (the guest runs) -> drain() -> stop(). stop() is idempotent.
import { randomBytes } from "node:crypto";
import { EngineHost } from "../engine/engine-host.js";
import type { EngineCounters } from "../engine/engine-config.js";
import type { NetworkPolicyShape, DenyResponse } from "../model/policy.js";
import { DnsStats } from "../dns/dns-stats.js";
import type { LinkSpec } from "../links/link.js";
import type { TlsProxy } from "../tls/proxy.js";
import type { SandboxAddresses } from "./addressing.js";
import type { ValidOptions } from "./options.js";
import { GatewayEvents, type GatewayEvent } from "./events.js";
import { GatewayPolicy } from "./policy.js";
import { GatewayDns } from "./dns.js";
import { GatewayTls } from "./tls.js";
import { GatewaySecrets } from "./secrets.js";
import { PublishedPorts, type PortSpec, type PublishedPort, type PortProtocol } from "./ports.js";
import { GatewayLimits, type RateLimits, type ValidLimits } from "./limits.js";
import { drainFlows, engineConfig, guestLink } from "./engine.js";
import { renderMetrics, type GatewaySample } from "./metrics.js";

/** What the guest's owner gives a gateway. */
export interface GatewayGuest {
  /** The sandbox's name (audit events use options.name when set). */
  name: string;
  addresses: SandboxAddresses;
  link: LinkSpec;
  /** Stop every process of the guest at once (a secret violation whose action is to terminate). */
  terminate: (reason: string) => void;
}

export class Gateway {
  readonly name: string;
  readonly addresses: SandboxAddresses;
  /** Why the guest was terminated by a secret violation (block-and-terminate), if it was. */
  terminatedBy: string | undefined;
  /** Events emitted so far, by kind (secret violations also by action): what metrics report. */
  readonly eventCounts: Map<string, number>;
  /** DNS queries answered on this thread (DNS over TCP, DoT); the worker counts UDP's. */
  readonly dnsStats = new DnsStats();
  private engine: EngineHost | undefined;
  /** Proves a redirect preamble came from this sandbox's engine (layout.ts, OP_ORIG). */
  private readonly redirectToken = randomBytes(16);
  private readonly events: GatewayEvents;
  private readonly policy: GatewayPolicy;
  private readonly rateLimits: GatewayLimits;
  private readonly dns: GatewayDns;
  private readonly tls: GatewayTls;
  private readonly secrets: GatewaySecrets;
  private readonly published: PublishedPorts;
  private stopped = false;
  private stopping: Promise<void> | undefined;

  private constructor(private readonly options: ValidOptions, guest: GatewayGuest) {
    const { addresses, name } = guest;
    this.name = name;
    this.addresses = addresses;
    this.events = new GatewayEvents(options.name ?? name, options); // (a bad audit log path fails here)
    this.eventCounts = this.events.counts;
    const { emit } = this.events;
    const engine = () => this.engine;
    this.policy = new GatewayPolicy(options.policy, options.denyResponse, {
      engine, defaultIngress: options.defaultIngress, emit, onDeny: options.onDeny, denyPage: () => this.tls.serving,
      installed: (names, p) => { this.tls.setPolicy(names, p); return this.dns.setPolicy(names, p); }, hostAddresses: (addrs) => this.dns.setHostAddresses(addrs),
      secretInPayload: (e) => this.secrets.inPayload(e),
    });
    this.rateLimits = new GatewayLimits(options.limits, options.maxConnections, { engine, emit });
    const secretViolation = (secret: string, destination: string, where: string, form: string) => this.secrets.violation(secret, destination, where, form);
    const terminate = (reason: string) => { if (!this.terminatedBy) guest.terminate((this.terminatedBy = reason)); };
    this.secrets = new GatewaySecrets({ options, auditLog: this.events.logged, emit, terminate });
    this.dns = new GatewayDns({
      addresses, options, redirectToken: this.redirectToken, stats: this.dnsStats, engine, emit, secretViolation,
      // The engine's bucket, which DNS over UDP asks too (a round trip: only with a DNS rate).
      admit: () => (this.engine && this.rateLimits.dnsRated ? this.engine.dnsAdmit() : true),
      pinned: (ip, pinnedName, ttlMs) => this.tls.pin([{ ip, name: pinnedName, ttlMs }]),
    });
    this.tls = new GatewayTls({
      addresses, options, redirectToken: this.redirectToken, names: this.policy.names, policy: () => this.policy.policy, emit, secretViolation,
      dnsAnswer: (query, ctx) => this.dns.answerWithPins(query, ctx),
      failed: (reason) => {
        process.stderr.write(`moat: sandbox ${this.name}: ${reason}; its network is down\n`);
        void this.engine?.stop();
      },
    });
    this.published = new PublishedPorts({ engine, stopped: () => this.stopped, name, onWarning: options.onWarning, emit });
  }

  /** Subscribe to every event of this gateway (as the audit log has them); returns an unsubscribe. */
  on(name: "event", fn: (event: GatewayEvent) => void): () => void {
    return this.events.on(name, fn);
  }

  off(name: "event", fn: (event: GatewayEvent) => void): void {
    this.events.off(fn);
  }

  /** The rate limits in force (null: none). */
  get limits(): ValidLimits {
    return this.rateLimits.limits;
  }

  /**
   * Change the rate limits of the running sandbox: a key given sets that limit ("50mbit", 20,
   * { bitsPerSecond, burstBytes }, ...), null removes it, a key left out keeps it. In force for
   * the flows already open too (a window, a credit, a held SYN) once this resolves; a new limit
   * starts with a full bucket. Resolves with the limits in force.
   */
  setLimits(change: RateLimits): Promise<ValidLimits> {
    return this.rateLimits.set(change);
  }

  get mtu(): number {
    return this.options.mtu;
  }

  /** True when the guest has no network interface (NetworkPolicy.none()): nothing is served. */
  get offline(): boolean {
    return this.policy.policy.offline;
  }

  /** Start serving the guest's link (NetworkPolicy.none(): nothing to serve, no engine). */
  static async start(o: ValidOptions, guest: GatewayGuest): Promise<Gateway> {
    const gw = new Gateway(o, guest);
    if (o.policy.offline) {
      gw.events.created(undefined);
      return gw;
    }
    try {
      const { listener: dnsTcp, setup: dnsSetup } = await gw.dns.start();
      // The proxy serves TLS interception and the deny page (deny response "http").
      const tlsProxy = o.tls || o.denyResponse === "http" ? await gw.tls.startTls(o.tls) : undefined;
      const config = engineConfig(o, guest.addresses, gw.redirectToken, dnsTcp, tlsProxy);
      gw.engine = await EngineHost.start(config, guestLink(o, guest.link), {
        prepare: (tables) => {
          gw.policy.install(tables); // (and the host's addresses, Group Host, kept current)
          gw.tls.setPolicy(gw.policy.names.names, gw.policy.policy); // the names just made, to the TLS worker
          tables.setSecretForms(o.secrets.map((x) => x.placeholder));
          // The worker's interceptor starts from the policy and addresses just installed.
          dnsSetup.update = gw.dns.setPolicy(gw.policy.names.names, gw.policy.policy);
        },
        onAudit: () => gw.policy.drainDenials(),
        dns: dnsSetup,
        onDnsEvent: (event) => gw.dns.onEvent(event),
        onDnsAnswered: (answered) => gw.tls.pin(answered),
        middleware: o.middleware,
      });
      gw.dns.started();
      gw.engine.onFailure = (reason) => {
        // Fail closed and loud: the guest has no network from here on.
        process.stderr.write(`moat: sandbox ${gw.name}: ${reason}; its network is down\n`);
      };
      gw.rateLimits.watch();
      gw.events.created(guest.addresses); // before its ports' events (and, if one fails, before sandbox-destroyed)
      // Before the guest runs: a port in use is an error now, not a surprise later.
      for (const p of o.ports) await gw.publish(p);
      return gw;
    } catch (e) {
      await gw.stop();
      throw e;
    }
  }

  /** The policy in force: its default, its rules as text (first match wins), the deny response. */
  policyInForce(): { defaultAction: string; rules: string[]; denyResponse: string; offline: boolean } {
    return this.policy.inForce();
  }

  /** Replace the policy of the running sandbox: new flows see it at once, live ones stay. */
  setPolicy(policy: NetworkPolicyShape, denyResponse?: DenyResponse): void {
    this.policy.set(policy, denyResponse);
  }

  /** The ports being served (host ports as bound: a requested 0 shows the port chosen). */
  get ports(): PublishedPort[] {
    return this.published.ports;
  }

  /**
   * Publish a port on the running sandbox: `publish(8080, 80)`, `publish(5353, 53, "udp")` or
   * `publish({ bind, host, guest, protocol })`. Resolves with the port as bound (host 0: the
   * kernel's choice) once it accepts connections; a port in use rejects with ERR_PORT.
   */
  publish(spec: PortSpec | number, guest?: number, protocol: PortProtocol = "tcp"): Promise<PublishedPort> {
    return this.published.publish(spec, guest, protocol);
  }

  /**
   * Withdraw a published port (by host port, and protocol if both are published): new peers are
   * refused from now on; connections already made carry on until they end.
   */
  unpublish(hostPort: number, protocol?: PortProtocol): Promise<void> {
    return this.published.unpublish(hostPort, protocol);
  }

  /** What the TLS proxy has done (zeros without interception). */
  tlsStats(): TlsProxy["stats"] {
    return this.tls.tlsStats();
  }

  /** The CA certificate (PEM) guests must trust, when TLS is intercepted. */
  get tlsCaCert(): string | undefined {
    return this.options.tls?.ca.certPem;
  }

  /** The placeholders the command sees, by variable name. */
  get placeholders(): Record<string, string> {
    return this.secrets.placeholders;
  }

  /**
   * `env` (a command's environment, GuestSandbox.commandEnv) with moat's own variables:
   * placeholders for the secrets (the values, under any variable, never go in) and, with TLS
   * interception, the variables that point clients at the bundle trusting moat's CA.
   */
  commandEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
    return this.secrets.commandEnv(env);
  }

  /** Everything metrics and --stats report about this gateway, sampled now. */
  async sample(): Promise<GatewaySample> {
    const worker = this.engine ? await this.engine.dnsStats().catch(() => DnsStats.empty()) : DnsStats.empty();
    return {
      sandbox: this.options.name ?? this.name,
      counters: this.counters(),
      flows: this.flowStats(),
      dns: DnsStats.add(worker, this.dnsStats.snapshot()),
      tls: this.tlsStats(),
      events: Object.fromEntries(this.eventCounts),
      limits: this.limits,
    };
  }

  /** This gateway's metrics in the Prometheus text exposition format 0.0.4 (gateway/metrics.ts). */
  async metrics(): Promise<string> {
    return renderMetrics([await this.sample()]);
  }

  /** Flows the policy allowed and denied so far. */
  flowDecisions(): { allowed: number; denied: number } {
    const c = this.counters();
    return { allowed: c.FLOWS_ALLOWED ?? 0, denied: c.DROP_POLICY ?? 0 };
  }

  counters(nonZero = false): EngineCounters {
    return this.engine ? this.engine.counters(nonZero) : {};
  }

  flowStats(): { flows: number; udp: number; tcp: number } {
    return this.engine ? this.engine.flowStats() : { flows: 0, udp: 0, tcp: 0 };
  }

  async liveSockets(): Promise<number> {
    return this.engine ? this.engine.liveSockets() : 0;
  }

  /**
   * Keep serving until the guest's TCP connections have finished, or have moved no data for
   * `graceMs` (engine.ts, drainFlows). Resolves with the number of connections still open (they
   * are cut, as resets, when the engine stops).
   */
  drain(graceMs: number = this.options.exitGraceMs, abort?: AbortSignal): Promise<number> {
    return drainFlows(() => this.engine, graceMs, abort);
  }

  /**
   * Stop serving: the audit ring drained, the engine stopped (connections still open are cut as
   * resets), the DNS and TLS listeners closed, the audit log flushed. Idempotent; call drain()
   * first to give the guest's connections their grace.
   */
  stop(): Promise<void> {
    return (this.stopping ??= this.teardown());
  }

  private async teardown(): Promise<void> {
    if (this.engine) {
      this.policy.drainDenials();
      this.rateLimits.check();
    }
    await this.engine?.stop();
    this.engine = undefined;
    this.stopSync();
    await this.dns.close();
    await this.tls.close();
  }

  /** @internal What can be undone at once (also from a process exit hook). */
  stopSync(): void {
    if (this.stopped) return;
    this.stopped = true;
    this.rateLimits.stop();
    this.events.destroyed(); // (and the audit log flushed)
    this.policy.stop();
  }
}
