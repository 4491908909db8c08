// policy-holes.test.ts — the bypasses a hunt from inside a sandbox found, each tried again: the
// host's own addresses, pins taken from a resolver the guest chose, IPv6 spellings that carry a
// forbidden IPv4 address, a dead first nameserver, and the reference's --no-net.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, rmSync, writeFileSync, readFileSync } from "node:fs";
import { World, WORLD_IP4, HOSTS, TESTBED_JS, systemTestSkipReason } from "../testbed/world.js";

const have = (tool: string) => { try { execFileSync("sh", ["-c", `command -v ${tool}`], { stdio: "ignore" }); return true; } catch { return false; } };
const skip = systemTestSkipReason() ?? (have("dnsmasq") && have("dig") ? undefined : "dnsmasq and dig (dnsutils) are needed");
let world: World;
const HOST_IP4 = "203.0.113.1"; // the host namespace's uplink address (test/testbed/world.ts)
const HOST_IP6 = "2001:db8:77::1";
const OTHER_RESOLVER = HOSTS.public2; // a resolver the guest picks itself
const connect = (host: string, port = 7, ms = 1500) => `${process.execPath} ${TESTBED_JS}tcp-clients.js connect ${host} ${port} ${ms}`;
const dig = (args: string) => `dig +time=2 +tries=1 ${args}`;
const REJECT = ["--deny-response", "reject"]; // a denial is a quick "refused", never a slow timeout

before(async () => {
  if (skip) return;
  world = World.create();
  world.startDnsServer();
  await world.startServer("tcp-echo", 7); // in the world: every world address, port 7
  await world.startServer("tcp-echo", 7, "host"); // on the host itself: [::]:7
  // World hosts on IPv6 spellings that carry IPv4 addresses (6to4, local-use NAT64, Teredo).
  for (const a of ["2002:a9fe:a9fe::1", "2002:cb00:710a::1", "64:ff9b:1::a9fe:a9fe", "2001:0:4136:e378:8000:63bf:5601:5601"]) {
    execFileSync("ip", ["-n", world.world, "-6", "addr", "add", `${a}/128`, "dev", "down0", "nodad"]);
  }
  // A second resolver, the guest's own choice, that answers differently from the sandbox's.
  execFileSync("ip", ["netns", "exec", world.world, "dnsmasq", "--port=53", `--listen-address=${OTHER_RESOLVER}`, "--bind-interfaces",
    "--no-resolv", "--no-hosts", "--conf-file=/dev/null", `--pid-file=/tmp/moat-dnsmasq2-${process.pid}.pid`,
    `--address=/allowed.test/${OTHER_RESOLVER}`, "--address=/six.test/2002:a9fe:a9fe::1"]);
});
after(() => {
  try { process.kill(Number(readFileSync(`/tmp/moat-dnsmasq2-${process.pid}.pid`, "utf8")), "SIGTERM"); } catch { /* not started */ }
  world?.teardown();
});

async function inSandbox(flags: string[], script: string) {
  const r = await world.moat(["run", ...flags, "--", "sh", "-c", script]);
  assert.equal(r.code, 0, `${r.stdout}\n${r.stderr}`);
  return r.stdout.trim().split("\n");
}

test("the host's own addresses are Group Host: denied under public-only, reachable with a host rule", { skip }, async () => {
  assert.deepEqual(await inSandbox(REJECT, `${connect(HOST_IP4)}; ${connect(HOST_IP6)}; ${connect(WORLD_IP4)}`),
    ["refused", "refused", "connected"]);
  assert.deepEqual(await inSandbox([...REJECT, "--net-rule", "allow@group:host:tcp:7"], `${connect(HOST_IP4)}; ${connect(HOST_IP6)}`),
    ["connected", "connected"]);
});

test("an address the host gains while a sandbox runs is Group Host from then on", { skip }, async () => {
  const added = "203.0.113.77";
  const run = world.moat(["run", ...REJECT, "--", "sh", "-c", `sleep 2; ${connect(added)}`]);
  await new Promise((r) => setTimeout(r, 700));
  execFileSync("ip", ["-n", world.host, "addr", "add", `${added}/32`, "dev", "up0"]);
  try {
    const r = await run;
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), "refused", "the new host address must be denied, not reached");
  } finally {
    execFileSync("ip", ["-n", world.host, "addr", "del", `${added}/32`, "dev", "up0"]);
  }
});

test("addresses on a down interface and local (AnyIP) prefixes of the host are Group Host too", { skip }, async () => {
  const ns = ["-n", world.host];
  execFileSync("ip", [...ns, "link", "add", "dv0", "type", "veth", "peer", "name", "dv1"]); // left down
  execFileSync("ip", [...ns, "addr", "add", "203.0.113.88/32", "dev", "dv0"]);
  execFileSync("ip", [...ns, "route", "add", "local", "198.51.100.128/25", "dev", "lo"]); // public, but the host's
  try {
    const out = await inSandbox(REJECT, `${connect("203.0.113.88")}; ${connect("198.51.100.130")}`);
    assert.deepEqual(out, ["refused", "refused"]);
  } finally {
    execFileSync("ip", [...ns, "route", "del", "local", "198.51.100.128/25", "dev", "lo"]);
    execFileSync("ip", [...ns, "link", "del", "dv0"]);
  }
});

