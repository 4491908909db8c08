// tcp.test.ts — TCP through the engine with real clients and servers: bulk data checked by
// SHA-256 both ways, many concurrent connections, half-close, resets, refusals, HTTP, and the
// flow table empty afterwards.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { World, WORLD_IP4, WORLD_IP6, TESTBED_JS, TESTBED_SRC, systemTestSkipReason } from "../testbed/world.js";

const skip = systemTestSkipReason();
let world: World;
const client = (...args: string[]) => [process.execPath, `${TESTBED_JS}tcp-clients.js`, ...args];
const MiB = 1 << 20;
const BULK = Number(process.env.MOAT_TEST_BULK_MIB ?? 256) * MiB;

before(async () => {
  if (skip) return;
  world = World.create();
  await world.startServer("tcp-echo", 7);
  await world.startServer("tcp-sink", 9);
  await world.startServer("tcp-source", 19);
  await world.startServer("tcp-reset", 23);
});
after(() => world?.teardown());

function assertDrained(r: { report: { flows: { tcp: number; flows: number }; sockets: number; counters: Record<string, number> } }): void {
  assert.equal(r.report.flows.flows, 0, `flows left in the table: ${JSON.stringify(r.report)}`);
  assert.equal(r.report.sockets, 0, `host sockets left open: ${JSON.stringify(r.report)}`);
}

test(`a ${BULK / MiB} MiB upload arrives intact (SHA-256) and the flow is reaped`, { skip }, async () => {
  const r = await world.sandbox(client("upload", WORLD_IP4, "9", String(BULK)));
  assert.equal(r.report.code, 0, r.stderr);
  assert.match(r.stdout, /^ok [0-9a-f]{64}$/m);
  assertDrained(r);
});

test(`a ${BULK / MiB} MiB download arrives intact (SHA-256) and the flow is reaped`, { skip }, async () => {
  const r = await world.sandbox(client("download", WORLD_IP4, "19", String(BULK)));
  assert.equal(r.report.code, 0, r.stderr);
  assert.match(r.stdout, /^ok [0-9a-f]{64}$/m);
  assertDrained(r);
});

test("segments to the guest leave their checksums to its kernel (a TAP with a virtio-net header), and downloads over IPv4 and IPv6 arrive intact", { skip }, async () => {
  // The guest's kernel holds what moat wrote with NEEDS_CSUM as CHECKSUM_PARTIAL: a packet socket
  // sees it so (TP_STATUS_CSUMNOTREADY), and the segments' bytes were summed by nobody.
  const watch = `python3 ${TESTBED_SRC}csum_status.py eth0 19 3`;
  const down = (ip: string) => client("download", ip, "19", String(4 * MiB)).join(" ");
  const r = await world.sandbox(["sh", "-c", `${watch} > /tmp/status & until grep -q ready /tmp/status 2>/dev/null; do sleep 0.1; done; ${down(WORLD_IP4)} && ${down(WORLD_IP6)} && wait && cat /tmp/status`]);
  assert.equal(r.report.code, 0, r.stderr);
  assert.equal(r.stdout.match(/^ok [0-9a-f]{64}$/gm)?.length, 2, r.stdout);
  for (const family of [4, 6]) {
    const m = new RegExp(`^${family} (\\d+) (\\d+)$`, "m").exec(r.stdout);
    assert.ok(m, `a status line for IPv${family}: ${r.stdout}`);
    assert.ok(Number(m[2]) >= 3, `IPv${family}: segments seen: ${m[0]}`);
    assert.equal(m[1], m[2], `IPv${family}: every segment from the world left unsummed: ${m[0]}`);
  }
  assertDrained(r);
});

test("TCP over IPv6 carries data both ways", { skip }, async () => {
  const r = await world.sandbox(["sh", "-c", `${client("upload", WORLD_IP6, "9", String(8 * MiB)).join(" ")} && ${client("download", WORLD_IP6, "19", String(8 * MiB)).join(" ")}`]);
  assert.equal(r.report.code, 0, r.stderr);
  assert.equal(r.stdout.match(/^ok /gm)?.length, 2);
  assertDrained(r);
});

test("200 concurrent connections with interleaved data are all echoed correctly", { skip }, async () => {
  const r = await world.sandbox(client("many", WORLD_IP4, "7", "200", "20000"));
  assert.equal(r.report.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "ok 200");
  assert.equal(r.report.counters.TCP_FLOWS_OPENED, 200);
  assertDrained(r);
});

test("a half-closed connection still receives until the peer closes", { skip }, async () => {
  const r = await world.sandbox(client("halfclose", WORLD_IP4, "7"));
  assert.equal(r.report.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "ok");
  assertDrained(r);
});

test("a reset from the world reaches the guest as ECONNRESET", { skip }, async () => {
  const r = await world.sandbox(client("reset", WORLD_IP4, "23"));
  assert.equal(r.report.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "reset");
  assert.ok((r.report.counters.TCP_HOST_RESETS ?? 0) >= 1);
  assertDrained(r);
});

test("a closed port is seen by the guest as connection refused", { skip }, async () => {
  const r = await world.sandbox(client("connect", WORLD_IP4, "8"));
  assert.equal(r.stdout.trim(), "refused");
  assert.equal(r.report.counters.TCP_REFUSED, 1);
  assertDrained(r);
});

test("a guest that kills its connections mid-transfer leaves no flow behind", { skip }, async () => {
  // Start downloads and kill the client hard: the kernel resets its sockets.
  // (The PIDs by name: `jobs -p` inside $(...) runs in a subshell, where dash may list no jobs.)
  const r = await world.sandbox(["sh", "-c", `${client("download", WORLD_IP4, "19", String(2048 * MiB)).join(" ")} & D=$!; ${client("upload", WORLD_IP4, "9", String(2048 * MiB)).join(" ")} & U=$!; sleep 1; kill -9 $D $U; wait; exit 0`]);
  assert.equal(r.report.code, 0, r.stderr);
  assertDrained(r);
});

test("curl fetches a page from a real HTTP server (nginx) in the world", { skip: skip ?? (existsNginx() ? undefined : "nginx is not installed") }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "moat-nginx-"));
  writeFileSync(join(dir, "index.html"), "hello from the world\n");
  writeFileSync(join(dir, "nginx.conf"), `user root; daemon on; pid ${dir}/nginx.pid; error_log ${dir}/error.log; worker_processes 1;
events {} http { access_log off; server { listen 80; listen [::]:80; root ${dir}; } }\n`);
  execFileSync("ip", ["netns", "exec", world.world, "nginx", "-c", join(dir, "nginx.conf")]);
  try {
    const r = await world.sandbox(["curl", "-sS", "--max-time", "10", `http://${WORLD_IP4}/index.html`]);
    assert.equal(r.report.code, 0, r.stderr);
    assert.equal(r.stdout, "hello from the world\n");
    assertDrained(r);
  } finally {
    execFileSync("ip", ["netns", "exec", world.world, "nginx", "-c", join(dir, "nginx.conf"), "-s", "stop"]);
  }
});

function existsNginx(): boolean {
  try {
    execFileSync("sh", ["-c", "command -v nginx"], { stdio: "ignore" });
    return true;
  } catch {
    return false;
  }
}
