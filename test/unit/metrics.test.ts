// metrics.test.ts — gateway/metrics.ts: the exposition of several sandboxes (each family once,
// its series together, labels escaped) as promtool reads it, and --metrics's address parsing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { renderMetrics, parseListenAddress, type GatewaySample } from "../../orchestrator/src/gateway/metrics.js";
import { DnsStats } from "../../orchestrator/src/dns/dns-stats.js";
import { ConfigError } from "../../orchestrator/src/errors.js";
import { hasTool } from "../testbed/world.js";

function sample(sandbox: string, over: Partial<GatewaySample> = {}): GatewaySample {
  const dns = new DnsStats();
  dns.record("udp", 0.0004, { answer: null, pins: [] });
  dns.record("udp", 0.02, { answer: null, pins: [], event: { kind: "blocked", name: "x.test" } });
  dns.record("tcp", 7, { answer: null, pins: [], event: { kind: "upstream-failed" } });
  return {
    sandbox,
    counters: { RX_FRAMES: 10, TX_BYTES: 1500, DROP_POLICY: 2, DROP_RUNT: 1, TCP_FLOWS_OPENED: 3 },
    flows: { flows: 2, udp: 1, tcp: 1 },
    dns: dns.snapshot(),
    tls: { denyPages: 0, intercepted: 1, bypassed: 0, dot: 0, badHello: 0, sniDenied: 1, upstreamFailed: 0, httpRefused: 0, scrubbed: 0, substituted: 1, leavesMinted: 1 },
    events: { "flow-denied": 2, "secret-violation:block": 1 },
    ...over,
  };
}

test("several sandboxes: every family has one HELP and one TYPE and its series together", () => {
  const text = renderMetrics([sample("a"), sample("b")]);
  const types = text.split("\n").filter((l) => l.startsWith("# TYPE "));
  assert.equal(new Set(types).size, types.length, "a TYPE line per family, once");
  // The series of a family come right after its TYPE line, for both sandboxes.
  const lines = text.split("\n");
  const at = lines.indexOf("# TYPE moat_policy_denials_total counter");
  assert.deepEqual(lines.slice(at + 1, at + 3), ['moat_policy_denials_total{sandbox="a"} 2', 'moat_policy_denials_total{sandbox="b"} 2']);
  assert.match(text, /^moat_drops_total\{sandbox="a",reason="runt"\} 1$/m);
  assert.match(text, /^moat_engine_tcp_flows_opened_total\{sandbox="b"\} 3$/m);
  assert.match(text, /^moat_secret_violations_total\{sandbox="a",action="block"\} 1$/m);
  assert.match(text, /^moat_dns_blocked_total\{sandbox="a"\} 1$/m);
  assert.match(text, /^moat_dns_upstream_failures_total\{sandbox="a"\} 1$/m);
  // The histogram: cumulative buckets, +Inf = count.
  assert.match(text, /^moat_dns_query_duration_seconds_bucket\{sandbox="a",le="0.0005"\} 1$/m);
  assert.match(text, /^moat_dns_query_duration_seconds_bucket\{sandbox="a",le="0.025"\} 2$/m);
  assert.match(text, /^moat_dns_query_duration_seconds_bucket\{sandbox="a",le="5"\} 2$/m);
  assert.match(text, /^moat_dns_query_duration_seconds_bucket\{sandbox="a",le="10"\} 3$/m);
  assert.match(text, /^moat_dns_query_duration_seconds_bucket\{sandbox="a",le="\+Inf"\} 3$/m);
  assert.match(text, /^moat_dns_query_duration_seconds_count\{sandbox="a"\} 3$/m);
});

