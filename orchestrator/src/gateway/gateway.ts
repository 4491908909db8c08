// gateway.ts — everything between a guest's NIC and the world, whatever the guest is (DESIGN §13).
//
// A Gateway owns the engine (its worker, the link it serves), the policy and its live
// replacement (with the name table domain rules use), DNS interception (the worker's interceptor
// for UDP and this thread's for DNS over TCP), the audit log, TLS interception, secrets and
// published ports. It does not know what the guest is: a network namespace (sandbox/netns-
// sandbox.ts), a QEMU microVM (vm/vm-sandbox.ts), or a VMM someone else runs (`moat serve`). The
// guest's owner gives it addresses, a link and a way to stop the guest (for a secret violation
// whose action is to terminate).
//
// Lifecycle: Gateway.start() -> (the guest runs) -> drain() -> stop(). stop() is idempotent.
import { randomBytes } from "node:crypto";
import { constants as osConstants } from "node:os";
import ipaddr from "ipaddr.js";
import type { SandboxAddresses } from "./addressing.js";
import { EngineHost } from "../engine/engine-host.js";
import { addr16, enginePins, type EngineConfig, type EngineCounters } from "../engine/engine-config.js";
import { isIPv4 } from "node:net";
import { ConfigError, MoatError } from "../errors.js";
import { NetworkPolicy, validatePolicy, describeRule, type NetworkPolicyShape, type DenyResponse } from "../model/policy.js";
import { NameTable } from "../engine/policy-table.js";
import { AuditLog } from "../policy/audit.js";
import { hostSet } from "../model/groups.js";
import { watchHostAddresses } from "../policy/host-addresses.js";
import { DnsInterceptor, type DnsOutcome, type DnsSettings } from "../dns/interceptor.js";
import { SandboxDnsHooks, type DnsInputs } from "../dns/hooks.js";
import { UpstreamResolver } from "../dns/upstream.js";
import { DnsTcpServer, type RedirectOrigin } from "../dns/tcp-proxy.js";
import type { DnsWorkerSetup } from "../engine/engine-worker.js";
import { layout as L } from "../engine/layout.js";
import type { LinkSpec } from "../links/link.js";
import { validatePort, exposureWarning, describePort, type PortSpec, type PublishedPort, type PortProtocol } from "./ports.js";
import { TlsProxy, type TlsEvent } from "../tls/proxy.js";
import { PinnedNames, processCertificateAuthority, GUEST_TRUST, type ValidTls } from "../tls/setup.js";
import { ruleCovers } from "../model/names.js";
import type { ValidOptions, SecretViolationEvent } from "./options.js";
import { EventSink, makeEvent, type GatewayEvent, type FlowDeniedEvent, type DnsEvent, type TlsRefusedEvent, type SecretViolationGatewayEvent, type PortEvent, type LifecycleEvent, type LimitEvent } from "./events.js";
import { DnsStats } from "../dns/dns-stats.js";
import { renderMetrics, type GatewaySample } from "./metrics.js";
import { applyLimits, engineLimits, formatLimit, NO_LIMITS, type RateLimits, type ValidLimits } from "./limits.js";

