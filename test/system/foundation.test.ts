// foundation.test.ts — a real command in a real sandbox, talking to a test world through moat.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { World, WORLD_IP4, WORLD_IP6, TESTBED_JS, systemTestSkipReason, moatNamespaces } from "../testbed/world.js";

const skip = systemTestSkipReason();
let world: World;
const client = [process.execPath, `${TESTBED_JS}clients.js`];

before(async () => {
  if (skip) return;
  world = World.create();
  await world.startServer("udp-echo", 7);
});
after(() => world?.teardown());

test("the guest gets its address, MTU and default routes", { skip }, async () => {
  const r = await world.moat(["run", "--", "sh", "-c", "ip -o addr show dev eth0; ip -o link show dev eth0; ip route; ip -6 route"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /inet 172\.30\.\d+\.2\/30/);
  assert.match(r.stdout, /inet6 fd6d:6f61:7400:[0-9a-f:]*:2\/64/);
  assert.match(r.stdout, /mtu 65520/);
  assert.match(r.stdout, /default via 172\.30\.\d+\.1 dev eth0/);
  assert.match(r.stdout, /default via fe80::1 dev eth0/);
});

test("the guest's NIC leaves its checksums to moat (a TAP with a virtio-net header), and UDP still flows", { skip }, async () => {
  // With checksum offload the guest's datagrams carry only the pseudo-header's sum: the echo
  // comes back only if the engine takes them as the TAP marked them, unverified.
  const r = await world.moat(["run", "--stats", "--", "sh", "-c", `cat /sys/class/net/eth0/tun_flags && ${client.join(" ")} udp ${WORLD_IP4} 7 offloaded`]);
  assert.equal(r.code, 0, r.stderr);
  const [flags, reply] = r.stdout.trim().split("\n");
  assert.ok((Number(flags) & 0x4000) !== 0, `IFF_VNET_HDR in the TAP's flags: ${flags}`);
  assert.equal(reply, "offloaded");
  assert.equal(World.stats(r.stderr).DROP_UDP_MALFORMED, undefined);
});

test("a checksum the guest left inside a datagram's payload (a tunnel's) is filled in before the payload leaves", { skip }, async () => {
  // The TAP's virtio-net header can say NEEDS_CSUM for a checksum other than the frame's own: a
  // tunnelled packet's, which a NIC completes. The engine forwards the payload as it is, so the
  // link completes it; only the frame's own TCP/UDP checksum is left to the engine.
  const script = new URL("../../../test/testbed/inner_csum.py", import.meta.url).pathname;
  const r = await world.moat(["run", "--stats", "--", "sh", "-c",
    `ping -c1 -W2 $(ip route | sed -n "s/default via \\([0-9.]*\\).*/\\1/p") >/dev/null;
     gwmac=$(ip neigh show dev eth0 | awk '/lladdr/ {print $3; exit}');
     /usr/bin/python3 ${script} eth0 $gwmac $(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1) ${WORLD_IP4} 7`]);
  assert.equal(r.code, 0, r.stderr);
  const m = /^inner (0x[0-9a-f]+) (0x[0-9a-f]+)$/m.exec(r.stdout);
  assert.ok(m, r.stdout + r.stderr);
  assert.equal(m[2], m[1], "the inner checksum as a NIC fills it in");
  assert.equal(World.stats(r.stderr).DROP_UDP_MALFORMED, undefined, "the datagram's own checksum, whole, verified");
});

test("the gateway answers ping over IPv4 and IPv6", { skip }, async () => {
  const r = await world.moat(["run", "--stats", "--", "sh", "-c",
    'gw=$(ip route | sed -n "s/default via \\([0-9.]*\\).*/\\1/p"); ping -c2 -W2 $gw && ping -6 -c1 -W2 fe80::1%eth0']);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /2 received/);
  assert.match(r.stdout, /1 received/);
  assert.ok((World.stats(r.stderr).ICMP_ECHO_REPLIES ?? 0) >= 3);
});

test("a UDP exchange with a world host works over IPv4 and IPv6", { skip }, async () => {
  const r = await world.moat(["run", "--stats", "--", "sh", "-c",
    `${client.join(" ")} udp ${WORLD_IP4} 7 hello4 && ${client.join(" ")} udp ${WORLD_IP6} 7 hello6`]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "hello4\nhello6\n");
  const c = World.stats(r.stderr);
  assert.equal(c.UDP_FLOWS_OPENED, 2);
  assert.equal(c.UDP_FROM_HOST, 2);
});