test("rate limits: the limits in force as gauges (only those set), what they dropped and held back as counters", () => {
  const text = renderMetrics([
    sample("a", { limits: { egress: { bitsPerSecond: 50e6, burstBytes: 625000 }, ingress: null, connRate: { perSecond: 20, burst: 2 }, dnsRate: null }, counters: { DROP_RATE_CONN: 3, RATE_EGRESS_PACED: 7, DNS_RATE_REFUSED: 4 } }),
    sample("b"),
  ]);
  assert.match(text, /^moat_rate_limit_bytes_per_second\{sandbox="a",direction="egress"\} 6250000$/m);
  assert.doesNotMatch(text, /moat_rate_limit_bytes_per_second\{sandbox="a",direction="ingress"\}/, "no limit, no gauge");
  assert.match(text, /^moat_rate_limit_connections_per_second\{sandbox="a"\} 20$/m);
  assert.doesNotMatch(text, /moat_rate_limit_dns_queries_per_second/);
  assert.match(text, /^moat_rate_limit_drops_total\{sandbox="a",limit="conn"\} 3$/m);
  assert.match(text, /^moat_rate_limit_drops_total\{sandbox="a",limit="dns"\} 4$/m);
  assert.match(text, /^moat_rate_limit_delays_total\{sandbox="a",limit="egress"\} 7$/m);
  assert.match(text, /^moat_rate_limit_drops_total\{sandbox="b",limit="egress"\} 0$/m, "every sandbox has the counters");
});

test("label values are escaped: a name cannot break out of its label", () => {
  const text = renderMetrics([sample('evil"} 1\nmoat_fake{x="\\')]);
  assert.ok(!/^moat_fake/m.test(text), "no injected series");
  assert.match(text, /^moat_sandbox_up\{sandbox="evil\\"\} 1\\nmoat_fake\{x=\\"\\\\"\} 1$/m);
});

test("promtool accepts the exposition", { skip: hasTool("promtool", "--version") ? undefined : "promtool is not installed (Debian package prometheus)" }, () => {
  const limits = { egress: { bitsPerSecond: 1e7, burstBytes: 262144 }, ingress: { bitsPerSecond: 2e7, burstBytes: 262144 }, connRate: { perSecond: 20, burst: 2 }, dnsRate: { perSecond: 5, burst: 5 } };
  const r = spawnSync("promtool", ["check", "metrics"], { input: renderMetrics([sample("a", { limits }), sample('we"ird\\name')]), encoding: "utf8" });
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test("the main thread's event-loop delay since the last scrape: a 100 ms block shows in p99 and max, and is gone from the next", async () => {
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
  const gauge = (text: string, name: string) => Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1]);
  renderMetrics([]); // watching from here on
  await sleep(100);
  // Idle, the delay is what is late, not the sampling period (10 ms).
  const idle = renderMetrics([]);
  assert.ok(gauge(idle, "moat_main_event_loop_delay_p50_seconds") < 0.005, idle);
  await sleep(40);
  const until = performance.now() + 100;
  while (performance.now() < until) { /* the main thread held */ }
  await sleep(40);
  const blocked = renderMetrics([]);
  assert.ok(gauge(blocked, "moat_main_event_loop_delay_max_seconds") >= 0.08, blocked);
  assert.ok(gauge(blocked, "moat_main_event_loop_delay_p99_seconds") >= 0.08, blocked);
  await sleep(60);
  const calm = renderMetrics([]); // (the block would read >= 0.09: a busy machine's hiccup does not)
  assert.ok(gauge(calm, "moat_main_event_loop_delay_max_seconds") < 0.07, calm);
});

test("--metrics takes [ADDR:]PORT and refuses anything else with a hint", () => {
  assert.deepEqual(parseListenAddress("9464", "--metrics"), { host: "127.0.0.1", port: 9464 });
  assert.deepEqual(parseListenAddress("0.0.0.0:0", "--metrics"), { host: "0.0.0.0", port: 0 });
  assert.deepEqual(parseListenAddress("[::1]:9464", "--metrics"), { host: "::1", port: 9464 });
  for (const bad of ["", "x", "70000", "1.2.3:80", "[::1]", "::1:80", "host.example:80", "80 ", "-1"]) {
    assert.throws(() => parseListenAddress(bad, "--metrics"), (e: unknown) => e instanceof ConfigError && /is not \[ADDR:\]PORT/.test(e.message) && !!e.hint, bad);
  }
});
