// metrics.ts — gateways' counters in the Prometheus text exposition format (version 0.0.4), and
// the HTTP listener that serves them (`--metrics [ADDR:]PORT`, the control socket's /metrics).
//
// Every series has a `sandbox` label but the process's own (moat_main_event_loop_delay_*: the
// main thread, which all sandboxes share). Families follow Prometheus' conventions: counters end in
// _total, units are base units in the name (_bytes, _seconds), each family has one HELP and one
// TYPE line and all its series together (several sandboxes' series are grouped per family).
// Every engine counter is exported (engine-wasm/assembly/counters.ts): DROP_* as
// moat_drops_total{reason}, the others as moat_engine_<name>_total; the families above them are
// the ones an operator looks at first (flows, bytes, packets, DNS, TLS, secrets, policy).
//
// Cost: a scrape reads the counters straight from each engine's shared memory and asks each
// engine worker once for its DNS statistics; nothing is counted on the packet path for it.
import { createServer, type Server } from "node:http";
import { monitorEventLoopDelay, type IntervalHistogram } from "node:perf_hooks";
import { isIP } from "node:net";
import { ConfigError, MoatError } from "../errors.js";
import { DNS_LATENCY_BUCKETS, type DnsStatsSnapshot } from "../dns/dns-stats.js";
import type { EngineCounters } from "../engine/engine-config.js";
import type { TlsProxyStats } from "../tls/proxy.js";
import type { ValidLimits } from "./limits.js";

/** What one gateway reports when scraped (Gateway.sample()). */
export interface GatewaySample {
  sandbox: string;
  counters: EngineCounters;
  flows: { flows: number; udp: number; tcp: number };
  dns: DnsStatsSnapshot;
  tls: TlsProxyStats & { leavesMinted: number };
  /** Events emitted, by kind (secret violations as "secret-violation:<action>"). */
  events: Record<string, number>;
  /** The rate limits in force (gateway/limits.ts); absent: none. */
  limits?: ValidLimits;
}

export const CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8";

type Labels = Record<string, string>;
interface Family { help: string; type: "counter" | "gauge" | "histogram"; lines: string[] }

function escapeLabel(v: string): string {
  return v.replace(/\\/g, "\\\\").replace(/"/g, "\\\"").replace(/\n/g, "\\n");
}

