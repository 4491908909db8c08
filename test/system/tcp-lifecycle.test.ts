// tcp-lifecycle.test.ts — nothing lost, nothing hung: data the guest's kernel still holds when
// the command exits is delivered before the sandbox goes; a connection cut short reaches its peer
// as a reset, never as a clean end; many concurrent bulk connections all complete.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { writeFileSync, readFileSync, rmSync, existsSync } from "node:fs";
import { createHash, randomBytes } from "node:crypto";
import { World, WORLD_IP4, TESTBED_JS, TESTBED_SRC, systemTestSkipReason, hasTool } from "../testbed/world.js";

const skip = systemTestSkipReason() ?? (hasTool("socat", "-V") ? undefined : "socat is not installed");
const MiB = 1 << 20;
const RECORD = `/tmp/moat-record-${process.pid}.log`;
const UPLOAD = `/var/tmp/moat-upload-${process.pid}.bin`; // read inside the sandbox, whose /tmp is its own
let world: World;


before(async () => {
  if (skip) return;
  rmSync(RECORD, { force: true });
  world = World.create();
  await world.startProcess(["python3", `${TESTBED_SRC}tcp_record.py`, "2000", RECORD]);
  // A reader that stalls for a second 6 MiB before the end of a 64 MiB upload: the uploader has
  // written everything and exited while its kernel still holds megabytes of it. (Receive
  // buffers capped at 256 KiB in the world, so they cannot absorb those megabytes instead.)
  execFileSync("ip", ["netns", "exec", world.world, "sysctl", "-qw", "net.ipv4.tcp_rmem=4096 131072 262144"]);
  await world.startProcess(["python3", `${TESTBED_SRC}tcp_record.py`, "2001", RECORD, String(58 * MiB), "1000"]);
  await world.startServer("tcp-echo", 7);
});
after(() => {
  world?.teardown();
  rmSync(RECORD, { force: true });
  rmSync(UPLOAD, { force: true });
});

/** The server's records, once there are at least `n` (it writes one when a connection ends). */
async function records(n: number): Promise<string[]> {
  const deadline = Date.now() + 20000;
  for (;;) {
    const lines = existsSync(RECORD) ? readFileSync(RECORD, "utf8").split("\n").filter(Boolean) : [];
    if (lines.length >= n || Date.now() > deadline) return lines;
    await new Promise((r) => setTimeout(r, 50));
  }
}

test("a 64 MiB upload by a command that exits as soon as it has written arrives whole, run after run", { skip }, async () => {
  const data = randomBytes(64 * MiB);
  writeFileSync(UPLOAD, data);
  const want = `end ${data.length} ${createHash("sha256").update(data).digest("hex")}`;
  const before = (await records(0)).length;
  const runs = 5;
  for (let i = 1; i <= runs; i++) {
    // socat -u exits once its last write returned: the guest kernel still holds up to its
    // send buffer of unsent data, which moat must deliver before tearing the sandbox down.
    const port = i % 2 ? "2001" : "2000"; // with and without a stalling reader
    const r = await world.moat(["run", "--", "socat", "-u", `FILE:${UPLOAD}`, `TCP:${WORLD_IP4}:${port}`]);
    assert.equal(r.code, 0, r.stderr);
    assert.doesNotMatch(r.stderr, /were reset/);
    const lines = await records(before + i);
    assert.equal(lines[before + i - 1], want, `run ${i}: the server received ${lines[before + i - 1]}`);
  }
});

test("an upload cut short (no grace, a stalled reader) reaches its peer as a reset, not a clean end", { skip }, async () => {
  const before = (await records(0)).length;
  const r = await world.moat(["run", "--exit-grace-ms", "0", "--", "socat", "-u", `FILE:${UPLOAD}`, `TCP:${WORLD_IP4}:2001`]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /1 connection\(s\) still open when the command ended were reset/);
  const [line] = (await records(before + 1)).slice(before);
  const m = /^reset (\d+) ECONNRESET$/.exec(line ?? "");
  assert.ok(m, `the server saw "${line}", not a reset`);
  assert.ok(Number(m[1]) < 64 * MiB, "and less than everything");
});

