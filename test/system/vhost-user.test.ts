// vhost-user.test.ts — the vhost-user-net back-end (native-vmm/src/vhost-user.cc), driven by a
// front-end that plays QEMU and the guest's virtio-net driver at once
// (test/testbed/vhost_user_frontend.py: shared memfd memory, split virtqueues, eventfds). No VM:
// the gateway answers ARP and ping through the queues, hostile descriptor chains are consumed
// and counted (LINK_MALFORMED) with the link still serving, hostile control messages drop the
// connection and are counted, and the next front-end is served afresh.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { execFile } from "node:child_process";
import { serveGateway, type ServedGateway } from "../../orchestrator/src/sandbox/serve.js";
import { NetworkPolicy } from "../../orchestrator/src/model/policy.js";
import { systemTestSkipReason, hasTool } from "../testbed/world.js";

const skip = systemTestSkipReason()
  ?? (hasTool("python3", "-c", "import os, socket; os.eventfd; os.memfd_create; socket.send_fds") ? undefined : "python3 >= 3.10 is needed for the vhost-user front-end");
const FRONTEND = new URL("../../../test/testbed/vhost_user_frontend.py", import.meta.url).pathname;
const MTU = 65520;

let dir: string;
let sock: string;
let served: ServedGateway;
before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), "moat-vhost-"));
  sock = join(dir, "vhost.sock");
  served = await serveGateway({ policy: NetworkPolicy.publicOnly(), dnsForward: "none", exitGraceMs: 0 }, { kind: "vhost-user", path: sock, mtu: MTU });
});
after(async () => {
  await served?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const counter = (name: string) => served.gateway.counters()[name] ?? 0;

interface CaseResult { case: string; ok: boolean; malformed: number | null; detail: Record<string, unknown> }

/** Run front-end cases (one process), each reported as a JSON line; `args` may carry --seed N. */
function frontend(...cases: string[]): Promise<CaseResult[]> {
  const a = served.gateway.addresses;
  const args = [FRONTEND, "--socket", sock, "--guest-ip", a.guestIp4, "--gateway-ip", a.gatewayIp4, "--gateway-mac", a.gatewayMac, "--mtu", String(MTU), ...cases];
  return new Promise((resolve, reject) => {
    execFile("python3", args, { timeout: 60_000 }, (err, stdout, stderr) => {
      if (err) return reject(new Error(`${err.message}\n${stderr}`));
      resolve(stdout.trim().split("\n").filter(Boolean).map((l) => JSON.parse(l) as CaseResult));
    });
  });
}

/** One case in its own process, and what LINK_MALFORMED did meanwhile. */
async function run(name: string): Promise<{ r: CaseResult; malformed: number }> {
  const before = counter("LINK_MALFORMED");
  const [r] = await frontend(name);
  assert.ok(r, `case ${name} reported nothing`);
  return { r, malformed: counter("LINK_MALFORMED") - before };
}

async function expectCase(name: string): Promise<CaseResult> {
  const { r, malformed } = await run(name);
  assert.equal(r.ok, true, `${name}: ${JSON.stringify(r.detail)}`);
  assert.equal(malformed, r.malformed, `${name}: LINK_MALFORMED rose by ${malformed}, expected ${r.malformed}`);
  return r;
}

let catalogue: Record<string, number | null> = {};
const good = ["negotiation", "arp", "ping-small", "ping-split-header", "ping-indirect", "ping-big", "minimal-features", "legacy-header",
  "no-rx-buffers", "interrupts", "qemu-order", "get-vring-base", "reconnect", "memory-sealed", "unknown-requests-answered"];

test("the front-end's cases are all known to this test", { skip }, async () => {
  catalogue = JSON.parse((await new Promise<string>((resolve, reject) => {
    execFile("python3", [FRONTEND, "--socket", "x", "--guest-ip", "x", "--gateway-ip", "x", "--gateway-mac", "x", "list"], (e, out) => (e ? reject(e) : resolve(out)));
  }))) as Record<string, number | null>;
  for (const name of good) assert.equal(catalogue[name], 0, `${name} is a well-behaved case`);
  assert.ok(Object.values(catalogue).filter((m) => m !== null && m > 0).length >= 35, "the hostile cases are there");
  assert.equal(catalogue["fuzz-chains"], null);
  assert.equal(catalogue["fuzz-messages"], null);
});

test("features offered: VERSION_1, PROTOCOL_FEATURES, MRG_RXBUF, MTU, EVENT_IDX, INDIRECT_DESC, CSUM, GUEST_CSUM; REPLY_ACK and NET_MTU", { skip }, async () => {
  const r = await expectCase("negotiation");
  assert.equal(r.detail.features, "0x17000800b");
  assert.equal(r.detail.protocol, "0x18");
});

test("the gateway answers ARP and ping through the virtqueues", { skip }, async () => {
  const peers = counter("LINK_PEERS");
  await expectCase("arp");
  await expectCase("ping-small");
  await expectCase("qemu-order"); // rings enabled before SET_FEATURES, as QEMU 7.2 does
  assert.ok(counter("LINK_PEERS") >= peers + 3, "each front-end connection is a peer");
});

test("descriptor layouts: header apart, buffers across regions, indirect tables, a 60 KB frame over merged buffers", { skip }, async () => {
  await expectCase("ping-split-header");
  await expectCase("ping-indirect");
  const big = await expectCase("ping-big");
  assert.ok((big.detail.num_buffers as number) > 20, `num_buffers ${String(big.detail.num_buffers)}`);
});

test("fewer features: no EVENT_IDX / MRG_RXBUF / PROTOCOL_FEATURES, and the legacy 10-byte header", { skip }, async () => {
  await expectCase("minimal-features");
  await expectCase("legacy-header");
});

test("a reply waits for receive buffers; interrupts follow NO_INTERRUPT and used_event", { skip }, async () => {
  await expectCase("no-rx-buffers");
  await expectCase("interrupts");
});

test("GET_VRING_BASE stops a ring and it restarts where it stopped; frames for a stopped ring are dropped and counted", { skip }, async () => {
  await expectCase("get-vring-base");
  const tx = counter("LINK_TX_ERRORS");
  await expectCase("rx-stopped-drops");
  assert.ok(counter("LINK_TX_ERRORS") >= tx + 1, "the echo reply had nowhere to go");
});

test("a front-end reconnects (and the newest wins); guest memory is sealed against shrinking", { skip }, async () => {
  await expectCase("reconnect");
  await expectCase("memory-sealed");
});

test("requests not offered are answered with failure or ignored, without dropping the front-end", { skip }, async () => {
  await expectCase("unknown-requests-answered");
});

test("every hostile descriptor chain and control message is dropped and counted; the link keeps serving", { skip }, async () => {
  const hostile = Object.entries(catalogue).filter(([, m]) => m !== null && m > 0).map(([n]) => n);
  assert.ok(hostile.length > 0);
  const failures: string[] = [];
  for (const name of hostile) {
    const { r, malformed } = await run(name);
    if (!r.ok || malformed !== r.malformed) failures.push(`${name}: ok=${r.ok} malformed +${malformed} (expected +${r.malformed}) ${JSON.stringify(r.detail)}`);
  }
  assert.deepEqual(failures, []);
  // Still serving after all of it.
  await expectCase("ping-small");
});

test("random descriptor chains and control messages never stop the link", { skip }, async () => {
  for (const seed of [1, 2]) {
    const before = counter("LINK_MALFORMED");
    const results = await frontend("--seed", String(seed), "fuzz-chains", "fuzz-messages");
    assert.deepEqual(results.map((r) => [r.case, r.ok]), [["fuzz-chains", true], ["fuzz-messages", true]], JSON.stringify(results));
    assert.ok(counter("LINK_MALFORMED") > before, "the garbage was counted");
  }
});