/** The longest drain() waits for connections that keep moving data, in grace periods. */
const EXIT_GRACE_TOTAL_FACTOR = 30;
const { EADDRINUSE } = osConstants.errno;

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
  private stopped = false;
  private readonly names = new NameTable();
  private policy: NetworkPolicy;
  private denyResponse: DenyResponse;
  private engine: EngineHost | undefined;
  private readonly auditLog: AuditLog | undefined;
  readonly name: string;
  readonly addresses: SandboxAddresses;

  private constructor(private readonly options: ValidOptions, private readonly guest: GatewayGuest) {
    this.policy = options.policy;
    this.limitsNow = options.limits;
    this.denyResponse = options.denyResponse;
    this.name = guest.name;
    this.addresses = guest.addresses;
    this.dnsHooks = new SandboxDnsHooks({}, options.secrets, options.tls !== undefined,
      // The engine's bucket, which DNS over UDP asks too (a round trip to the worker: only with a DNS rate).
      () => (this.engine && this.limitsNow.dnsRate ? this.engine.dnsAdmit() : true));
    this.auditLog = options.auditLog ? new AuditLog(options.auditLog, options.auditLogOptions) : undefined; // a bad path fails here, before anything runs
    const log = this.auditLog;
    // A violation whose action is "block" is the request's business alone: the audit log has it
    // only with block-and-log or block-and-terminate (listeners and metrics see every one).
    if (log) this.sink.on((e) => { if (!(e.kind === "secret-violation" && e.action === "block")) log.write([e]); });
    this.sink.on((e) => this.countEvent(e));
    if (options.onEvent) this.sink.on(options.onEvent);
  }

  // ---- events (gateway/events.ts) -------------------------------------------------------------------
  private readonly sink = new EventSink();
  /** Events emitted so far, by kind (secret violations also by action): what metrics report. */
  readonly eventCounts = new Map<string, number>();
  /** DNS queries answered on this thread (DNS over TCP, DoT); the worker counts UDP's. */
  readonly dnsStats = new DnsStats();

  /** Subscribe to every event of this gateway (the shape the audit log writes); returns an unsubscribe. */
  on(name: "event", fn: (event: GatewayEvent) => void): () => void {
    if (name !== "event") throw new ConfigError(`unknown gateway event "${String(name)}"`, `subscribe with on("event", fn): one event type, told apart by its kind`);
    return this.sink.on(fn);
  }

  off(name: "event", fn: (event: GatewayEvent) => void): void {
    this.sink.off(fn);
  }

  private get eventName(): string {
    return this.options.name ?? this.name;
  }

  private emit<E extends GatewayEvent>(fields: Parameters<typeof makeEvent<E>>[1]): E {
    const e = makeEvent<E>(this.eventName, fields);
    this.sink.emit(e);
    return e;
  }

  private countEvent(e: GatewayEvent): void {
    const key = e.kind === "secret-violation" ? `secret-violation:${e.action}` : e.kind;
    this.eventCounts.set(key, (this.eventCounts.get(key) ?? 0) + 1);
  }

  /**
   * Limits hit since the last look (engine counters): one limit-hit event per limit that moved,
   * with what was refused or dropped (`count`) and, for the rate limits that hold traffic back
   * rather than refuse it, how often they did (`delayed`).
   */
  private lastLimits: Record<string, number> = {};
  private checkLimits(): void {
    if (!this.engine) return;
    const c = this.counters();
    const l = this.limits;
    const limits: [limit: string, refused: string, delayed: string | undefined, detail: string][] = [
      ["max-connections", "DROP_FLOW_LIMIT", undefined, `new flows refused: the sandbox holds its most connections (${this.options.maxConnections}, --max-connections)`],
      ["flow-table", "DROP_FLOW_TABLE_FULL", undefined, "new flows refused: the flow table is full"],
      ["dns-in-flight", "DROP_DNS_OVERLOAD", undefined, "DNS queries dropped: too many in flight"],
      ["egress-rate", "DROP_RATE_EGRESS", "RATE_EGRESS_PACED", `traffic from the guest held to ${formatLimit(l.egress)} (--limit-egress): UDP/ICMP datagrams dropped (count), TCP windows held back (delayed)`],
      ["ingress-rate", "DROP_RATE_INGRESS", "RATE_INGRESS_PACED", `traffic to the guest held to ${formatLimit(l.ingress)} (--limit-ingress): UDP/ICMP datagrams dropped (count), TCP reads held back (delayed)`],
      ["conn-rate", "DROP_RATE_CONN", "RATE_CONN_DELAYED", `new connections held to ${formatLimit(l.connRate)} a second (--limit-conn-rate): UDP/ICMP flows dropped or TCP reset with the queue full (count), TCP connections held until the rate allowed (delayed)`],
      ["dns-rate", "DNS_RATE_REFUSED", undefined, `DNS queries held to ${formatLimit(l.dnsRate)} a second (--limit-dns-rate): answered REFUSED`],
    ];
    const moved = (counter: string): number => {
      const now = c[counter] ?? 0;
      const delta = now - (this.lastLimits[counter] ?? 0);
      this.lastLimits[counter] = now;
      return delta;
    };
    for (const [limit, refused, delayedBy, detail] of limits) {
      const count = moved(refused);
      const delayed = delayedBy ? moved(delayedBy) : 0;
      if (count > 0 || delayed > 0) this.emit<LimitEvent>({ kind: "limit-hit", limit, count, ...(delayedBy ? { delayed } : {}), detail });
    }
  }

  // ---- rate limits (gateway/limits.ts) ------------------------------------------------------------
  private limitsNow: ValidLimits = NO_LIMITS;

  /** The rate limits in force (null: none). */
  get limits(): ValidLimits {
    return { ...this.limitsNow };
  }

  /**
   * Change the rate limits of the running sandbox: a key given sets that limit ("50mbit", 20,
   * { bitsPerSecond, burstBytes }, ...), null removes it, a key left out keeps it. In force for
   * the flows already open too (a window, a credit, a held SYN) once this resolves; a new limit
   * starts with a full bucket. Resolves with the limits in force.
   */
  async setLimits(change: RateLimits): Promise<ValidLimits> {
    const next = applyLimits(this.limitsNow, change, (k) => `limits.${k}`);
    this.limitsNow = next; // (a change made before this one resolves builds on it)
    if (this.engine) await this.engine.setLimits(engineLimits(next));
    return this.limits;
  }

  private limitTimer: NodeJS.Timeout | undefined;

  get mtu(): number {
    return this.options.mtu;
  }

  /** True when the guest has no network interface (NetworkPolicy.none()): nothing is served. */
  get offline(): boolean {
    return this.policy.offline;
  }

  /** Start serving the guest's link (NetworkPolicy.none(): nothing to serve, no engine). */
  static async start(o: ValidOptions, guest: GatewayGuest): Promise<Gateway> {
    const gw = new Gateway(o, guest);
    if (o.policy.offline) {
      gw.emitCreated();
      return gw;
    }
    try {
      const addresses = guest.addresses;
      const { listener: dnsTcp, setup: dnsSetup } = await gw.startDns(o);
      // The proxy serves TLS interception and the deny page (deny response "http").
      const tlsProxy = o.tls || o.denyResponse === "http" ? await gw.startTls(o.tls) : undefined;
      dnsSetup.reportAnswers = o.tls !== undefined; // the TLS proxy holds SNIs to the pinned names
      dnsSetup.placeholders = o.secrets.map((x) => ({ env: x.env, placeholder: x.placeholder }));
      const config: EngineConfig = {
        gatewayMac: addresses.gatewayMac,
        guestMac: addresses.guestMac,
        gatewayIp4: addresses.gatewayIp4,
        guestIp4: addresses.guestIp4,
        prefixLen4: addresses.prefixLen4,
        gatewayIp6: addresses.gatewayIp6,
        gatewayLl6: addresses.gatewayLl6,
        guestIp6: addresses.guestIp6,
        prefix6: addresses.prefix6,
        mtu: o.mtu,
        leaseSecs: 86400,
        udpIdleMs: o.udpIdleMs,
        maxUdpFlows: o.maxUdpFlows,
        maxTcpFlows: L.FLOW_CAPACITY,
        maxConnections: o.maxConnections,
        dnsForward: dnsTcp,
        dnsIntercept: true,
        redirectToken: gw.redirectToken,
        tls: o.tls && tlsProxy ? { proxy: tlsProxy, ports: o.tls.ports, blockQuic: o.tls.blockQuic } : undefined,
        denyPage: o.denyResponse === "http" ? tlsProxy : undefined,
        limits: engineLimits(o.limits),
      };
      // A vhost-user guest is offered the gateway's MTU; an attached interface carries frames of it.
      const link: LinkSpec = guest.link.kind === "vhost-user" || guest.link.kind === "attach" ? { mtu: o.mtu, ...guest.link } : guest.link;
      gw.engine = await EngineHost.start(config, link, {
        prepare: (tables) => {
          tables.installPolicy(gw.policy, gw.denyResponse, gw.names, o.defaultIngress);
          tables.setSecretForms(o.secrets.map((x) => x.placeholder));
          // The host's own addresses are Group Host from the first frame on, and kept current.
          gw.unwatchHost = watchHostAddresses((addrs) => {
            // (DNS rebinding protection compares whole addresses; local prefixes are the engine's to judge.)
            gw.hostAddresses = [...hostSet([addresses.gatewayIp4, addresses.gatewayIp6, addresses.gatewayLl6, ...addrs.filter((a) => !a.includes("/"))])];
            tables.setHostAddresses(addrs);
            gw.updateDns({ host: gw.hostAddresses });
          });
          // The worker's interceptor starts from the policy and addresses just installed.
          dnsSetup.update = { names: [...gw.names.names], deny: denyNames(gw.policy), host: gw.hostAddresses };
          gw.dnsHooks.update(dnsSetup.update);
        },
        onAudit: () => gw.drainAudit(),
        dns: dnsSetup,
        onDnsEvent: (event) => gw.afterDns({ answer: null, pins: [], event }),
        onDnsAnswered: (answered) => { for (const a of answered) gw.pinnedNames.add(a.ip, a.name, a.ttlMs); },
        middleware: o.middleware,
      });
      // Host addresses that changed while the worker was starting reached no worker: send the set now.
      gw.engine.updateDns({ host: gw.hostAddresses });
      gw.engine.onFailure = (reason) => {
        // Fail closed and loud: the guest has no network from here on.
        process.stderr.write(`moat: sandbox ${gw.name}: ${reason}; its network is down\n`);
      };
      gw.limitTimer = setInterval(() => gw.checkLimits(), 1000);
      gw.limitTimer.unref();
      gw.emitCreated(); // before its ports' events (and, if one fails, before sandbox-destroyed)
      // Before the guest runs: a port in use is an error now, not a surprise later.
      for (const p of o.ports) await gw.publish(p);
      return gw;
    } catch (e) {
      await gw.stop();
      throw e;
    }
  }

  private created = false;
  private emitCreated(): void {
    this.created = true;
    const a = this.addresses;
    this.emit<LifecycleEvent>({ kind: "sandbox-created", ...(this.offline ? {} : { guest: { ipv4: a.guestIp4, ipv6: a.guestIp6 }, gateway: { ipv4: a.gatewayIp4, ipv6: a.gatewayLl6 } }) });
  }

  /** The policy in force: its default, its rules as text (first match wins), the deny response. */
  policyInForce(): { defaultAction: string; rules: string[]; denyResponse: string; offline: boolean } {
    return { defaultAction: this.policy.defaultAction, rules: this.policy.rules.map((r) => describeRule(r)), denyResponse: this.denyResponse, offline: this.policy.offline };
  }

  /** Replace the policy of the running sandbox: new flows see it at once, live ones stay. */
  setPolicy(policy: NetworkPolicyShape, denyResponse: DenyResponse = this.denyResponse): void {
    const p = validatePolicy(policy);
    if (denyResponse === "http" && !this.tlsProxy) throw new ConfigError(`deny response "http" needs the deny page, which is set up at creation`, `create the sandbox with denyResponse "http"`);
    if (p.offline !== this.policy.offline) {
      throw new ConfigError("a running sandbox cannot switch to or from NetworkPolicy.none()", "none() decides whether the sandbox has an interface at all: choose it at creation");
    }
    this.engine?.tables.installPolicy(p, denyResponse, this.names, this.options.defaultIngress);
    this.policy = p;
    this.denyResponse = denyResponse;
    this.updateDns({ names: [...this.names.names], deny: denyNames(p) });
  }

  // ---- published ports ----------------------------------------------------------------------------
  private readonly published = new Map<number, PublishedPort>(); // by listener id
  private nextListener = 0;

  /** The ports being served (host ports as bound: a requested 0 shows the port chosen). */
  get ports(): PublishedPort[] {
    return [...this.published.values()].map((p) => ({ ...p }));
  }

  /**
   * Publish a port on the running sandbox: `publish(8080, 80)`, `publish(5353, 53, "udp")` or
   * `publish({ bind, host, guest, protocol })`. Resolves with the port as bound (host 0: the
   * kernel's choice) once it accepts connections; a port in use rejects with ERR_PORT.
   */
  async publish(spec: PortSpec | number, guest?: number, protocol: PortProtocol = "tcp"): Promise<PublishedPort> {
    const want = validatePort(typeof spec === "number" ? { host: spec, guest: guest as number, protocol } : spec);
    if (!this.engine) throw new MoatError("ERR_PORT", `cannot publish ${describePort(want)}: the sandbox has no network${this.stopped ? " (stopped)" : ""}`);
    if (this.published.size >= L.PUB_MAX) throw new MoatError("ERR_PORT", `cannot publish ${describePort(want)}: ${L.PUB_MAX} ports are published already`, "unpublish one first");
    // Listener ids rotate, so a decision still in flight for a withdrawn port never meets a new one.
    let id = this.nextListener;
    while (this.published.has(id)) id = (id + 1) % L.PUB_MAX;
    this.nextListener = (id + 1) % L.PUB_MAX;
    // [::] listens dual-stack, so 127.0.0.1:H and [::1]:H both reach the guest (IPv4 peers
    // arrive as ::ffff:a.b.c.d, judged by ingress rules as the IPv4 address they are). Where IPv4
    // port H is taken already — by another program, or by this sandbox's own IPv4 publish of H —
    // it listens on IPv6 only, and says so unless this sandbox serves the IPv4 side itself.
    const family = isIPv4(want.bind) ? 4 : 6;
    const wildcard6 = want.bind === "::";
    let r = await this.engine.listen(id, want.protocol, family, addr16(want.bind), want.host, want.guest, wildcard6);
    let ipv6Only = false;
    if (wildcard6 && r === -EADDRINUSE) {
      r = await this.engine.listen(id, want.protocol, family, addr16(want.bind), want.host, want.guest, false);
      ipv6Only = r >= 0;
    }
    if (r < 0) throw this.publishError(want, -r);
    const p: PublishedPort = { ...want, host: r, ...(ipv6Only ? { ipv6Only } : {}) };
    const ownIPv4 = [...this.published.values()].some((o) => o.host === p.host && o.protocol === p.protocol && isIPv4(o.bind));
    this.published.set(id, p);
    if (ipv6Only && !ownIPv4) {
      this.options.onWarning(`publishing ${describePort(p)}: IPv4 port ${p.host}/${p.protocol} is taken on this machine, so only IPv6 peers reach sandbox port ${p.guest} (127.0.0.1:${p.host} does not)`);
    }
    this.emit<PortEvent>({ kind: "port-published", ...p });
    const warning = exposureWarning(p);
    if (warning) this.options.onWarning(warning);
    return { ...p };
  }

  /** Why `want` could not be published (errno from the listener's bind). */
  private publishError(want: PublishedPort, errno: number): MoatError {
    const inUse = errno === EADDRINUSE;
    const dual = inUse && isIPv4(want.bind)
      ? [...this.published.values()].find((o) => o.bind === "::" && !o.ipv6Only && o.host === want.host && o.protocol === want.protocol)
      : undefined;
    if (dual) {
      return new MoatError("ERR_PORT", `cannot publish ${describePort(want)}: this sandbox's ${describePort(dual)} listens on IPv4 too (dual-stack)`,
        `publish ${describePort(want)} before [::] (which then listens on IPv6 only), or leave it out: ${describePort(dual)} already takes IPv4 peers to sandbox port ${dual.guest}`);
    }
    return new MoatError("ERR_PORT", `cannot publish ${describePort(want)}: ${inUse ? "the port is already in use" : errno === 99 ? "that address is not on this machine" : errno === 13 ? "permission denied" : `error ${errno}`}`,
      inUse ? `choose another host port, or stop what listens on ${want.host} (ss -lntup 'sport = :${want.host}')` : undefined);
  }

  /**
   * Withdraw a published port (by host port, and protocol if both are published): new peers are
   * refused from now on; connections already made carry on until they end.
   */
  async unpublish(hostPort: number, protocol?: PortProtocol): Promise<void> {
    const hit = [...this.published].filter(([, p]) => p.host === hostPort && (protocol === undefined || p.protocol === protocol));
    if (hit.length === 0) throw new MoatError("ERR_PORT", `host port ${hostPort}${protocol ? `/${protocol}` : ""} is not published by sandbox ${this.name}`, `published: ${this.ports.map(describePort).join(", ") || "none"}`);
    for (const [id, p] of hit) {
      this.published.delete(id);
      await this.engine?.unlisten(id);
      this.emit<PortEvent>({ kind: "port-unpublished", ...p });
    }
  }

  /** New inputs for both DNS interceptors: this thread's and the worker's (dns/hooks.ts). */
  private updateDns(u: DnsInputs): void {
    this.dnsHooks.update(u);
    this.engine?.updateDns(u);
  }

  /** Denials waiting in the engine's audit ring: to the audit log and the onDeny listener. */
  private drainAudit(): void {
    if (!this.engine) return;
    const all = this.engine.tables.drainDenials((i) => (this.policy.rules[i] ? describeRule(this.policy.rules[i]!) : "?"));
    // A secret's placeholder in the guest's own TCP or UDP: a violation, not a policy denial.
    for (const e of all) {
      if (e.secret !== undefined) {
        const env = this.options.secrets[e.secret]?.env ?? "?";
        this.secretViolation(env, `${e.destination.includes(":") ? `[${e.destination}]` : e.destination}:${e.port}`, e.protocol === "udp" ? "a UDP datagram" : "a TCP stream", "raw or encoded");
        continue;
      }
      const { time, direction, protocol, source, destination, port, rule } = e;
      const event = this.emit<FlowDeniedEvent>({ time, kind: "flow-denied", direction, protocol, source, destination, port, rule, action: "deny" });
      this.options.onDeny?.(event);
    }
  }

  private dns: DnsInterceptor | undefined;
  private dnsTcp: DnsTcpServer | undefined;
  /** Group Host for DNS rebinding protection: the gateway's addresses and the host's own. */
  private hostAddresses: string[] = [];
  /** What this thread's interceptor reads; the worker's is made from the same inputs. */
  private readonly dnsHooks: SandboxDnsHooks;
  /** Proves a redirect preamble came from this sandbox's engine (layout.ts, OP_ORIG). */
  private readonly redirectToken = randomBytes(16);
  private unwatchHost: (() => void) | undefined;

  /**
   * Set up DNS interception: the setup of the interceptor the engine worker runs for DNS over UDP,
   * and, here, an interceptor of the same settings behind the DNS-over-TCP listener; returns the
   * setup and where the engine dials TCP/53.
   */
  private async startDns(o: ValidOptions): Promise<{ listener: { ip: string; port: number }; setup: DnsWorkerSetup }> {
    const d = o.dns;
    const fwd = o.dnsForward;
    const servers = d.nameservers?.length ? await UpstreamResolver.resolveNameservers(d.nameservers)
      : fwd;
    const upstream = new UpstreamResolver(servers, d.queryTimeoutMs ?? 5000);
    const gateway = hostSet([this.addresses.gatewayIp4, this.addresses.gatewayIp6, this.addresses.gatewayLl6]);
    // One set of settings for both interceptors (the interceptor keeps a frozen copy of its own).
    const settings: DnsSettings = {
      blockDomains: d.blockDomains ?? [],
      blockDomainSuffixes: d.blockDomainSuffixes ?? [],
      blockedResponse: d.blockedResponse ?? "refused",
      rebindProtection: d.rebindProtection ?? true,
      queryTimeoutMs: d.queryTimeoutMs ?? 5000,
      maxInFlight: 64,
    };
    this.dns = new DnsInterceptor(settings, upstream, this.dnsHooks);
    // The engine relays TCP/53 to any resolver here, with the resolver the guest addressed in a
    // preamble: the gateway's own go to the upstreams, others to the resolver itself (policy
    // admitted that connection), pinning nothing.
    this.dnsTcp = new DnsTcpServer(async (query, peer) => {
      const dest = peer.dest ?? { ip: this.addresses.gatewayIp4, port: 53 };
      const toGateway = gateway.has(ipaddr.parse(dest.ip).toString());
      const started = performance.now();
      const out = await this.dns!.handle(query, { protocol: "tcp", toGateway, dest });
      this.dnsStats.record("tcp", (performance.now() - started) / 1000, out);
      this.afterDns(out);
      this.applyPins(out.pins);
      return out.answer;
    }, { redirectToken: this.redirectToken });
    await this.dnsTcp.listen();
    const a = this.dnsTcp.address();
    const setup: DnsWorkerSetup = { settings, upstreams: [...servers], update: {} };
    return { listener: { ip: a.address, port: a.port }, setup };
  }

  // ---- TLS interception -----------------------------------------------------------------------------
  private tlsProxy: TlsProxy | undefined;
  /** Names this sandbox's DNS answered with an address: what an SNI is held to. */
  private readonly pinnedNames = new PinnedNames();

  /** Start this sandbox's TLS proxy (DESIGN §8); returns where the engine sends intercepted flows. */
  private async startTls(t: ValidTls | undefined): Promise<{ ip: string; port: number }> {
    const gateway = hostSet([this.addresses.gatewayIp4, this.addresses.gatewayIp6, this.addresses.gatewayLl6]);
    this.tlsProxy = new TlsProxy({
      token: this.redirectToken,
      ca: t?.ca ?? processCertificateAuthority(),
      bypass: t?.bypass ?? [],
      verifyUpstream: t?.verifyUpstream ?? true,
      upstreamCa: t?.upstreamCa ?? [],
      // TLS to the gateway itself (Group Host, where policy allows it) goes where the engine
      // sends the gateway's other traffic: the host's loopback.
      upstreamAddress: (ip) => (ip === this.addresses.gatewayIp4 ? "127.0.0.1" : gateway.has(ipaddr.parse(ip).toString()) ? "::1" : ip),
      denyReason: (rule) => (rule === 0 ? "the default action (deny)" : `rule ${this.policy.rules[rule - 1] ? describeRule(this.policy.rules[rule - 1]!) : rule - 1}`),
      // SNI held to the pins: a connection a domain rule admitted must name, in its SNI, a name
      // this sandbox's DNS answered with that address and that the rule covers. A connection a
      // CIDR or group rule admitted is not constrained by its SNI.
      checkSni: (origin, sni) => this.boundName(origin, sni, "SNI"),
      // And every HTTP request's authority on such a connection (Host, :authority, an
      // absolute-form target): a shared front routes by it, not by the SNI.
      checkAuthority: (origin, host) => this.boundName(origin, host, "the request's authority"),
      // DoT, to whatever resolver: answered by this sandbox's DNS (its upstreams), like DNS to the gateway.
      dnsQuery: async (query, origin) => {
        const started = performance.now();
        const out = await this.dns!.handle(query, { protocol: "tcp", toGateway: true, dest: { ip: gateway.has(origin.ip) ? origin.ip : this.addresses.gatewayIp4, port: 53 } });
        this.dnsStats.record("tcp", (performance.now() - started) / 1000, out);
        this.afterDns(out);
        this.applyPins(out.pins);
        return out.answer;
      },
      onEvent: (e) => this.afterTls(e),
      secrets: this.options.secrets,
      pinned: (ip, name) => this.pinnedNames.has(ip, name),
      onViolation: (v, destination) => this.secretViolation(v.secret.env, destination, v.where, v.form),
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
    const key = this.names.names[origin.admitNameId - 1];
    if (key === undefined) return "admitted by a rule that is no longer in force";
    const rule = key.startsWith(".") ? `*${key}` : key;
    if (!name) return `no ${what}, but ${origin.ip} was admitted only as ${rule}`;
    if (!ruleCovers(key, name)) return `${what} ${name} is not covered by the rule that admitted ${origin.ip} (${rule})`;
    if (!this.pinnedNames.has(origin.ip, name)) return `this sandbox's DNS never answered ${name} with ${origin.ip}`;
    return null;
  }

  /** TLS refusals (SNI not pinned, upstream not verified, hostile ClientHello) go to the audit log. */
  private afterTls(e: TlsEvent): void {
    this.emit<TlsRefusedEvent>({ kind: e.kind, ...(e.sni !== undefined ? { name: e.sni } : {}), destination: e.destination, detail: `${e.destination}: ${e.detail}` });
    this.options.onTlsEvent?.(e);
  }

  /** What the TLS proxy has done (zeros without interception). */
  tlsStats(): TlsProxy["stats"] {
    return this.tlsProxy ? { ...this.tlsProxy.stats } : { denyPages: 0, intercepted: 0, bypassed: 0, dot: 0, badHello: 0, sniDenied: 0, upstreamFailed: 0, httpRefused: 0, scrubbed: 0, substituted: 0 };
  }

  /** Everything metrics and --stats report about this gateway, sampled now. */
  async sample(): Promise<GatewaySample> {
    const worker = this.engine ? await this.engine.dnsStats().catch(() => DnsStats.empty()) : DnsStats.empty();
    return {
      sandbox: this.eventName,
      counters: this.counters(),
      flows: this.flowStats(),
      dns: DnsStats.add(worker, this.dnsStats.snapshot()),
      tls: { ...this.tlsStats(), leavesMinted: this.options.tls?.ca.minted ?? 0 },
      events: Object.fromEntries(this.eventCounts),
      limits: this.limits,
    };
  }

  /** This gateway's metrics in the Prometheus text exposition format 0.0.4 (gateway/metrics.ts). */
  async metrics(): Promise<string> {
    return renderMetrics([await this.sample()]);
  }

  /** The CA certificate (PEM) guests must trust, when TLS is intercepted. */
  get tlsCaCert(): string | undefined {
    return this.options.tls?.ca.certPem;
  }

  // ---- secrets ------------------------------------------------------------------------------------
  /** Why the guest was terminated by a secret violation (block-and-terminate), if it was. */
  terminatedBy: string | undefined;

  /** The placeholders the command sees, by variable name. */
  get placeholders(): Record<string, string> {
    return Object.fromEntries(this.options.secrets.map((x) => [x.env, x.placeholder]));
  }

  /**
   * `env` (a command's environment, GuestSandbox.commandEnv) with moat's own variables:
   * placeholders for the secrets (the values, under any variable, never go in) and, with TLS
   * interception, the variables that point clients at the bundle trusting moat's CA
   * (GUEST_TRUST: where every kind of guest has it).
   */
  commandEnv(env: NodeJS.ProcessEnv): NodeJS.ProcessEnv {
    const b = GUEST_TRUST.bundle;
    const vars = this.options.tls ? { SSL_CERT_FILE: b, REQUESTS_CA_BUNDLE: b, CURL_CA_BUNDLE: b, NODE_EXTRA_CA_CERTS: GUEST_TRUST.caFile } : {};
    const out: NodeJS.ProcessEnv = { ...env, ...vars };
    for (const x of this.options.secrets) {
      for (const [k, v] of Object.entries(out)) if (v !== undefined && v.includes(x.value)) delete out[k];
      out[x.env] = x.placeholder;
    }
    return out;
  }

  /** A placeholder headed where it may not go (the request was already stopped): log, terminate. */
  private secretViolation(secret: string, destination: string, where: string, form: string): void {
    const action = this.options.onSecretViolation;
    const event: SecretViolationEvent = { secret, destination, where, form, action };
    if (action !== "block" && !this.auditLog) {
      // No audit file: the operator still learns of it (one line, never the value).
      process.stderr.write(`moat: secret ${secret}: its placeholder (${form}) in ${where} (${destination}) was blocked${action === "block-and-terminate" ? "; the sandbox is terminated" : ""}\n`);
    }
    this.emit<SecretViolationGatewayEvent>({ kind: "secret-violation", name: secret, destination, where, form, action, detail: `${form} placeholder in ${where} (${destination}); ${action}` });
    this.options.onSecretEvent?.(event);
    if (action === "block-and-terminate" && !this.terminatedBy) {
      this.terminatedBy = `secret ${secret}'s placeholder was sent to ${destination} (${where})`;
      this.guest.terminate(this.terminatedBy);
    }
  }

  /** An answer given on this thread (DNS over TCP, DoT): its pins to the engine and the TLS proxy's name table. */
  private applyPins(pins: DnsOutcome["pins"]): void {
    if (!pins.length) return;
    this.engine?.installPins(enginePins(pins));
    for (const p of pins) this.pinnedNames.add(p.ip, p.name, p.ttlSec * 1000);
  }

  /** DNS events (blocked names, rebinding rewrites, ...) go to the audit log. */
  private afterDns(out: DnsOutcome): void {
    if (out.event?.kind === "secret-violation") {
      return this.secretViolation(out.event.secret ?? "?", "DNS", `the query name ${out.event.name ?? ""}`, "raw");
    }
    if (!out.event) return;
    const { kind, name, detail } = out.event;
    this.emit<DnsEvent>({ kind: `dns-${kind}` as DnsEvent["kind"], ...(name !== undefined ? { name } : {}), ...(detail !== undefined ? { detail } : {}) });
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
   * `graceMs` (the whole wait is capped at EXIT_GRACE_TOTAL_FACTOR grace periods). Resolves with
   * the number of connections still open (they are cut, as resets, when the engine stops).
   */
  async drain(graceMs: number = this.options.exitGraceMs, abort?: AbortSignal): Promise<number> {
    const open = () => this.flowStats().tcp;
    if (!this.engine || graceMs <= 0 || open() === 0) return open();
    const progress = () => {
      const c = this.counters();
      return (c.TCP_BYTES_TO_HOST ?? 0) + (c.TCP_BYTES_TO_GUEST ?? 0) + (c.TCP_FLOWS_CLOSED ?? 0);
    };
    const start = Date.now();
    let last = progress();
    let lastMoved = start;
    while (open() > 0 && !abort?.aborted) {
      const t = Date.now();
      if (t - lastMoved >= graceMs || t - start >= graceMs * EXIT_GRACE_TOTAL_FACTOR) break;
      await new Promise((r) => setTimeout(r, 20));
      const p = progress();
      if (p !== last) { last = p; lastMoved = Date.now(); }
    }
    return open();
  }

  /**
   * Stop serving: the audit ring drained, the engine stopped (connections still open are cut as
   * resets), the DNS and TLS listeners closed, the audit log flushed. Idempotent; call drain()
   * first to give the guest's connections their grace.
   */
  stop(): Promise<void> {
    return (this.stopping ??= this.teardown());
  }

  private stopping: Promise<void> | undefined;

  private async teardown(): Promise<void> {
    if (this.engine) {
      this.drainAudit();
      this.checkLimits();
    }
    await this.engine?.stop();
    this.engine = undefined;
    this.stopSync();
    await this.dnsTcp?.close();
    await this.tlsProxy?.close();
  }

  /** @internal What can be undone at once (also from a process exit hook). */
  stopSync(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.limitTimer);
    if (this.created) this.emit<LifecycleEvent>({ kind: "sandbox-destroyed" });
    this.unwatchHost?.();
    this.auditLog?.close(); // pending summaries of repeated events are written now
  }
}

/** The names a Deny domain rule covers: DNS for them is answered as blocked (DESIGN §7). */
function denyNames(policy: NetworkPolicy): { domains: string[]; suffixes: string[] } {
  const domains: string[] = [];
  const suffixes: string[] = [];
  for (const r of policy.rules) {
    if (r.action !== "deny" || r.direction !== "outbound" || r.protocol !== undefined || r.ports !== undefined) continue;
    if (r.destination.kind === "domain") domains.push(r.destination.name);
    if (r.destination.kind === "domain-suffix") suffixes.push(r.destination.suffix);
  }
  return { domains, suffixes };
}
