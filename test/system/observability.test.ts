// observability.test.ts — one event type (gateway/events.ts) everywhere: the library's onEvent and
// on("event"), and the audit log's one JSON shape; Prometheus metrics (--metrics, metrics()) that
// promtool accepts and whose series move with what happened; --stats-interval's JSON lines.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, rmSync, writeFileSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { World, WORLD_IP4, HOSTS, TESTBED_JS, systemTestSkipReason, hasTool, sandboxReadableDir } from "../testbed/world.js";
import { makeCa, makeServerCert } from "../testbed/test-pki.js";

const skip = systemTestSkipReason() ?? (hasTool("curl", "--version") && hasTool("openssl", "version") && hasTool("socat", "-V") ? undefined : "curl, openssl or socat is not installed");
const promtool = hasTool("promtool", "--version") ? "promtool" : undefined;
let world: World;
let dir = "";

before(async () => {
  if (skip) return;
  process.env.API_KEY = "sk-obs-test-0123456789abcdef"; // the secret's value, in moat's environment
  dir = sandboxReadableDir("moat-obs-"); // the sandbox watches a file here (its /tmp is its own)
  makeCa(dir, "world-ca", "world test CA");
  makeServerCert(dir, "world-ca", ["DNS:allowed.test", "DNS:other.test", `IP:${WORLD_IP4}`]);
  world = World.create();
  world.startDnsServer();
  await world.startServer("tcp-echo", 7);
  await world.startProcess([process.execPath, `${TESTBED_JS}servers.js`, "https", "443", `${dir}/srv.pem`, `${dir}/srv.key`]);
});
after(() => {
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

type Ev = Record<string, unknown> & { v: number; time: string; sandbox: string; kind: string };

function envelopeOk(e: Ev, sandbox: string | RegExp): void {
  assert.equal(e.v, 1, JSON.stringify(e));
  assert.ok(!Number.isNaN(Date.parse(e.time)) && e.time.endsWith("Z"), JSON.stringify(e));
  if (typeof sandbox === "string") assert.equal(e.sandbox, sandbox);
  else assert.match(e.sandbox, sandbox);
  assert.equal(typeof e.kind, "string");
}

/** A metric's value from an exposition: `name{labels...}` with the given labels among them. */
function metric(text: string, name: string, labels: Record<string, string> = {}): number | undefined {
  for (const line of text.split("\n")) {
    if (!line.startsWith(name + "{") && !line.startsWith(name + " ")) continue;
    if (!Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) continue;
    return Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return undefined;
}

function promtoolCheck(text: string): { status: number | null; out: string } {
  const r = spawnSync(promtool!, ["check", "metrics"], { input: text, encoding: "utf8" });
  return { status: r.status, out: r.stdout + r.stderr };
}

test("the library's onEvent and on(\"event\") see every kind of event in one shape; metrics() reports the sandbox", { skip }, async () => {
  const r = await world.sandboxScript("events-lib.js", [WORLD_IP4, HOSTS.private, "7"], 90000);
  assert.equal(r.code, 0, r.stderr);
  const { option, listener, metrics } = JSON.parse(r.stdout) as { option: Ev[]; listener: Ev[]; metrics: string };
  const name = /^events-\d+$/;
  for (const e of [...option, ...listener]) envelopeOk(e, name);
  const kinds = option.map((e) => e.kind);
  assert.equal(kinds[0], "sandbox-created", JSON.stringify(kinds));
  assert.equal(kinds.at(-1), "sandbox-destroyed", JSON.stringify(kinds));
  const created = option[0]!;
  assert.match(String((created.guest as { ipv4: string }).ipv4), /^172\.30\.\d+\.\d+$/);
  const denied = option.find((e) => e.kind === "flow-denied");
  assert.ok(denied, JSON.stringify(kinds));
  assert.equal(denied.destination, HOSTS.private);
  assert.equal(denied.port, 80);
  assert.equal(denied.direction, "outbound");
  assert.equal(denied.rule, "default");
  assert.match(String(denied.source), /^172\.30\.\d+\.\d+:\d+$/);
  const limit = option.find((e) => e.kind === "limit-hit");
  assert.ok(limit, `a limit-hit event: ${JSON.stringify(kinds)}`);
  assert.equal(limit.limit, "max-connections");
  assert.ok(Number(limit.count) >= 1);
  const pub = option.find((e) => e.kind === "port-published");
  const unpub = option.find((e) => e.kind === "port-unpublished");
  assert.ok(pub && unpub, JSON.stringify(kinds));
  assert.equal(pub.guest, 8080);
  assert.ok(Number(pub.host) > 0);
  assert.equal(unpub.host, pub.host);
  // The listener subscribed after create: everything after that, the same objects.
  assert.deepEqual(listener, option.slice(1));
  // metrics(): the series moved with what happened.
  assert.ok((metric(metrics, "moat_policy_denials_total") ?? 0) >= 1, metrics);
  assert.ok((metric(metrics, "moat_drops_total", { reason: "flow_limit" }) ?? 0) >= 1, metrics);
  assert.ok((metric(metrics, "moat_flows_opened_total", { protocol: "tcp" }) ?? 0) >= 2, metrics);
  assert.match(metrics, /^moat_sandbox_up\{sandbox="events-\d+"\} 1$/m);
  if (promtool) {
    const c = promtoolCheck(metrics);
    assert.equal(c.status, 0, c.out);
  }
});

test("the audit log has one JSON shape, v 1, for denials, DNS blocks, TLS refusals, secret violations, ports and lifecycle", { skip }, async () => {
  const audit = `${dir}/audit.jsonl`;
  const script = [
    `socat -u /dev/null TCP:${HOSTS.private}:80,connect-timeout=1 2>/dev/null`,
    "dig +short +tries=1 +time=2 blocked.test >/dev/null",
    "curl -sS -o /dev/null https://allowed.test/hello 2>/dev/null",
    "dig +short +tries=1 +time=2 $API_KEY.other.test >/dev/null",
    "true",
  ].join("; ");
  const r = await world.moat(["run", "--name", "audit-shape", "--dns-nameserver", WORLD_IP4, "--dns-block", "blocked.test", "--tls-intercept",
    "--secret", "API_KEY@allowed.test", "--secret-violation", "block-and-log", "-p", "0:80", "--audit-log", audit, "--", "sh", "-c", script],
  60000).then((x) => x);
  assert.equal(r.code, 0, r.stderr);
  const events = readFileSync(audit, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Ev);
  for (const e of events) envelopeOk(e, "audit-shape");
  assert.deepEqual(events.slice(0, 2).map((e) => e.kind), ["sandbox-created", "port-published"], "created first, then its ports");
  const kinds = new Set(events.map((e) => e.kind));
  for (const k of ["sandbox-created", "port-published", "flow-denied", "dns-blocked", "tls-upstream-failed", "secret-violation", "sandbox-destroyed"]) {
    assert.ok(kinds.has(k), `${k} in ${JSON.stringify(events)}`);
  }
  const secret = events.find((e) => e.kind === "secret-violation")!;
  assert.equal(secret.name, "API_KEY");
  assert.equal(secret.action, "block-and-log");
  assert.match(String(secret.where), /query name/);
  const tls = events.find((e) => e.kind === "tls-upstream-failed")!;
  assert.equal(tls.name, "allowed.test");
  assert.equal(tls.destination, `${WORLD_IP4}:443`);
});

test("--metrics serves an exposition promtool accepts during traffic; a denial, a DNS block, a TLS refusal and a secret violation each move their series; --stats-interval prints JSON lines", { skip }, async () => {
  const go = `${dir}/may-exit`;
  rmSync(go, { force: true });
  const script = [
    `socat -u /dev/null TCP:${HOSTS.private}:80,connect-timeout=1 2>/dev/null`,
    "dig +short +tries=1 +time=2 blocked.test >/dev/null",
    "dig +short +tries=1 +time=2 allowed.test >/dev/null",
    'curl -sS -o /dev/null -H "Authorization: Bearer $API_KEY" https://allowed.test/hello',
    `printf 'GET / HTTP/1.0\\r\\n\\r\\n' | socat -t2 - TCP:${WORLD_IP4}:443 >/dev/null 2>&1`, // not TLS: a refusal
    "dig +short +tries=1 +time=2 $API_KEY.other.test >/dev/null",
    `echo hello | socat - TCP:${WORLD_IP4}:7 >/dev/null`,
    "echo traffic-done", // (the sandbox cannot write the host's files: it says so on stdout)
    // Traffic goes on while the test scrapes: a stream to the echo server until told to stop.
    `(while [ ! -e ${go} ]; do head -c 65536 /dev/zero; sleep 0.05; done) | socat - TCP:${WORLD_IP4}:7 >/dev/null`,
  ].join("; ");
  const child = world.spawnMoat(["run", "--name", "metrics-test", "--metrics", "127.0.0.1:0", "--stats-interval", "1", "--dns-nameserver", WORLD_IP4,
    "--dns-block", "blocked.test", "--tls-upstream-ca", `${dir}/world-ca.pem`, "--secret", "API_KEY@allowed.test", "--", "sh", "-c", script]);
  let stderr = "";
  let stdout = "";
  child.stderr!.on("data", (d) => (stderr += d));
  child.stdout!.on("data", (d) => (stdout += d));
  const ready = () => stdout.includes("traffic-done");
  const exited = new Promise<number | null>((r) => child.once("exit", (c) => r(c)));
  try {
    for (let i = 0; i < 300 && !ready(); i++) await new Promise((r) => setTimeout(r, 100));
    assert.ok(ready(), `the traffic did not finish:\n${stderr}`);
    const port = /metrics on http:\/\/127\.0\.0\.1:(\d+)\/metrics/.exec(stderr)?.[1];
    assert.ok(port, stderr);
    await new Promise((r) => setTimeout(r, 1500)); // the stream is flowing; a --stats-interval line is due
    const scrape = spawnSync("ip", ["netns", "exec", world.host, "curl", "-sS", "-D", `${dir}/headers`, `http://127.0.0.1:${port}/metrics`], { encoding: "utf8" });
    assert.equal(scrape.status, 0, scrape.stderr);
    const text = scrape.stdout;
    assert.match(readFileSync(`${dir}/headers`, "utf8"), /content-type: text\/plain; version=0\.0\.4/i);
    const sb = { sandbox: "metrics-test" };
    assert.ok((metric(text, "moat_policy_denials_total", sb) ?? 0) >= 1, "a denial");
    assert.ok((metric(text, "moat_dns_blocked_total", sb) ?? 0) >= 1, "a DNS block");
    assert.ok((metric(text, "moat_tls_refusals_total", { ...sb, reason: "bad_hello" }) ?? 0) >= 1, "a TLS refusal");
    assert.ok((metric(text, "moat_tls_handshakes_total", { ...sb, outcome: "intercepted" }) ?? 0) >= 1, "an interception");
    assert.ok((metric(text, "moat_secret_violations_total", { ...sb, action: "block" }) ?? 0) >= 1, "a secret violation");
    assert.ok((metric(text, "moat_dns_queries_total", { ...sb, transport: "udp" }) ?? 0) >= 3);
    assert.ok((metric(text, "moat_dns_query_duration_seconds_count", sb) ?? 0) >= 3);
    assert.ok((metric(text, "moat_tcp_payload_bytes_total", { ...sb, direction: "egress" }) ?? 0) > 65536, "bytes each way");
    assert.equal(metric(text, "moat_flows_open", { ...sb, protocol: "tcp" }), 1, "the stream's flow is open");
    assert.ok((metric(text, "moat_tls_leaves_minted_total", sb) ?? 0) >= 1);
    assert.equal(metric(text, "moat_secret_substituted_connections_total", sb), 1, "a substitution");
    // Every series is the sandbox's, but the process's own: its main thread's event-loop delay.
    for (const line of text.split("\n").filter((l) => l && !l.startsWith("#") && !l.startsWith("moat_main_event_loop_delay_"))) assert.match(line, /\{sandbox="metrics-test"[,}]/, line);
    for (const q of ["p50", "p99", "max"]) assert.match(text, new RegExp(`^moat_main_event_loop_delay_${q}_seconds \\d`, "m"));
    if (promtool) {
      const c = promtoolCheck(text);
      assert.equal(c.status, 0, c.out);
    }
    const other = spawnSync("ip", ["netns", "exec", world.host, "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", `http://127.0.0.1:${port}/`], { encoding: "utf8" });
    assert.equal(other.stdout, "404");
    writeFileSync(go, "");
    assert.equal(await exited, 0, stderr);
    const stats = stderr.split("\n").filter((l) => l.startsWith("{")).map((l) => JSON.parse(l) as Ev & { counters: Record<string, number>; dns: { blocked: number } });
    assert.ok(stats.length >= 2, stderr);
    for (const s of stats) {
      envelopeOk(s, "metrics-test");
      assert.equal(s.kind, "stats");
    }
    assert.ok(stats.at(-1)!.counters.TCP_BYTES_TO_HOST! > 65536);
    assert.ok(stats.at(-1)!.dns.blocked >= 1);
  } finally {
    writeFileSync(go, "");
    child.kill("SIGKILL");
  }
});

test("--metrics refuses a bad address before anything starts", { skip }, async () => {
  const r = await world.moat(["run", "--metrics", "localhost:99999", "--", "true"]);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /--metrics "localhost:99999" is not \[ADDR:\]PORT/);
  assert.match(r.stderr, /hint:/);
});