test("a connection still open when the grace runs out reaches its peer as a reset, not a clean end", { skip }, async () => {
  const before = (await records(0)).length;
  const t0 = Date.now();
  // A background writer that sends a little, then holds its connection idle past the command.
  const r = await world.moat(["run", "--exit-grace-ms", "500", "--", "sh", "-c",
    `( (echo partial; sleep 5) | timeout 8 socat -u - TCP:${WORLD_IP4}:2000 ) >/dev/null 2>&1 & sleep 0.5`]);
  const elapsed = Date.now() - t0;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /1 connection\(s\) still open when the command ended were reset after 500 ms/);
  assert.ok(elapsed < 4500, `moat waited ${elapsed} ms: the grace is 500 ms without progress`);
  const lines = await records(before + 1);
  assert.match(lines[before] ?? "", /^reset 8 ECONNRESET$/, "the server saw the 8 bytes, then a reset");
});

test("1000 concurrent connections moving 1 MiB each way all complete, every byte checked", { skip }, async () => {
  const r = await world.sandbox([process.execPath, `${TESTBED_JS}tcp-clients.js`, "bulk", WORLD_IP4, "7", "1000", String(MiB), "90"], 150000);
  assert.equal(r.report.code, 0, r.stderr);
  assert.match(r.stdout, /^ok 1000 [\d.]+ s$/m);
  assert.equal(r.report.counters.TCP_FLOWS_OPENED, 1000);
  assert.equal(r.report.flows.flows, 0, `flows left: ${JSON.stringify(r.report)}`);
  assert.equal(r.report.sockets, 0, `host sockets left: ${JSON.stringify(r.report)}`);
  process.stdout.write(`# bulk: ${r.stdout.trim()}\n`);
});

test("--max-connections holds for connections to the gateway's own DNS over TCP too", { skip }, async () => {
  const gw = `"$(ip route show default | cut -d' ' -f3)"`;
  const r = await world.moat(["run", "--max-connections", "8", "--stats", "--", "sh", "-c",
    `exec ${process.execPath} ${TESTBED_JS}tcp-clients.js hold ${gw} 53 20 1`]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "held 8 refused 12");
  assert.equal(World.stats(r.stderr).DROP_FLOW_LIMIT, 12);
});

test("one process embeds more than ten sandboxes without a listener-leak warning", { skip }, async () => {
  const r = await world.sandboxScript("sandbox-many.js", ["12"]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "created 12, destroyed 12");
  assert.doesNotMatch(r.stderr, /MaxListenersExceeded|Warning/);
});

test("a signal during the exit grace ends the wait: moat cleans up at once and the peer sees a reset", { skip }, async () => {
  const before = (await records(0)).length;
  const p = world.spawnMoat(["run", "--exit-grace-ms", "60000", "--", "sh", "-c",
    `( (echo partial; sleep 20) | timeout 25 socat -u - TCP:${WORLD_IP4}:2000 ) >/dev/null 2>&1 & sleep 0.5`]);
  let stderr = "";
  p.stderr!.on("data", (d) => (stderr += d));
  const exited = new Promise<number | null>((r) => p.on("exit", (code) => r(code)));
  await new Promise((r) => setTimeout(r, 2000)); // the command has ended; moat is waiting out the grace
  const t0 = Date.now();
  p.kill("SIGINT");
  const code = await exited;
  assert.ok(Date.now() - t0 < 3000, `moat took ${Date.now() - t0} ms to stop after the signal`);
  assert.equal(code, 0, stderr);
  assert.match(stderr, /were reset/);
  const [line] = (await records(before + 1)).slice(before);
  assert.match(line ?? "", /^reset 8 ECONNRESET$/);
});

test("a peer that resets after its own FIN: the guest's later FIN is answered at once, nothing waits out the grace", { skip }, async () => {
  // The server sends a line and its FIN, then, when the client's data arrives, closes with that
  // data unread: its kernel answers with a reset, after the EOF the engine already relayed.
  await world.startProcess(["python3", "-c", `import socket, struct, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 2002)); s.listen(); print('ready', flush=True)
while True:
    c, _ = s.accept(); c.sendall(b'bye\\n'); c.shutdown(socket.SHUT_WR); time.sleep(0.2)
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); c.close()`]);
  const t0 = Date.now();
  const r = await world.moat(["run", "--stats", "--", "python3", "-c", `import socket, time
c = socket.create_connection(('${WORLD_IP4}', 2002)); print(c.recv(10).decode().strip(), c.recv(10) == b'')
time.sleep(0.4); c.sendall(b'late data'); time.sleep(0.1); c.close()`]);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), "bye True");
  assert.doesNotMatch(r.stderr, /still open/);
  assert.ok(Date.now() - t0 < 4000, `took ${Date.now() - t0} ms (the exit grace is 5000)`);
  assert.equal(World.stats(r.stderr).TCP_FLOWS_CLOSED, 1);
});
