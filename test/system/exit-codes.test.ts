// exit-codes.test.ts — moat exits as docker does (issue 20, item 6): 125 for its own failures (bad
// options included), 126 for a command that cannot be executed, 127 for one not found, else the
// command's status (128+N for signal N); --name names the sandbox (unique among live ones); run()
// says the same statuses through the library.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chmodSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { World, WORLD_IP4, TESTBED_JS, systemTestSkipReason, sandboxReadableDir } from "../testbed/world.js";
import { poolTag } from "../../orchestrator/src/gateway/addressing.js";
import { processStat } from "../../orchestrator/src/sandbox/ownership.js";

const skip = systemTestSkipReason();
let world: World;
let dir: string;

before(async () => {
  if (skip) return;
  world = World.create();
  dir = sandboxReadableDir("moat-exit-codes-"); // the sandbox watches a file here (its /tmp is its own)
  writeFileSync(join(dir, "not-executable"), "#!/bin/sh\necho hi\n");
  chmodSync(join(dir, "not-executable"), 0o644);
  mkdirSync(join(dir, "a-directory"));
});
after(() => {
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test("moat's own failures exit 125: a bad option, no command, an unknown subcommand, a pool with no free slot", { skip }, async () => {
  for (const args of [["run", "--no-such-option", "--", "true"], ["run", "--mtu", "12", "--", "true"], ["run"], ["frobnicate"], []]) {
    const r = await world.moat(args);
    assert.equal(r.code, 125, `moat ${args.join(" ")}: ${r.stderr}`);
  }
  // The only slot of a /30 pool, held by a live process (this one).
  const pool = "10.207.0.0/30";
  const lease = `/run/moat/leases/${poolTag(pool)}-0`;
  mkdirSync("/run/moat/leases", { recursive: true });
  writeFileSync(lease, JSON.stringify({ pid: process.pid, start: processStat(process.pid)!.start, pidns: "", token: "x".repeat(24), pool, slot: 0 }));
  try {
    const r = await world.moat(["run", "--ipv4-pool", pool, "--", "true"]);
    assert.equal(r.code, 125, r.stderr);
    assert.match(r.stderr, /no free sandbox slot in address pool 10\.207\.0\.0\/30/);
  } finally {
    rmSync(lease, { force: true });
  }
});

test("a command not found exits 127, one that cannot be executed 126, otherwise its own status", { skip }, async () => {
  const cases: [string[], number, RegExp?][] = [
    [["no-such-command-here"], 127, /command not found: no-such-command-here/],
    [[join(dir, "no-such-file")], 127, /command not found/],
    [[join(dir, "not-executable")], 126, /is not executable/],
    [[join(dir, "a-directory")], 126, /is a directory/],
    [["sh", "-c", "exit 7"], 7],
    [["sh", "-c", "exit 125"], 125],
    [["sh", "-c", "kill -TERM $$"], 128 + 15],
  ];
  for (const [cmd, code, message] of cases) {
    const r = await world.moat(["run", "--", ...cmd]);
    assert.equal(r.code, code, `${cmd.join(" ")}: ${r.stderr}`);
    if (message) assert.match(r.stderr, message);
  }
});

test("--name names the sandbox: audit events carry it, and a name in use is refused with 125", { skip }, async () => {
  const audit = join(dir, "audit.jsonl");
  const client = `${process.execPath} ${TESTBED_JS}clients.js`;
  const flag = join(dir, "go");
  const holder = world.spawnMoat(["run", "--name", "exit-codes-test", "--net-rule", `deny@${WORLD_IP4}`, "--audit-log", audit, "--",
    "sh", "-c", `${client} udp ${WORLD_IP4} 7 x 2>/dev/null; echo up; while [ ! -e ${flag} ]; do sleep 0.05; done`]);
  let out = "";
  await new Promise<void>((resolve, reject) => {
    holder.stdout!.on("data", (d) => { out += d; if (out.includes("up")) resolve(); });
    holder.once("exit", (c) => reject(new Error(`moat exited ${c}`)));
  });
  for (const vm of [[], ["--vm"]]) {
    const r = await world.moat(["run", ...vm, "--name", "exit-codes-test", "--", "true"]);
    assert.equal(r.code, 125, r.stderr);
    assert.match(r.stderr, /the sandbox name "exit-codes-test" is in use by process \d+/);
  }
  const bad = await world.moat(["run", "--name", "no/slashes", "--", "true"]);
  assert.equal(bad.code, 125);
  assert.match(bad.stderr, /sandbox name "no\/slashes" is not valid/);
  writeFileSync(flag, "");
  assert.equal(await new Promise((r) => holder.once("exit", r)), 0);
  const events = readFileSync(audit, "utf8").trim().split("\n").map((l) => JSON.parse(l) as { sandbox: string });
  assert.ok(events.length >= 1 && events.every((e) => e.sandbox === "exit-codes-test"), JSON.stringify(events));
  const again = await world.moat(["run", "--name", "exit-codes-test", "--", "true"]);
  assert.equal(again.code, 0, `the name is free again once its sandbox is gone: ${again.stderr}`);
});

test("run() in the library: the command's status and output, 127 and 126 said on its stderr, the name given", { skip }, async () => {
  const r = await world.sandboxScript("sandbox-api.js", ["--name", "api-test", "--",
    ...[["sh", "-c", "echo hi"], ["sh", "-c", "exit 3"], ["no-such-command-here"], [join(dir, "not-executable")]].map((c) => JSON.stringify(c))]);
  assert.equal(r.code, 0, r.stderr);
  const lines = r.stdout.trim().split("\n").map((l) => JSON.parse(l) as { status: number; stdout: string; stderr: string; name: string });
  assert.deepEqual(lines.map((l) => l.status), [0, 3, 127, 126]);
  assert.equal(lines[0]!.stdout, "hi\n");
  assert.match(lines[2]!.stderr, /command not found: no-such-command-here/);
  assert.match(lines[3]!.stderr, /is not executable/);
  assert.equal(lines[0]!.name, "api-test");
});