test("many concurrent UDP flows each get their own replies", { skip }, async () => {
  const r = await world.moat(["run", "--", ...client, "udp-many", WORLD_IP4, "7", "200"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "ok 200");
});

test("UDP flows beyond --max-udp-flows are dropped and counted", { skip }, async () => {
  const r = await world.moat(["run", "--stats", "--max-udp-flows", "3", "--", ...client, "udp-many", WORLD_IP4, "7", "5"]);
  assert.notEqual(r.code, 0);
  assert.ok((World.stats(r.stderr).DROP_FLOW_LIMIT ?? 0) >= 2, r.stderr);
});

test("moat exits with the command's status and leaves no namespace behind", { skip }, async () => {
  const before = moatNamespaces();
  const r = await world.moat(["run", "--", "sh", "-c", "exit 7"]);
  assert.equal(r.code, 7);
  const k = await world.moat(["run", "--", "sh", "-c", "kill -9 $$"]);
  assert.equal(k.code, 128 + 9);
  assert.deepEqual(moatNamespaces().filter((n) => !before.includes(n)), []);
});

test("SIGTERM to moat stops the command and cleans up", { skip }, async () => {
  const before = moatNamespaces();
  const p = world.spawnMoat(["run", "--", "sleep", "30"]);
  await new Promise((r) => setTimeout(r, 1500));
  assert.equal(moatNamespaces().filter((n) => !before.includes(n)).length, 1);
  p.kill("SIGTERM");
  const code = await new Promise<number | null>((r) => p.on("exit", (c) => r(c)));
  assert.equal(code, 128 + 15);
  assert.deepEqual(moatNamespaces().filter((n) => !before.includes(n)), []);
});

test("the engine keeps serving after a burst of malformed frames from the guest", { skip }, async () => {
  const script = new URL("../../../test/testbed/inject_frames.py", import.meta.url).pathname;
  const r = await world.moat(["run", "--stats", "--", "sh", "-c",
    `ping -c1 -W2 $(ip route | sed -n "s/default via \\([0-9.]*\\).*/\\1/p") >/dev/null;
     gwmac=$(ip neigh show dev eth0 | awk '/lladdr/ {print $3; exit}');
     /usr/bin/python3 ${script} eth0 $gwmac 5000 $(ip -4 -o addr show dev eth0 | awk '{print $4}' | cut -d/ -f1) && ${client.join(" ")} udp ${WORLD_IP4} 7 still-here`]);
  assert.equal(r.code, 0, r.stderr);
  const [sent, reply] = r.stdout.trim().split("\n");
  assert.ok(Number(sent) >= 4000, `only ${sent} frames were sent`);
  assert.equal(reply, "still-here");
  const c = World.stats(r.stderr);
  const drops = Object.entries(c).filter(([k]) => k.startsWith("DROP_")).reduce((a, [, v]) => a + v, 0);
  // Every malformed frame the engine received is counted as a drop. (On a loaded machine the
  // kernel's TAP queue may overflow before the engine reads it: those never reach the engine.
  // The few good frames of the script are ping, ARP and one UDP exchange.)
  const seen = (c.RX_FRAMES ?? 0) - 20;
  assert.ok(seen >= Math.min(1000, Number(sent) * 0.2), `the engine saw only ${c.RX_FRAMES} of ${sent} frames: ${JSON.stringify(c)}`);
  assert.ok(drops >= seen * 0.95, `only ${drops} of the ${seen} malformed frames the engine received were counted as drops: ${JSON.stringify(c)}`);
});

test("DHCP hands the guest its address (busybox udhcpc)", { skip: skip ?? (existsSync("/bin/busybox") ? undefined : "busybox is not installed") }, async () => {
  const r = await world.moat(["run", "--", "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "3", "-s", "/bin/true"]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout + r.stderr, /lease of 172\.30\.\d+\.2 obtained/);
});

test("a command that does not exist exits 127 with a clear message, and nothing is left behind", { skip }, async () => {
  const before = moatNamespaces();
  const r = await world.moat(["run", "--", "no-such-command-here"]);
  assert.equal(r.code, 127);
  assert.match(r.stderr, /command not found: no-such-command-here/);
  assert.deepEqual(moatNamespaces().filter((n) => !before.includes(n)), []);
});

test("an audit log that cannot be written is refused before anything starts", { skip }, async () => {
  const r = await world.moat(["run", "--audit-log", "/nonexistent-dir/audit.jsonl", "--", "true"]);
  assert.equal(r.code, 125);
  assert.match(r.stderr, /cannot write the audit log \/nonexistent-dir\/audit\.jsonl/);
  assert.equal(r.stdout, "");
});

test("ping to a world host is carried through ping sockets, over IPv4 and IPv6", { skip }, async () => {
  const r = await world.moat(["run", "--stats", "--", "sh", "-c", `ping -c2 -W2 ${WORLD_IP4} && ping -6 -c2 -W2 ${WORLD_IP6}`]);
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.equal(r.stdout.match(/2 received/g)?.length, 2, r.stdout);
  const c = World.stats(r.stderr);
  assert.equal(c.ICMP_ECHO_FORWARDED, 4);
  assert.equal(c.ICMP_ECHO_FROM_HOST, 4);
});
