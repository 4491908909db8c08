// rootless.test.ts — `moat run` by an ordinary user (nobody), root nowhere: moat re-runs itself in
// a user namespace of the user's own (sandbox/rootless.ts) and serves the same network — ping,
// UDP and TCP to the world, policy, DNS, TLS interception and secrets — with the same containment,
// and a VM boots. When the host stands in the way (the TAP device not openable, another uid
// asked for), the error says what to change. moat runs in the test world's host namespace as
// always; /dev/net/tun is bound over in a mount namespace of each run alone (World.moatAsUser),
// so the host's own device keeps its mode.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, readFileSync, readdirSync, rmSync, mkdtempSync, cpSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { World, WORLD_IP4, HOSTS, TESTBED_JS, sandboxReadableDir, systemTestSkipReason, hasTool } from "../testbed/world.js";
import { NOBODY } from "../../orchestrator/src/sandbox/containment.js";
import { makeCa, makeServerCert } from "../testbed/test-pki.js";
import { rootlessProblem, REAL_HOST } from "../../orchestrator/src/sandbox/rootless.js";
import { vmCacheDir } from "../../orchestrator/src/vm/image.js";

// Unprivileged user namespaces must be allowed here (the TAP device is arranged per run).
const userns = rootlessProblem({ ...REAL_HOST, tun: () => ({ openable: true, mode: "0666" }) });
const skip = systemTestSkipReason() ?? (userns ? `unprivileged user namespaces are not allowed here: ${userns.message}` : undefined)
  ?? (hasTool("setpriv", "--version") && hasTool("curl", "--version") && hasTool("dig", "-v") && hasTool("openssl", "version") ? undefined : "setpriv, curl, dig or openssl is missing");
let world: World;
let dir = "";
let record = "";
const VALUE = `sk-rootless-${randomBytes(12).toString("hex")}`;
const gw = `$(ip route | sed -n "s/default via \\([0-9.]*\\).*/\\1/p")`;

before(async () => {
  if (skip) return;
  dir = sandboxReadableDir("moat-rootless-");
  record = `${dir}/record.jsonl`;
  makeCa(dir, "ca", "world test CA");
  makeServerCert(dir, "ca", ["DNS:allowed.test", `IP:${WORLD_IP4}`]);
  world = World.create();
  world.startDnsServer();
  await world.startServer("udp-echo", 7);
  await world.startProcess([process.execPath, `${TESTBED_JS}servers.js`, "https", "443", `${dir}/srv.pem`, `${dir}/srv.key`, record]);
});
after(() => {
  world?.teardown();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const run = (args: string[], script: string, env: Record<string, string> = {}) => world.moatAsUser(["run", ...args, "--", "sh", "-c", script], { env });

test("as an ordinary user: ping the gateway, UDP and TCP (HTTPS) to a world host, and no process of the run is root on the host", { skip }, async () => {
  const marker = `moat-rootless-${process.pid}`;
  const r = run(["--stats"], `ping -c1 -W2 ${gw} | grep -c '1 received'; ${process.execPath} ${TESTBED_JS}clients.js udp ${WORLD_IP4} 7 hello-rootless;
    curl -sSk https://${WORLD_IP4}/hello; : ${marker}; sleep 2`);
  // While it sleeps: every process whose command line names the run (both moats, the command's
  // process) and the sandbox's own, on the host, are nobody's.
  let seen: { pid: string; uid: number }[] = [];
  for (let i = 0; i < 100 && seen.length < 4; i++) {
    await new Promise((res) => setTimeout(res, 50));
    seen = readdirSync("/proc").filter((p) => /^\d+$/.test(p)).flatMap((pid) => {
      try {
        const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
        if (!cmd.includes(marker) || cmd.includes("readdirSync")) return [];
        return [{ pid, uid: Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) }];
      } catch {
        return [];
      }
    });
  }
  const done = await r;
  assert.equal(done.code, 0, done.stderr);
  assert.match(done.stdout, /^1\nhello-rootless\nhello over tls \(h2\)\n$/);
  assert.ok(seen.length >= 4, `the run's processes were not seen: ${JSON.stringify(seen)}`);
  for (const p of seen) assert.equal(p.uid, NOBODY.uid, `process ${p.pid} is uid ${p.uid} on the host`);
});

test("as an ordinary user: a denied address stays denied", { skip }, async () => {
  const r = await run(["--stats", "--deny-response", "reject"], `curl -sS -m 3 http://${HOSTS.private}:9001/ 2>&1; echo "exit=$?"; curl -sS -m 3 http://${HOSTS.metadata}/ 2>&1; echo "exit=$?"`);
  assert.equal(r.code, 0, r.stderr);
  assert.doesNotMatch(r.stdout, /exit=0/);
  assert.ok((World.stats(r.stderr).DROP_POLICY ?? 0) >= 2, r.stderr);
});

test("as an ordinary user: names resolve through moat's DNS, a blocked name is refused", { skip }, async () => {
  const r = await run(["--dns-nameserver", WORLD_IP4, "--dns-block", "blocked.test"], "dig +short allowed.test; dig blocked.test | grep -o 'status: [A-Z]*'");
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, `${WORLD_IP4}\nstatus: REFUSED\n`);
});

