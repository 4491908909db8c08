// containment.test.ts — a command in a namespace sandbox holds no privilege on the host: its root
// is an unprivileged uid outside, it sees only its own processes, it cannot reach moat's (their
// /proc entries, their namespaces, their signals), the host's filesystem is read-only to it, and
// it dies with moat. Every check is made from inside, as root of the sandbox, the way an attacker
// would try it (issue 19).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, readFileSync, rmSync, writeFileSync, chownSync, statSync } from "node:fs";
import { World, sandboxReadableDir, systemTestSkipReason, hasTool, HOSTS } from "../testbed/world.js";
import { NOBODY } from "../../orchestrator/src/sandbox/containment.js";

const skip = systemTestSkipReason() ?? (hasTool("nsenter", "--version") ? undefined : "nsenter (util-linux) is not installed");
let world: World;
let dir = "";

before(() => {
  if (skip) return;
  world = World.create();
  dir = sandboxReadableDir("moat-containment-");
});
after(() => {
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function run(script: string, args: string[] = []) {
  return world.moat(["run", ...args, "--", "sh", "-c", script]);
}

test("a secret's real value is in no file under /proc and in no output; the placeholder is", { skip }, async () => {
  const value = `sk-contained-${randomBytes(12).toString("hex")}`;
  process.env.CONTAINED_KEY = value; // moat's environment: the sandbox must not find it anywhere
  try {
    // Every readable file of /proc two levels down (every process's environ, cmdline, status...;
    // pagemap, mem and the kernel's images left out: they are sized by the address space).
    const r = await run(`find /proc -maxdepth 2 -type f -readable ! -name pagemap ! -name mem ! -name kcore ! -name kmsg 2>/dev/null |
      while read -r f; do timeout 2 head -c 1048576 "$f" 2>/dev/null | tr '\\0' '\\n'; done; echo "files read"`,
    ["--secret", "API_KEY=CONTAINED_KEY@allowed.test"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /files read\n$/);
    assert.match(r.stdout, /^API_KEY=moat-ph-[a-z0-9]{24}$/m, "the command's own environ was read, with the placeholder");
    assert.ok(!r.stdout.includes(value), "the real value was found under /proc");
    assert.ok(!r.stderr.includes(value), "the real value was in moat's output");
    assert.doesNotMatch(r.stdout, /CONTAINED_KEY/, "moat's environment reached the sandbox");
  } finally {
    delete process.env.CONTAINED_KEY;
  }
});

test("ls /proc shows only the sandbox's processes: PID 1 is the holder, no host process is named", { skip }, async () => {
  const r = await run(`for p in /proc/[0-9]*; do echo "\${p#/proc/} $(cat $p/comm 2>/dev/null)"; done; echo "ppid $PPID";
    cat /proc/${process.pid}/environ >/dev/null 2>&1; echo "read host /proc $?"; kill -0 ${process.pid} 2>/dev/null; echo "signal host $?"; kill -0 1; echo "signal holder $?"`);
  assert.equal(r.code, 0, r.stderr);
  const procs = r.stdout.split("\n").filter((l) => /^\d+ /.test(l)).map((l) => l.split(" "));
  assert.deepEqual(procs[0], ["1", "moat-sandbox"], r.stdout);
  for (const [pid, comm] of procs) assert.ok(["moat-sandbox", "sh", "cat"].includes(comm!), `process ${pid} (${comm}) is visible in the sandbox`);
  assert.ok(procs.length <= 6, r.stdout);
  assert.match(r.stdout, /^ppid 0$/m, "the command's parent is outside its PID namespace");
  assert.match(r.stdout, /^read host \/proc [1-9]/m);
  assert.match(r.stdout, /^signal host [1-9]/m);
  assert.match(r.stdout, /^signal holder 0$/m, "(kill -0 on PID 1 is allowed: a signal it has no handler for is ignored)");
});

test("nsenter into moat's namespaces fails; the command cannot reconfigure or leave its network", { skip }, async () => {
  // moat runs in the test world's host namespace, bound on the host at /run/netns/<host>.
  const r = await run([
    `nsenter --net=/run/netns/${world.host} true`,
    "nsenter --net=/proc/$PPID/ns/net true",
    "nsenter -t 1 -n -m true",
    "nsenter --net=/proc/1/ns/net true",
    `nsenter --net=/proc/$PPID/ns/net curl -sS -m 2 http://${HOSTS.private}/`,
    "ip link set eth0 down",
    "ip addr add 10.9.9.9/32 dev eth0",
    "ip link set eth0 netns 1",
    "ls /run/netns",
  ].map((c, i) => `${c} >/dev/null 2>&1; echo "${i} $?"`).join("\n"));
  assert.equal(r.code, 0, r.stderr);
  const codes = r.stdout.trim().split("\n").map((l) => Number(l.split(" ")[1]));
  assert.equal(codes.length, 9, r.stdout);
  codes.forEach((c, i) => assert.notEqual(c, 0, `attempt ${i} succeeded: ${r.stdout}`));
  const ip = await run("ip -o -4 addr show dev eth0 | wc -l; ip -o link show dev eth0");
  assert.match(ip.stdout, /^1\n\d+: eth0: <[^>]*\bUP\b/, "eth0 is as moat configured it");
});

test("the host's filesystem is read-only: root-owned files and the sandbox uid's own files alike", { skip }, async () => {
  const own = `${dir}/owned-by-nobody`;
  writeFileSync(own, "before\n");
  chownSync(own, NOBODY.uid, NOBODY.gid);
  const before = readFileSync("/etc/hostname", "utf8");
  const r = await run([
    "echo x >> /etc/hostname",
    "touch /usr/moat-was-here",
    "rm -f /etc/netns/*/resolv.conf",
    `echo after > ${own}`,
    "mkdir /var/tmp/moat-was-here",
  ].map((c, i) => `${c} 2>/dev/null; echo "${i} $?"`).join("\n"));
  assert.equal(r.code, 0, r.stderr);
  for (const line of r.stdout.trim().split("\n")) assert.notEqual(line.split(" ")[1], "0", `write succeeded: ${line}`);
  assert.equal(readFileSync("/etc/hostname", "utf8"), before);
  assert.equal(existsSync("/usr/moat-was-here"), false);
  assert.equal(existsSync("/var/tmp/moat-was-here"), false);
  assert.equal(readFileSync(own, "utf8"), "before\n");
});

test("the sandbox's root is nobody on the host by default, the sudo user under sudo, or --user", { skip }, async () => {
  const show = "cat /proc/self/uid_map /proc/self/gid_map; id -u";
  const dflt = await run(show);
  assert.equal(dflt.code, 0, dflt.stderr);
  assert.match(dflt.stdout, /^\s*0\s+65534\s+1\n\s*0\s+65534\s+1\n0\n$/);
  process.env.SUDO_UID = "4321";
  process.env.SUDO_GID = "4322";
  try {
    const sudo = await run(show);
    assert.match(sudo.stdout, /^\s*0\s+4321\s+1\n\s*0\s+4322\s+1\n0\n$/, sudo.stderr);
    const flag = await run(show, ["--user", "2345:3456"]);
    assert.match(flag.stdout, /^\s*0\s+2345\s+1\n\s*0\s+3456\s+1\n0\n$/, flag.stderr);
  } finally {
    delete process.env.SUDO_UID;
    delete process.env.SUDO_GID;
  }
  const root = await run("true", ["--user", "0"]);
  assert.equal(root.code, 125);
  assert.match(root.stderr, /cannot be the host's root/);
});

test("the command has no capability beyond its namespaces: no CAP_SYS_ADMIN, no CAP_NET_ADMIN, no_new_privs; the mounts cannot be undone", { skip }, async () => {
  // Also from a user namespace of its own, where it holds every capability: the mounts it was
  // given come locked, so the host's /proc under the sandbox's stays covered.
  const r = await run(`grep -E '^(CapEff|CapBnd|CapAmb|NoNewPrivs)' /proc/self/status; umount /proc 2>/dev/null; echo "umount $?"
    unshare -Urm sh -c 'umount /proc 2>/dev/null || umount -l /proc 2>/dev/null; echo "nested umount $?"; cat /proc/1/comm'`);
  assert.equal(r.code, 0, r.stderr);
  const field = (k: string) => BigInt(`0x${new RegExp(`^${k}:\\s*([0-9a-f]+)`, "m").exec(r.stdout)![1]}`);
  const eff = field("CapEff");
  assert.equal(eff & (1n << 21n), 0n, "CAP_SYS_ADMIN");
  assert.equal(eff & (1n << 12n), 0n, "CAP_NET_ADMIN");
  assert.equal(eff & (1n << 19n), 0n, "CAP_SYS_PTRACE");
  assert.equal(field("CapBnd"), eff, "the bounding set is the effective set: exec gets nothing more");
  assert.equal(field("CapAmb"), 0n);
  assert.match(r.stdout, /^NoNewPrivs:\s*1$/m);
  assert.match(r.stdout, /^umount [1-9]/m);
  assert.match(r.stdout, /^nested umount [1-9]\d*\nmoat-sandbox$/m);
});

test("/tmp and /run are the sandbox's own: the host's files there are not seen, the sandbox's stay inside", { skip }, async () => {
  const hostFile = `/tmp/moat-host-only-${process.pid}`;
  writeFileSync(hostFile, "host\n");
  try {
    const r = await run(`ls -A /tmp /run; echo inside > /tmp/moat-inside-${process.pid}; cat /tmp/moat-inside-${process.pid}`);
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "/run:\n\n/tmp:\ninside\n");
    assert.equal(existsSync(`/tmp/moat-inside-${process.pid}`), false);
  } finally {
    rmSync(hostFile, { force: true });
  }
});

test("killed outright (SIGKILL), moat takes the sandbox's processes with it", { skip }, async () => {
  const marker = `${86000 + (process.pid % 400)}.5`; // a sleep no one else runs
  const p = world.spawnMoat(["run", "--", "sh", "-c", `sleep ${marker} & sleep ${marker}`]);
  const running = () => {
    try {
      return execFileSync("pgrep", ["-f", `^sleep ${marker}$`], { encoding: "utf8" }).trim().split("\n").length;
    } catch {
      return 0;
    }
  };
  for (let i = 0; i < 100 && running() < 2; i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(running(), 2, "the command did not start");
  const uid = statSync(`/proc/${execFileSync("pgrep", ["-f", `^sleep ${marker}$`], { encoding: "utf8" }).split("\n")[0]}`).uid;
  assert.equal(uid, NOBODY.uid, "the command runs as nobody on the host");
  p.kill("SIGKILL");
  for (let i = 0; i < 100 && running() > 0; i++) await new Promise((r) => setTimeout(r, 50));
  assert.equal(running(), 0, "the sandbox's processes outlived moat");
  const c = await world.moat(["cleanup"]);
  assert.equal(c.code, 0, c.stderr);
});

test("the command's environment is clean: PATH, HOME, TERM, LANG; moat's other variables only when passed with -e", { skip }, async () => {
  process.env.MOAT_TEST_OUTER = "from-moat";
  process.env.MOAT_TEST_OTHER = "also-from-moat";
  const saved = { TERM: process.env.TERM, LANG: process.env.LANG };
  process.env.TERM = "xterm-test";
  process.env.LANG = "C.UTF-8";
  try {
    const bare = await run("env");
    assert.equal(bare.code, 0, bare.stderr);
    const names = bare.stdout.trim().split("\n").map((l) => l.split("=")[0]!).sort();
    assert.deepEqual(names.filter((n) => !["PWD", "SHLVL", "_", "OLDPWD"].includes(n)), ["HOME", "LANG", "PATH", "TERM"], bare.stdout);
    assert.match(bare.stdout, /^TERM=xterm-test$/m);
    assert.match(bare.stdout, new RegExp(`^PATH=${process.env.PATH!.replace(/[.*+?^${}()|[\]\\]/g, "\\$&")}$`, "m"));

    const passed = await run("env", ["-e", "MOAT_TEST_OUTER", "-e", "NEW_ONE=a=b c", "-e", "MOAT_TEST_UNSET_HERE", "--env", "HOME=/nowhere"]);
    assert.equal(passed.code, 0, passed.stderr);
    assert.match(passed.stdout, /^MOAT_TEST_OUTER=from-moat$/m);
    assert.match(passed.stdout, /^NEW_ONE=a=b c$/m);
    assert.match(passed.stdout, /^HOME=\/nowhere$/m);
    assert.doesNotMatch(passed.stdout, /MOAT_TEST_OTHER|MOAT_TEST_UNSET_HERE/);
  } finally {
    for (const k of ["MOAT_TEST_OUTER", "MOAT_TEST_OTHER"]) delete process.env[k];
    for (const [k, v] of Object.entries(saved)) if (v === undefined) delete process.env[k]; else process.env[k] = v;
  }
});

test("--env-file gives NAME=VALUE and NAME lines, skips comments; -e wins; a secret's value is never passed", { skip }, async () => {
  const file = `${dir}/vars.env`;
  writeFileSync(file, "# a comment\n\nFROM_FILE=one two\n  INDENTED=\"quoted\"\nMOAT_TEST_FROM_ENV\nOVERRIDDEN=file\n");
  const value = `sk-contained-${randomBytes(12).toString("hex")}`;
  process.env.MOAT_TEST_FROM_ENV = "env value";
  process.env.CONTAINED_KEY = value;
  try {
    const r = await run("env", ["--env-file", file, "-e", "OVERRIDDEN=flag", "-e", "CONTAINED_KEY", "-e", "COPY=" + value, "--secret", "API_KEY=CONTAINED_KEY@allowed.test"]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^FROM_FILE=one two$/m);
    assert.match(r.stdout, /^INDENTED="quoted"$/m);
    assert.match(r.stdout, /^MOAT_TEST_FROM_ENV=env value$/m);
    assert.match(r.stdout, /^OVERRIDDEN=flag$/m);
    assert.match(r.stdout, /^API_KEY=moat-ph-/m);
    assert.ok(!r.stdout.includes(value), "a variable holding the secret's value reached the command");
    const bad = await run("true", ["--env-file", `${dir}/no-such-file`]);
    assert.equal(bad.code, 125);
    assert.match(bad.stderr, /--env-file .*no-such-file: cannot read it: ENOENT/);
  } finally {
    delete process.env.MOAT_TEST_FROM_ENV;
    delete process.env.CONTAINED_KEY;
  }
});
