// ownership.test.ts — sandboxes of different address pools never touch each other, and
// `moat cleanup` removes only what a provably dead owner left (issue 20, item 1).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync, type ChildProcess } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { World, WORLD_IP4, TESTBED_JS, systemTestSkipReason, moatNamespaces, sandboxReadableDir } from "../testbed/world.js";
import { netnsName } from "../../orchestrator/src/sandbox/leases.js";
import { poolTag } from "../../orchestrator/src/gateway/addressing.js";
import { processStat } from "../../orchestrator/src/sandbox/ownership.js";

const skip = systemTestSkipReason();
let world: World;
let dir: string;
const client = [process.execPath, `${TESTBED_JS}clients.js`].join(" ");
const POOL_A = "10.201.0.0/24";
const POOL_B = "10.202.0.0/24";

before(async () => {
  if (skip) return;
  world = World.create();
  await world.startServer("udp-echo", 7);
  dir = sandboxReadableDir("moat-ownership-"); // the sandboxes watch a file here (their /tmp is their own)
});
after(() => {
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Start `moat run` with a command that says "up", waits for `flag`, then exchanges a datagram with the world. */
function waitingSandbox(args: string[], flag: string, word: string): { p: ChildProcess; up: Promise<void>; out: () => string; done: Promise<number | null> } {
  const p = world.spawnMoat(["run", ...args, "--", "sh", "-c", `echo up; while [ ! -e ${flag} ]; do sleep 0.05; done; ${client} udp ${WORLD_IP4} 7 ${word}`]);
  let stdout = "";
  let stderr = "";
  const up = new Promise<void>((resolve, reject) => {
    p.stdout!.on("data", (d) => { stdout += d; if (stdout.includes("up\n")) resolve(); });
    p.stderr!.on("data", (d) => { stderr += d; });
    p.once("exit", (c) => reject(new Error(`moat exited (${c}) before its command was up:\n${stderr}`)));
  });
  const done = new Promise<number | null>((r) => p.once("exit", (c) => r(c)));
  return { p, up, out: () => stdout + stderr, done };
}

test("two moats on different pools and a moat cleanup between them: both keep serving", { skip, timeout: 60000 }, async () => {
  const flag = join(dir, "go");
  const a = waitingSandbox(["--ipv4-pool", POOL_A], flag, "from-a");
  await a.up;
  const b = waitingSandbox(["--ipv4-pool", POOL_B], flag, "from-b");
  await b.up;
  assert.ok(moatNamespaces(poolTag(POOL_A)).length >= 1 && moatNamespaces(poolTag(POOL_B)).length >= 1, "each pool has its own namespace");
  const c = await world.moat(["cleanup"]);
  assert.equal(c.code, 0, c.stderr);
  assert.doesNotMatch(c.stdout, new RegExp(`moat-(${poolTag(POOL_A)}|${poolTag(POOL_B)})-`), "cleanup took nothing of a live sandbox");
  writeFileSync(flag, "");
  const [ca, cb] = await Promise.all([a.done, b.done]);
  assert.equal(ca, 0, a.out());
  assert.equal(cb, 0, b.out());
  assert.match(a.out(), /up\nfrom-a\n/);
  assert.match(b.out(), /up\nfrom-b\n/);
  assert.deepEqual(moatNamespaces(poolTag(POOL_A)), []);
  assert.deepEqual(moatNamespaces(poolTag(POOL_B)), []);
});

/** A lease for slot 0 of `pool` naming `owner`, and the namespace it records. */
function plantLease(pool: string, owner: { pid: number; start: number }): { ns: string; lease: string } {
  const ns = netnsName(pool, 0);
  const lease = `/run/moat/leases/${poolTag(pool)}-0`;
  mkdirSync("/run/moat/leases", { recursive: true });
  writeFileSync(lease, JSON.stringify({ ...owner, pidns: "", token: "t".repeat(24), pool, slot: 0, netns: ns }));
  execFileSync("ip", ["netns", "add", ns]);
  mkdirSync(`/etc/netns/${ns}`, { recursive: true });
  return { ns, lease };
}

test("moat cleanup removes a dead owner's namespace and lease (a reused pid included), and keeps a live one's", { skip }, async () => {
  const dead = spawn("true");
  await new Promise((r) => dead.once("exit", r));
  const gone = plantLease("10.203.0.0/24", { pid: dead.pid!, start: 1 });
  // The pid is alive, but it is not the process that took the lease: another start time.
  const reused = plantLease("10.204.0.0/24", { pid: process.pid, start: processStat(process.pid)!.start - 1 });
  const live = plantLease("10.205.0.0/24", { pid: process.pid, start: processStat(process.pid)!.start });
  try {
    const c = await world.moat(["cleanup"]);
    assert.equal(c.code, 0, c.stderr);
    for (const x of [gone, reused]) {
      assert.match(c.stdout, new RegExp(`removed namespace ${x.ns}`));
      assert.ok(!existsSync(`/run/netns/${x.ns}`) && !existsSync(`/etc/netns/${x.ns}`) && !existsSync(x.lease), `${x.ns} is gone`);
    }
    assert.ok(existsSync(`/run/netns/${live.ns}`) && existsSync(`/etc/netns/${live.ns}`), "the live owner's namespace stays");
    assert.equal(JSON.parse(readFileSync(live.lease, "utf8")).pid, process.pid, "and its lease");
  } finally {
    execFileSync("ip", ["netns", "del", live.ns]);
    rmSync(`/etc/netns/${live.ns}`, { recursive: true, force: true });
    rmSync(live.lease, { force: true });
  }
});

test("a moat taking a dead owner's slot removes what it left", { skip }, async () => {
  const dead = spawn("true");
  await new Promise((r) => dead.once("exit", r));
  const pool = "10.206.0.0/30";
  const gone = plantLease(pool, { pid: dead.pid!, start: 1 });
  const r = await world.moat(["run", "--ipv4-pool", pool, "--", "sh", "-c", "ip -o -4 addr show dev eth0"]);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /inet 10\.206\.0\.2\/30/, "the pool's only slot was taken over");
  assert.ok(!existsSync(`/run/netns/${gone.ns}`) && !existsSync(`/etc/netns/${gone.ns}`) && !existsSync(gone.lease));
});
