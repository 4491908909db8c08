// policy.test.ts — the policy of the reference documents on a real guest: presets, rules in
// order, groups, limits, live replacement, audit events.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { World, WORLD_IP4, HOSTS, TESTBED_JS, systemTestSkipReason } from "../testbed/world.js";

const skip = systemTestSkipReason();
let world: World;
const tcp = (...args: string[]) => [process.execPath, `${TESTBED_JS}tcp-clients.js`, ...args].join(" ");

before(async () => {
  if (skip) return;
  world = World.create();
  await world.startServer("tcp-echo", 7);
  await world.startServer("tcp-echo", 7, "host"); // the host's loopback, reached through the gateway
});
after(() => world?.teardown());

/** Connect from inside a sandbox run with `flags` to each target; returns target -> result. */
async function probe(flags: string[], targets: string[], timeoutMs = 3000): Promise<Record<string, string>> {
  // GATEWAY stands for the sandbox's gateway address, which only the sandbox knows.
  const script = targets.map((t) => `echo "${t} $(${tcp("connect", t === "GATEWAY" ? "$gw" : t, "7", String(timeoutMs))})"`).join("; ");
  const gw = `gw=$(ip route | sed -n "s/default via \\([0-9.]*\\).*/\\1/p")`;
  const r = await world.moat(["run", ...flags, "--", "sh", "-c", `${gw}; ${script}`]);
  assert.equal(r.code, 0, r.stderr);
  return Object.fromEntries(r.stdout.trim().split("\n").map((l) => l.split(" ") as [string, string]));
}

const STOPPED = [HOSTS.private, HOSTS.cgnat, HOSTS.linkLocal, HOSTS.metadata, "GATEWAY", "[" + HOSTS.private6 + "]"];

test("public-only (the default) lets a public host through and stops private, link-local, metadata and the host", { skip }, async () => {
  const res = await probe(["--deny-response", "reject"], [WORLD_IP4, HOSTS.public2, ...STOPPED.filter((t) => !t.startsWith("["))]);
  assert.equal(res[WORLD_IP4], "connected");
  assert.equal(res[HOSTS.public2], "connected");
  for (const t of [HOSTS.private, HOSTS.cgnat, HOSTS.linkLocal, HOSTS.metadata, "GATEWAY"]) assert.equal(res[t], "refused", `${t}: ${res[t]}`);
});

test("public-only stops IPv6 private (fc00::/7) destinations too", { skip }, async () => {
  const res = await probe(["--deny-response", "reject"], [HOSTS.private6]);
  assert.equal(res[HOSTS.private6], "refused");
});

test("a denied connection is dropped silently by default (the guest times out)", { skip }, async () => {
  const res = await probe([], [HOSTS.metadata], 1500);
  assert.equal(res[HOSTS.metadata], "timeout");
});

test("allow-all opens private, link-local, metadata and the host's loopback", { skip }, async () => {
  const res = await probe(["--net", "allow-all"], [HOSTS.private, HOSTS.cgnat, HOSTS.linkLocal, HOSTS.metadata, "GATEWAY"]);
  for (const [t, v] of Object.entries(res)) assert.equal(v, "connected", `${t}: ${v}`);
});

test("none leaves the sandbox without any interface but loopback, and the command still runs", { skip }, async () => {
  const r = await world.moat(["run", "--net", "none", "--", "sh", "-c", "ip -o link show | cut -d: -f2; echo ran"]);
  assert.equal(r.code, 0, r.stderr);
  assert.deepEqual(r.stdout.trim().split("\n").map((s) => s.trim()), ["lo", "ran"]);
});

test("rules are tried in order and the first match decides", { skip }, async () => {
  const denyFirst = await probe(["--deny-response", "reject", "--net-rule", `deny@${HOSTS.private}`, "--net-rule", "allow@group:private:tcp:7"], [HOSTS.private, HOSTS.cgnat]);
  assert.deepEqual(denyFirst, { [HOSTS.private]: "refused", [HOSTS.cgnat]: "connected" });
  const allowFirst = await probe(["--deny-response", "reject", "--net-rule", "allow@group:private:tcp:7", "--net-rule", `deny@${HOSTS.private}`], [HOSTS.private, HOSTS.cgnat]);
  assert.deepEqual(allowFirst, { [HOSTS.private]: "connected", [HOSTS.cgnat]: "connected" });
});

test("a port-limited rule does not open other ports, and default-egress deny closes the public internet", { skip }, async () => {
  const res = await probe(["--deny-response", "reject", "--net-default-egress", "deny", "--net-rule", `allow@${WORLD_IP4}:tcp:7`, "--net-rule", "deny@group:public"], [WORLD_IP4, HOSTS.public2]);
  assert.deepEqual(res, { [WORLD_IP4]: "connected", [HOSTS.public2]: "refused" });
});

test("--max-connections refuses connections beyond the limit", { skip }, async () => {
  const r = await world.moat(["run", "--max-connections", "3", "--stats", "--", ...tcp("hold", WORLD_IP4, "7", "5", "1").split(" ")]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "held 3 refused 2");
  assert.match(r.stderr, /"DROP_FLOW_LIMIT":2/);
});

test("a running sandbox's policy can be replaced and new connections see it at once", { skip }, async () => {
  const r = await world.sandboxScript("policy-live.js", [HOSTS.private, "7"]);
  assert.equal(r.stdout.trim(), "before=refused after=connected back=refused", r.stderr);
});

test("every denial is written to the audit log with the rule that decided", { skip }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "moat-audit-"));
  const log = join(dir, "audit.jsonl");
  await probe(["--deny-response", "reject", "--audit-log", log, "--net-rule", `deny@${HOSTS.cgnat}:tcp:7`], [HOSTS.metadata, HOSTS.cgnat, WORLD_IP4]);
  const all = readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l) as Record<string, unknown>);
  assert.deepEqual(all.map((e) => e.kind), ["sandbox-created", "flow-denied", "flow-denied", "sandbox-destroyed"], JSON.stringify(all));
  const events = all.filter((e) => e.kind === "flow-denied");
  const byDest = Object.fromEntries(events.map((e) => [e.destination, e]));
  assert.equal(byDest[HOSTS.metadata]!.rule, "default");
  assert.equal(byDest[HOSTS.cgnat]!.rule, `rules[0] deny:egress@${HOSTS.cgnat}/32:tcp:7`);
  for (const e of events) {
    assert.equal(e.v, 1);
    assert.equal(e.action, "deny");
    assert.equal(e.protocol, "tcp");
    assert.equal(e.direction, "outbound");
    assert.equal(e.port, 7);
    assert.match(String(e.source), /^172\.30\.\d+\.\d+:\d+$/); // the guest: 4N+2 in slot N
    assert.match(String(e.sandbox), /^moat-[0-9a-f]{8}-\d+$/);
    assert.ok(!Number.isNaN(Date.parse(String(e.time))));
  }
});

test("a bad rule is rejected before anything starts, naming the rule", { skip }, async () => {
  const r = await world.moat(["run", "--net-rule", "alow@any", "--", "true"]);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /alow@any/);
  assert.match(r.stderr, /hint:/);
});

test("ping is judged by policy: a public host answers, a private one is stopped", { skip }, async () => {
  const r = await world.moat(["run", "--stats", "--", "sh", "-c", `ping -c1 -W2 ${WORLD_IP4} | grep -c "1 received"; ping -c1 -W1 ${HOSTS.private} | grep -c "0 received"`]);
  assert.deepEqual(r.stdout.trim().split("\n"), ["1", "1"], r.stderr);
  assert.match(r.stderr, /"DROP_POLICY":1/);
});