function labelText(l: Labels): string {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${escapeLabel(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
}

function num(v: number): string {
  return Number.isFinite(v) ? String(v) : v > 0 ? "+Inf" : v < 0 ? "-Inf" : "NaN";
}

/** Families in the order first added; each family's series from every sandbox together. */
class Exposition {
  private readonly families = new Map<string, Family>();

  private family(name: string, type: Family["type"], help: string): Family {
    let f = this.families.get(name);
    if (!f) this.families.set(name, (f = { help, type, lines: [] }));
    return f;
  }

  add(name: string, type: "counter" | "gauge", help: string, labels: Labels, value: number): void {
    this.family(name, type, help).lines.push(`${name}${labelText(labels)} ${num(value)}`);
  }

  histogram(name: string, help: string, labels: Labels, bounds: readonly number[], buckets: number[], sum: number, count: number): void {
    const f = this.family(name, "histogram", help);
    let cumulative = 0;
    bounds.forEach((le, i) => {
      cumulative += buckets[i] ?? 0;
      f.lines.push(`${name}_bucket${labelText({ ...labels, le: String(le) })} ${cumulative}`);
    });
    f.lines.push(`${name}_bucket${labelText({ ...labels, le: "+Inf" })} ${count}`);
    f.lines.push(`${name}_sum${labelText(labels)} ${num(sum)}`);
    f.lines.push(`${name}_count${labelText(labels)} ${count}`);
  }

  text(): string {
    let out = "";
    for (const [name, f] of this.families) {
      out += `# HELP ${name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n# TYPE ${name} ${f.type}\n${f.lines.join("\n")}\n`;
    }
    return out;
  }
}

// The main thread's event-loop delay (what every sandbox's control, DNS over TCP and events wait
// on), sampled every 10 ms from the first scrape or metrics listener on, reset at each scrape.
let loopDelay: IntervalHistogram | undefined;
const LOOP_RESOLUTION_MS = 10;

function watchLoopDelay(): IntervalHistogram {
  if (!loopDelay) {
    loopDelay = monitorEventLoopDelay({ resolution: LOOP_RESOLUTION_MS });
    loopDelay.enable();
  }
  return loopDelay;
}

/** The exposition of `samples` (one per sandbox), and this process's own series. */
export function renderMetrics(samples: GatewaySample[]): string {
  const x = new Exposition();
  const h = watchLoopDelay();
  if (h.count > 0) {
    const help = (q: string) => `The main thread's event-loop delay since the last scrape: ${q} (sampled every 10 ms)`;
    // The histogram holds the time between its timer's runs: the delay is what exceeds the period.
    const late = (ns: number) => Math.max(0, ns - LOOP_RESOLUTION_MS * 1e6) / 1e9;
    x.add("moat_main_event_loop_delay_p50_seconds", "gauge", help("the median"), {}, late(h.percentile(50)));
    x.add("moat_main_event_loop_delay_p99_seconds", "gauge", help("the 99th percentile"), {}, late(h.percentile(99)));
    x.add("moat_main_event_loop_delay_max_seconds", "gauge", help("the longest"), {}, late(h.max));
    h.reset();
  }
  for (const s of samples) {
    const sb = { sandbox: s.sandbox };
    const c = (name: string) => s.counters[name] ?? 0;
    x.add("moat_sandbox_up", "gauge", "1 for every sandbox this moat serves", sb, 1);
    // Flows.
    x.add("moat_flows_open", "gauge", "Flows open now, by protocol", { ...sb, protocol: "tcp" }, s.flows.tcp);
    x.add("moat_flows_open", "gauge", "Flows open now, by protocol", { ...sb, protocol: "udp" }, s.flows.udp);
    x.add("moat_flows_opened_total", "counter", "Flows opened, by protocol (TCP: guest SYNs dialled; UDP: flows created; ICMP: echo requests forwarded)", { ...sb, protocol: "tcp" }, c("TCP_FLOWS_OPENED"));
    x.add("moat_flows_opened_total", "counter", "Flows opened, by protocol (TCP: guest SYNs dialled; UDP: flows created; ICMP: echo requests forwarded)", { ...sb, protocol: "udp" }, c("UDP_FLOWS_OPENED"));
    x.add("moat_flows_opened_total", "counter", "Flows opened, by protocol (TCP: guest SYNs dialled; UDP: flows created; ICMP: echo requests forwarded)", { ...sb, protocol: "icmp" }, c("ICMP_ECHO_FORWARDED"));
    // Bytes and packets each way, on the guest's link and per protocol.
    x.add("moat_link_frames_total", "counter", "Ethernet frames on the guest's link: rx from the guest, tx to it", { ...sb, direction: "rx" }, c("RX_FRAMES"));
    x.add("moat_link_frames_total", "counter", "Ethernet frames on the guest's link: rx from the guest, tx to it", { ...sb, direction: "tx" }, c("TX_FRAMES"));
    x.add("moat_link_bytes_total", "counter", "Bytes of Ethernet frames on the guest's link: rx from the guest, tx to it", { ...sb, direction: "rx" }, c("RX_BYTES"));
    x.add("moat_link_bytes_total", "counter", "Bytes of Ethernet frames on the guest's link: rx from the guest, tx to it", { ...sb, direction: "tx" }, c("TX_BYTES"));
    x.add("moat_tcp_payload_bytes_total", "counter", "TCP payload bytes carried: egress from the guest to hosts, ingress from hosts to the guest", { ...sb, direction: "egress" }, c("TCP_BYTES_TO_HOST"));
    x.add("moat_tcp_payload_bytes_total", "counter", "TCP payload bytes carried: egress from the guest to hosts, ingress from hosts to the guest", { ...sb, direction: "ingress" }, c("TCP_BYTES_TO_GUEST"));
    x.add("moat_udp_datagrams_total", "counter", "UDP datagrams carried: egress from the guest to hosts, ingress from hosts to the guest", { ...sb, direction: "egress" }, c("UDP_TO_HOST"));
    x.add("moat_udp_datagrams_total", "counter", "UDP datagrams carried: egress from the guest to hosts, ingress from hosts to the guest", { ...sb, direction: "ingress" }, c("UDP_FROM_HOST"));
    // Policy.
    x.add("moat_policy_denials_total", "counter", "New flows (or datagrams) the policy denied", sb, c("DROP_POLICY"));
    x.add("moat_policy_allowed_total", "counter", "New flows the policy let through", sb, c("FLOWS_ALLOWED"));
    // Every drop, by reason (each dropped frame is counted under exactly one).
    for (const [name, v] of Object.entries(s.counters)) {
      if (name.startsWith("DROP_")) x.add("moat_drops_total", "counter", "Frames dropped, by reason (engine-wasm/assembly/counters.ts DROP_*)", { ...sb, reason: name.slice(5).toLowerCase() }, v);
    }
    // DNS.
    const d = s.dns;
    x.add("moat_dns_queries_total", "counter", "Guest DNS queries answered by the interceptor, by transport", { ...sb, transport: "udp" }, d.queries.udp);
    x.add("moat_dns_queries_total", "counter", "Guest DNS queries answered by the interceptor, by transport", { ...sb, transport: "tcp" }, d.queries.tcp);
    x.add("moat_dns_blocked_total", "counter", "DNS queries answered locally as blocked (block lists, deny domain rules)", sb, d.blocked);
    x.add("moat_dns_rebinding_rewritten_total", "counter", "DNS answers rewritten to REFUSED by rebinding protection", sb, d.rebinding);
    x.add("moat_dns_upstream_failures_total", "counter", "DNS queries no upstream answered", sb, d.upstreamFailures);
    x.histogram("moat_dns_query_duration_seconds", "Time from a guest's DNS query to its answer", sb, DNS_LATENCY_BUCKETS, d.latencyBuckets, d.latencySum, d.latencyCount);
    // TLS.
    const t = s.tls;
    const hs = "TLS connections handled by the proxy, by outcome (intercepted: terminated and re-originated; bypassed: spliced; dot: DNS over TLS)";
    x.add("moat_tls_handshakes_total", "counter", hs, { ...sb, outcome: "intercepted" }, t.intercepted);
    x.add("moat_tls_handshakes_total", "counter", hs, { ...sb, outcome: "bypassed" }, t.bypassed);
    x.add("moat_tls_handshakes_total", "counter", hs, { ...sb, outcome: "dot" }, t.dot);
    x.add("moat_tls_leaves_minted_total", "counter", "Leaf certificates minted by the sandbox's CA (the process's ephemeral CA is shared by its sandboxes)", sb, t.leavesMinted);
    const rf = "TLS connections and HTTP requests over them the proxy refused, by reason";
    x.add("moat_tls_refusals_total", "counter", rf, { ...sb, reason: "sni_denied" }, t.sniDenied);
    x.add("moat_tls_refusals_total", "counter", rf, { ...sb, reason: "upstream_failed" }, t.upstreamFailed);
    x.add("moat_tls_refusals_total", "counter", rf, { ...sb, reason: "bad_hello" }, t.badHello);
    x.add("moat_tls_refusals_total", "counter", rf, { ...sb, reason: "http_refused" }, t.httpRefused);
    x.add("moat_tls_deny_pages_total", "counter", "403 pages served for denied connections (--deny-response http)", sb, t.denyPages);
    // Secrets.
    for (const action of ["block", "block-and-log", "block-and-terminate"]) {
      x.add("moat_secret_violations_total", "counter", "Secret placeholders stopped on their way to a destination not allowed for them, by action", { ...sb, action: action.replace(/-/g, "_") }, s.events[`secret-violation:${action}`] ?? 0);
    }
    x.add("moat_secret_substituted_connections_total", "counter", "Intercepted connections on which a secret's value was put into a request (counted when they close)", sb, t.substituted);
    // Rate limits (--limit-*): those in force, and what they dropped or held back.
    const lim = s.limits;
    for (const d of ["egress", "ingress"] as const) {
      const v = lim?.[d];
      if (v) x.add("moat_rate_limit_bytes_per_second", "gauge", "Bandwidth limit in force (--limit-egress, --limit-ingress), payload bytes per second, by direction", { ...sb, direction: d }, v.bitsPerSecond / 8);
    }
    if (lim?.connRate) x.add("moat_rate_limit_connections_per_second", "gauge", "Limit in force on new connections the guest opens (--limit-conn-rate)", sb, lim.connRate.perSecond);
    if (lim?.dnsRate) x.add("moat_rate_limit_dns_queries_per_second", "gauge", "Limit in force on the guest's DNS queries (--limit-dns-rate)", sb, lim.dnsRate.perSecond);
    const dropped = "Traffic a rate limit dropped or refused, by limit: egress and ingress UDP/ICMP datagrams; conn new flows (UDP/ICMP dropped, TCP reset once the held-SYN queue is full); dns queries answered REFUSED";
    for (const [limit, counter] of [["egress", "DROP_RATE_EGRESS"], ["ingress", "DROP_RATE_INGRESS"], ["conn", "DROP_RATE_CONN"], ["dns", "DNS_RATE_REFUSED"]] as const) {
      x.add("moat_rate_limit_drops_total", "counter", dropped, { ...sb, limit }, c(counter));
    }
    const delayed = "Times a rate limit held traffic back rather than drop it, by limit: egress and ingress a TCP flow's window or reads paced; conn a TCP connection's SYN held until the rate allowed it";
    for (const [limit, counter] of [["egress", "RATE_EGRESS_PACED"], ["ingress", "RATE_INGRESS_PACED"], ["conn", "RATE_CONN_DELAYED"]] as const) {
      x.add("moat_rate_limit_delays_total", "counter", delayed, { ...sb, limit }, c(counter));
    }
    // Events, by kind (what the audit log and the event stream carried).
    for (const [kind, n] of Object.entries(s.events)) {
      if (!kind.startsWith("secret-violation:")) x.add("moat_events_total", "counter", "Gateway events emitted, by kind (gateway/events.ts)", { ...sb, kind: kind.replace(/-/g, "_") }, n);
    }
    // Every other engine counter, as it is named in the engine.
    for (const [name, v] of Object.entries(s.counters)) {
      if (name.startsWith("DROP_")) continue;
      const m = `moat_engine_${name.toLowerCase()}_total`;
      x.add(m, "counter", `Engine counter ${name} (engine-wasm/assembly/counters.ts)`, sb, v);
    }
  }
  return x.text();
}

/** Parse `[ADDR:]PORT` (ADDR an IPv4 address or [IPv6]; default 127.0.0.1). */
export function parseListenAddress(text: string, flag: string): { host: string; port: number } {
  const m = /^(?:(\[[0-9a-fA-F:.]+\]|[0-9.]+|localhost):)?(\d{1,5})$/.exec(text);
  const host = m?.[1] ? m[1].replace(/^\[|\]$/g, "") : "127.0.0.1";
  const port = Number(m?.[2]);
  if (!m || port > 65535 || (host !== "localhost" && !isIP(host))) {
    throw new ConfigError(`${flag} "${text}" is not [ADDR:]PORT`, `e.g. ${flag} 9464, ${flag} 127.0.0.1:9464 or ${flag} [::1]:9464 (PORT 0: any free port)`);
  }
  return { host, port };
}

/** Serve GET /metrics (the exposition of `render()`) on host:port; resolves once listening. */
export async function serveMetrics(host: string, port: number, render: () => Promise<string>): Promise<{ server: Server; port: number; close(): Promise<void> }> {
  watchLoopDelay(); // the first scrape then covers the time since moat began serving
  const server = createServer((req, res) => {
    if (req.method !== "GET" || (req.url !== "/metrics" && !req.url?.startsWith("/metrics?"))) {
      res.writeHead(404, { "content-type": "text/plain" }).end("moat serves /metrics only\n");
      return;
    }
    render().then((body) => {
      res.writeHead(200, { "content-type": CONTENT_TYPE }).end(body);
    }, (e: unknown) => {
      res.writeHead(500, { "content-type": "text/plain" }).end(`moat: metrics failed: ${(e as Error)?.message ?? String(e)}\n`);
    });
  });
  server.keepAliveTimeout = 65000;
  await new Promise<void>((resolve, reject) => {
    server.once("error", (e: NodeJS.ErrnoException) => reject(new MoatError("ERR_PORT", `cannot serve metrics on ${host}:${port}: ${e.code === "EADDRINUSE" ? "the port is already in use" : e.message}`, "choose another --metrics port")));
    server.listen(port, host, () => resolve());
  });
  server.unref();
  const a = server.address();
  return { server, port: typeof a === "object" && a ? a.port : port, close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }) };
}