test("as an ordinary user: TLS is intercepted with moat's CA and a secret reaches its host, the command seeing a placeholder", { skip }, async () => {
  const before = existsSync(record) ? readFileSync(record, "utf8").split("\n").filter(Boolean).length : 0;
  const r = await run(["--dns-nameserver", WORLD_IP4, "--tls-upstream-ca", `${dir}/ca.pem`, "--secret", "API_KEY=REAL_KEY@allowed.test"],
    `curl -sS -v -H "Authorization: Bearer $API_KEY" https://allowed.test/rootless 2>&1 | grep -E '^\\* +issuer:'; echo "sees $API_KEY"`, { REAL_KEY: VALUE });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /issuer: O=moat; CN=moat interception CA/);
  assert.match(r.stdout, /^sees moat-ph-[a-z0-9]{24}$/m);
  assert.ok(!r.stdout.includes(VALUE));
  const seen = readFileSync(record, "utf8").split("\n").filter(Boolean).slice(before).map((l) => JSON.parse(l) as { url: string; headers: Record<string, string> });
  assert.equal(seen.find((x) => x.url === "/rootless")?.headers.authorization, `Bearer ${VALUE}`);
});

test("as an ordinary user, contained as with root: no secret in /proc, only the sandbox's processes, no way into moat's namespaces, a read-only host", { skip }, async () => {
  const r = await run(["--secret", "API_KEY=REAL_KEY@allowed.test"], `
    cat /proc/[0-9]*/environ /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' '\\n' | grep -c "^API_KEY=moat-ph-"
    ls /proc | grep -c '^[0-9]'
    cat /proc/1/comm
    nsenter --net=/run/netns/${world.host} true 2>/dev/null; echo "nsenter $?"
    nsenter -t 1 -n true 2>/dev/null; echo "nsenter holder $?"
    echo x >> /etc/hostname 2>/dev/null; echo "write $?"`, { REAL_KEY: VALUE });
  assert.equal(r.code, 0, r.stderr);
  assert.ok(!(r.stdout + r.stderr).includes(VALUE));
  const [placeholders, procs, pid1, ns, nsHolder, write] = r.stdout.trim().split("\n");
  assert.ok(Number(placeholders) >= 1, r.stdout);
  assert.ok(Number(procs) <= 6, `${procs} processes visible`);
  assert.equal(pid1, "moat-sandbox");
  assert.notEqual(ns, "nsenter 0");
  assert.notEqual(nsHolder, "nsenter holder 0");
  assert.notEqual(write, "write 0");
});

test("as an ordinary user, a /dev/net/tun only root can open is an error that says what to change", { skip }, async () => {
  const r = await world.moatAsUser(["run", "--", "true"], { tunMode: "0600" });
  assert.equal(r.code, 125);
  assert.match(r.stderr, /\/dev\/net\/tun cannot be opened by you \(mode 0600 here\)/);
  assert.match(r.stderr, /hint: as root: chmod 0666 \/dev\/net\/tun \(Debian's default/);
  const other = await run(["--user", "1000"], "true");
  assert.equal(other.code, 125);
  assert.match(other.stderr, new RegExp(`without root the sandbox's root is you \\(uid ${NOBODY.uid}`));
});

const vmSkip = skip ?? (hasTool("qemu-system-x86_64", "--version") ? undefined : "qemu-system-x86_64 is not installed");
test("as an ordinary user, a VM sandbox boots and its guest pings the gateway", { skip: vmSkip, timeout: 600000 }, async () => {
  // The user's own image cache: a copy of this user's (root's), when there is one.
  const cache = mkdtempSync("/var/tmp/moat-rootless-cache-");
  try {
    if (existsSync(vmCacheDir())) cpSync(vmCacheDir(), `${cache}/vm`, { recursive: true });
    execFileSync("chown", ["-R", `${NOBODY.uid}:${NOBODY.gid}`, cache]);
    const r = await world.moatAsUser(["run", "--vm", "--", "sh", "-c", `ping -c1 -W3 ${gw} >/dev/null && echo pong`], { env: { MOAT_CACHE_DIR: cache }, timeoutMs: 600000 });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "pong\n");
  } finally {
    rmSync(cache, { recursive: true, force: true });
  }
});