test("a resolver the guest chose is asked, but its answers pin nothing for domain rules", { skip }, async () => {
  const policy = ["--dns-nameserver", WORLD_IP4, "--net-default-egress", "deny", "--net-rule", "allow@allowed.test:tcp:7",
    "--net-rule", `allow@${OTHER_RESOLVER}:udp:53`, ...REJECT];
  const out = await inSandbox(policy, [
    dig(`+short @${OTHER_RESOLVER} allowed.test`), connect(OTHER_RESOLVER), // the guest's resolver's answer: no pin
    dig("+short allowed.test"), connect(WORLD_IP4), // the sandbox's own upstream: pinned
  ].join("; "));
  assert.deepEqual(out, [OTHER_RESOLVER, "refused", WORLD_IP4, "connected"]);
});

test("IPv6 spellings of forbidden IPv4 addresses (6to4, local-use NAT64, Teredo) are denied; a public one is not", { skip }, async () => {
  const out = await inSandbox(REJECT, ["2002:a9fe:a9fe::1", "64:ff9b:1::a9fe:a9fe", "2001:0:4136:e378:8000:63bf:5601:5601", "2002:cb00:710a::1"]
    .map((a) => connect(a)).join("; "));
  assert.deepEqual(out, ["refused", "refused", "refused", "connected"]);
});

test("rebinding protection sees the IPv4 address inside a 6to4 answer", { skip }, async () => {
  const out = await inSandbox([...REJECT, "--net-rule", `allow@${OTHER_RESOLVER}:udp:53`], `${dig(`@${OTHER_RESOLVER} AAAA six.test`)} | grep -o 'status: [A-Z]*'`);
  assert.deepEqual(out, ["status: REFUSED"]);
});

test("a dead first nameserver in the host's resolv.conf fails over to the next", { skip }, async () => {
  // `ip netns exec` shows moat /etc/netns/NAME/resolv.conf as its /etc/resolv.conf.
  const dir = `/etc/netns/${world.host}`;
  mkdirSync(dir, { recursive: true });
  writeFileSync(`${dir}/resolv.conf`, `nameserver 192.0.2.1\nnameserver ${WORLD_IP4}\n`);
  try {
    const out = await inSandbox(["--dns-query-timeout-ms", "300"], dig("+short allowed.test"));
    assert.deepEqual(out, [WORLD_IP4]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test("--no-net is --net none: no interface but loopback", { skip }, async () => {
  const out = await inSandbox(["--no-net"], "ls /sys/class/net");
  assert.deepEqual(out, ["lo"]);
  const r = await world.moat(["run", "--no-net", "--net", "allow-all", "--", "true"]);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /--no-net contradicts --net allow-all/);
});

test("multicast from the guest is dropped with a reason in the audit log, never silently", { skip }, async () => {
  const log = `/tmp/moat-mcast-audit-${process.pid}.jsonl`;
  rmSync(log, { force: true });
  try {
    await inSandbox(["--audit-log", log], "echo hi | socat -u - UDP-DATAGRAM:224.0.0.251:5353; true");
    const events = readFileSync(log, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { destination: string; port: number; rule: string });
    assert.ok(events.some((e) => e.destination === "224.0.0.251" && e.port === 5353 && /^not-routed/.test(e.rule)), JSON.stringify(events));
  } finally {
    rmSync(log, { force: true });
  }
});

test("DNS over TCP goes to the resolver the guest addressed, if policy lets it reach that resolver", { skip }, async () => {
  const silent = "198.51.100.99"; // nothing listens there
  const out = await inSandbox(["--dns-nameserver", WORLD_IP4, "--net-rule", `allow@${OTHER_RESOLVER}:tcp:53`, "--net-rule", `allow@${silent}:tcp:53`, "--net-rule", "deny@198.51.100.0/24:tcp:53"], [
    dig(`+tcp +short @${OTHER_RESOLVER} allowed.test`), // that resolver's own answer
    dig("+tcp +short allowed.test"), // the gateway: the sandbox's upstream
    `echo "addresses from the silent one: $(${dig(`+tcp +short @${silent} allowed.test`)} | grep -c '^[0-9]')"`, // nobody else answers for it
    `${dig(`+tcp +short @198.51.100.7 allowed.test`)} >/dev/null 2>&1 && echo answered || echo no-answer`, // denied by policy
  ].join("; "));
  assert.deepEqual(out, [OTHER_RESOLVER, WORLD_IP4, "addresses from the silent one: 0", "no-answer"]);
});
