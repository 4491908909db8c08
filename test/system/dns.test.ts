// dns.test.ts — DNS interception on a real guest with a real resolver (dnsmasq) and real stubs
// (dig, the C library through getent and curl): block lists, rebinding protection, upstream
// failover and timeouts, direct queries to other resolvers, TCP, truncation, other transports,
// and domain rules made real by the pin set.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, mkdtempSync, existsSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { World, WORLD_IP4, HOSTS, TESTBED_JS, systemTestSkipReason } from "../testbed/world.js";

const have = (tool: string) => { try { execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" }); return true; } catch { return false; } };
const skip = systemTestSkipReason() ?? (have("dnsmasq") && have("dig") ? undefined : "dnsmasq and dig (dnsutils) are needed");
let world: World;
let dnsLog: string;
const NS = ["--dns-nameserver", WORLD_IP4];
const tcp = (...args: string[]) => [process.execPath, `${TESTBED_JS}tcp-clients.js`, ...args].join(" ");

before(async () => {
  if (skip) return;
  world = World.create();
  dnsLog = world.startDnsServer();
  await world.startServer("tcp-echo", 7);
});
after(() => world?.teardown());

async function inSandbox(flags: string[], script: string) {
  const r = await world.moat(["run", ...flags, "--", "sh", "-c", script]);
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  return r;
}
const dig = (args: string) => `dig +time=2 +tries=1 ${args}`;

test("the guest resolves through the gateway with dig and with the C library (getent)", { skip }, async () => {
  const r = await inSandbox(NS, `${dig("+short allowed.test")}; getent hosts allowed.test`);
  assert.match(r.stdout, new RegExp(`^${WORLD_IP4.replaceAll(".", "\\.")}$`, "m"));
  assert.match(r.stdout, new RegExp(`^${WORLD_IP4.replaceAll(".", "\\.")}\\s+allowed\\.test`, "m"));
});

test("blocked names (exact and suffix) are answered REFUSED and never reach the upstream", { skip }, async () => {
  const before = readFileSync(dnsLog, "utf8");
  const r = await inSandbox([...NS, "--dns-block", "blocked.test", "--dns-block-suffix", "ads.example"],
    `${dig("blocked.test")} | grep status; ${dig("x.y.ads.example")} | grep status; ${dig("ads.example")} | grep status`);
  assert.equal(r.stdout.match(/status: REFUSED/g)?.length, 3, r.stdout);
  const seen = readFileSync(dnsLog, "utf8").slice(before.length);
  assert.doesNotMatch(seen, /blocked\.test|ads\.example/);
});

test("--dns-blocked-response nxdomain answers NXDOMAIN instead", { skip }, async () => {
  const r = await inSandbox([...NS, "--dns-block", "blocked.test", "--dns-blocked-response", "nxdomain"], `${dig("blocked.test")} | grep status`);
  assert.match(r.stdout, /status: NXDOMAIN/);
});

test("an answer carrying a private address is rewritten to REFUSED, unless rebinding protection is off", { skip }, async () => {
  const on = await inSandbox(NS, `${dig("evil.test")} | grep status`);
  assert.match(on.stdout, /status: REFUSED/);
  const off = await inSandbox([...NS, "--no-dns-rebind-protection"], dig("+short evil.test"));
  assert.equal(off.stdout.trim(), HOSTS.private);
});

test("a dead first nameserver fails over to the next", { skip }, async () => {
  const r = await inSandbox(["--dns-nameserver", `${WORLD_IP4}:5300`, ...NS], dig("+short allowed.test"));
  assert.equal(r.stdout.trim(), WORLD_IP4);
});

test("an upstream that never answers gives SERVFAIL after the query timeout", { skip }, async () => {
  const t0 = Date.now();
  const r = await inSandbox(["--dns-nameserver", "198.51.100.99", "--dns-query-timeout-ms", "300"], `${dig("allowed.test")} | grep status`);
  assert.match(r.stdout, /status: SERVFAIL/);
  assert.ok(Date.now() - t0 < 8000);
});

test("a direct query to an allowed resolver is answered by it; to a denied one it gets nothing", { skip }, async () => {
  const r = await inSandbox([], `${dig(`+short @${WORLD_IP4} allowed.test`)}; ${dig(`@${HOSTS.private} allowed.test`)} | grep -c "timed out" || true`);
  const [answer, timedOut] = r.stdout.trim().split("\n");
  assert.equal(answer, WORLD_IP4);
  assert.equal(timedOut, "1");
});

test("a blocked name stays blocked when the guest asks another resolver directly", { skip }, async () => {
  const r = await inSandbox(["--dns-block", "blocked.test"], `${dig(`@${WORLD_IP4} blocked.test`)} | grep status`);
  assert.match(r.stdout, /status: REFUSED/);
});

test("DNS over TCP is answered", { skip }, async () => {
  const r = await inSandbox(NS, dig("+tcp +short allowed.test"));
  assert.equal(r.stdout.trim(), WORLD_IP4);
});

test("a UDP answer larger than the guest's buffer is truncated with TC set", { skip }, async () => {
  const r = await inSandbox(NS, dig("+ignore +noedns big.test TXT"));
  assert.match(r.stdout, /flags:[^;]*\btc\b/);
  const full = await inSandbox(NS, dig("+short big.test TXT") + " | wc -l"); // dig retries over TCP
  assert.equal(full.stdout.trim(), "12");
});

test("DoT, DoQ, mDNS, LLMNR and NetBIOS-NS are refused so stubs fall back to port 53", { skip }, async () => {
  const udp = (port: number) => `${process.execPath} ${TESTBED_JS}clients.js udp ${WORLD_IP4} ${port} x 1000 2>&1 | grep -c ECONNREFUSED`;
  const r = await world.moat(["run", "--stats", "--", "sh", "-c", `${udp(853)}; ${udp(5353)}; ${udp(5355)}; ${udp(137)}; ${tcp("connect", WORLD_IP4, "853", "2000")}`]);
  assert.deepEqual(r.stdout.trim().split("\n"), ["1", "1", "1", "1", "refused"]);
  assert.match(r.stderr, /"DNS_ALT_REFUSED":5/);
});

test("a domain rule admits the name's address after a lookup (curl http://allowed.test)", { skip: skip ?? (have("nginx") && have("curl") ? undefined : "nginx and curl are needed") }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "moat-nginx-"));
  writeFileSync(join(dir, "index.html"), "allowed\n");
  writeFileSync(join(dir, "nginx.conf"), `user root; daemon on; pid ${dir}/nginx.pid; error_log ${dir}/error.log; worker_processes 1;
events {} http { access_log off; server { listen 80; root ${dir}; } }\n`);
  execFileSync("ip", ["netns", "exec", world.world, "nginx", "-c", join(dir, "nginx.conf")]);
  try {
    const rules = [...NS, "--net-default-egress", "deny", "--deny-response", "reject", "--net-rule", "allow@allowed.test:tcp:80"];
    const ok = await inSandbox(rules, "curl -sS --max-time 5 http://allowed.test/index.html");
    assert.equal(ok.stdout, "allowed\n");
    const hardCoded = await world.moat(["run", ...rules, "--", "curl", "-sS", "--max-time", "5", `http://${WORLD_IP4}/index.html`]);
    assert.notEqual(hardCoded.code, 0, "a hard-coded IP must not match a domain rule");
    const elsewhere = await world.moat(["run", ...rules, "--", "sh", "-c", `getent hosts allowed.test >/dev/null; curl -sS --max-time 5 --resolve allowed.test:80:${HOSTS.public2} http://allowed.test/`]);
    assert.notEqual(elsewhere.code, 0, "an address the name did not resolve to must not match");
  } finally {
    execFileSync("ip", ["netns", "exec", world.world, "nginx", "-c", join(dir, "nginx.conf"), "-s", "stop"]);
  }
});

test("a pin that expired (TTL 2 s, no live flow) no longer admits new connections", { skip }, async () => {
  const rules = [...NS, "--net-default-egress", "deny", "--deny-response", "reject", "--net-rule", "allow@allowed.test:tcp:7"];
  const r = await inSandbox(rules, `getent hosts allowed.test >/dev/null; ${tcp("connect", WORLD_IP4, "7")}; sleep 3.5; ${tcp("connect", WORLD_IP4, "7")}`);
  assert.deepEqual(r.stdout.trim().split("\n"), ["connected", "refused"]);
});

test("a suffix rule covers names under it, and a CNAME pins the final address to the queried name", { skip }, async () => {
  const rules = [...NS, "--net-default-egress", "deny", "--deny-response", "reject", "--net-rule", "allow@*.test:tcp:7"];
  const r = await inSandbox(rules, `getent hosts alias.test >/dev/null; ${tcp("connect", WORLD_IP4, "7")}`);
  assert.equal(r.stdout.trim(), "connected");
});

test("blocked names and rebinding rewrites are written to the audit log", { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "moat-audit-"));
  const log = join(dir, "audit.jsonl");
  await inSandbox([...NS, "--audit-log", log, "--dns-block", "blocked.test"], `${dig("blocked.test")} >/dev/null; ${dig("evil.test")} >/dev/null`);
  assert.ok(existsSync(log));
  const kinds = readFileSync(log, "utf8").trim().split("\n").map((l) => (JSON.parse(l) as { kind?: string; name?: string }));
  assert.ok(kinds.some((e) => e.kind === "dns-blocked" && e.name === "blocked.test"), JSON.stringify(kinds));
  assert.ok(kinds.some((e) => e.kind === "dns-rebinding"), JSON.stringify(kinds));
});

test("answers reach the guest at once, not at the engine's next timer tick", { skip }, async () => {
  const r = await inSandbox(NS, `for i in 1 2 3 4 5; do ${dig("allowed.test")} | sed -n "s/;; Query time: \\([0-9]*\\) msec/\\1/p"; done`);
  const times = r.stdout.trim().split("\n").map(Number);
  assert.equal(times.length, 5, r.stdout);
  assert.ok(Math.max(...times) < 60, `query times ${times.join(", ")} ms: the 100 ms tick is carrying the answers`);
});
