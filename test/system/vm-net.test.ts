// vm-net.test.ts — microVM sandboxes on the network (issue 13): `moat run --vm` boots a QEMU guest
// whose NIC is served by moat over vhost-user (and, once, the stream link), in the test world.
//
// QEMU runs under TCG here (DESIGN §3), so boots are few: one guest runs a script of checks whose
// results are read back from its stdout by marker, and each test below asserts one of them. The
// checks are the namespace sandbox's (policy, DNS, data integrity), seen from a real guest kernel
// that configured itself by DHCP.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { World, WORLD_IP4, WORLD_IP6, HOSTS, systemTestSkipReason, hasTool, type RunResult } from "../testbed/world.js";
import { streamHash } from "../testbed/stream-data.js";
import { existsSync } from "node:fs";

const skip = systemTestSkipReason() ?? (hasTool("qemu-system-x86_64", "--version") ? undefined : "qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)");
const MIB64 = 64 << 20;
let world: World;

/** `moat run --vm ARGS -- sh -c SCRIPT`, whose lines "@@ NAME" start the output of check NAME. */
interface Checked { run: RunResult; out: Map<string, string> }
async function vmScript(args: string[], checks: [string, string][], exit = 0): Promise<Checked> {
  const script = checks.map(([name, cmd]) => `echo "@@ ${name}"; { ${cmd} ; } 2>&1; echo "@@ ${name} status $?"`).join("\n") + `\nexit ${exit}`;
  const run = await world.moat(["run", "--vm", ...args, "--", "sh", "-c", script], 600000);
  const out = new Map<string, string>();
  for (const part of run.stdout.split(/^@@ /m).slice(1)) {
    const nl = part.indexOf("\n");
    const name = part.slice(0, nl);
    if (!name.includes(" status ")) out.set(name, (out.get(name) ?? "") + part.slice(nl + 1));
    else { const [n, , s] = name.split(" "); out.set(`${n}#status`, s!); }
  }
  return { run, out };
}

let vhost: Checked;
let stream: Checked;

before(async () => {
  if (skip) return;
  // The guest image first, here, where the package archive is reachable: moat itself runs in the
  // test world, which has no route off this machine (a fresh machine has no image cached yet).
  const { ensureVmImage } = await import("../../orchestrator/src/vm/image.js");
  await ensureVmImage({ onProgress: () => {} });
  world = World.create();
  world.startDnsServer();
  await world.startServer("tcp-source", 9001);
  await world.startServer("tcp-sink", 9002);
  process.env.MOAT_VM_TEST_TOKEN = "vm-test-secret-value-0123456789";
  process.env.MOAT_VM_NOT_PASSED = "moat's own";
  vhost = await vmScript(["--dns-nameserver", WORLD_IP4, "--dns-block", "blocked.test", "--deny-response", "reject", "--stats",
    "--tls-intercept", "--secret", "MOAT_VM_TEST_TOKEN@api.test", "-e", "MOAT_VM_PASSED=yes"], [
    ["addr", "ip -4 addr show dev eth0; ip link show dev eth0; ip route; cat /etc/resolv.conf"],
    ["ping", "ping -c 2 -W 3 $(ip route | sed -n 's/default via \\([0-9.]*\\).*/\\1/p')"],
    ["ipv6", `ip -6 addr show dev eth0 scope global; ping -6 -c 1 -W 3 fe80::1%eth0 && echo ${1 << 20} | nc ${WORLD_IP6} 9001 | sha256sum`],
    ["dns", "nslookup allowed.test"],
    ["blocked", "nslookup blocked.test"],
    ["download", `echo ${MIB64} | nc ${WORLD_IP4} 9001 | sha256sum`],
    ["upload", `head -c ${MIB64} /dev/urandom > /tmp/up && sha256sum /tmp/up && nc ${WORLD_IP4} 9002 < /tmp/up; rm -f /tmp/up`],
    // The NIC's negotiated features (bit 0 first): CSUM and GUEST_CSUM, after 64 MiB each way.
    ["offload", "for d in /sys/bus/virtio/devices/*; do [ \"$(cat $d/device)\" = 0x0001 ] && echo features=$(cut -c1-2 $d/features); done; awk '/^Tcp:/ {n++} n == 2 {print \"tcp-csum-errors=\" $NF; exit}' /proc/net/snmp"],
    ["private", `echo x | nc -w 3 ${HOSTS.private} 9001`],
    ["metadata", `echo x | nc -w 3 ${HOSTS.metadata} 80`],
    ["stdout", "echo to-stdout; echo to-stderr >&2"],
    ["trust", "head -1 /etc/ssl/certs/ca-certificates.crt; echo SSL_CERT_FILE=$SSL_CERT_FILE; grep -c BEGIN /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/moat-interception-ca.pem"],
    ["secret", "echo TOKEN=$MOAT_VM_TEST_TOKEN; env | grep -c vm-test-secret-value"],
    ["env", "env | cut -d= -f1 | sort | tr '\\n' ' '; echo; echo PASSED=$MOAT_VM_PASSED"],
  ], 3);
  stream = await vmScript(["--vm-link", "stream", "--dns-nameserver", WORLD_IP4], [
    ["ping", "ping -c 1 -W 3 $(ip route | sed -n 's/default via \\([0-9.]*\\).*/\\1/p')"],
    ["dns", "nslookup allowed.test"],
    ["download", `echo ${8 << 20} | nc ${WORLD_IP4} 9001 | sha256sum`],
  ]);
});
after(() => world?.teardown());

const ok = (c: Checked, name: string) => {
  assert.ok(c.out.has(name), `check ${name} did not run:\n${c.run.stdout}\n${c.run.stderr}`);
  return c.out.get(name)!;
};

test("a VM boots, its exit status and output come back (vhost-user link)", { skip }, () => {
  assert.equal(vhost.run.code, 3, vhost.run.stderr);
  assert.match(vhost.run.stderr, /moat: VM up in [\d.]+ s \((kvm|tcg)/);
  assert.match(ok(vhost, "stdout"), /to-stdout\nto-stderr/);
});

test("the guest takes its address, route, MTU and resolver by DHCP from the gateway", { skip }, () => {
  const out = ok(vhost, "addr");
  assert.match(out, /inet 172\.30\.\d+\.\d+\/30/);
  assert.match(out, /mtu 65520/);
  assert.match(out, /default via 172\.30\.\d+\.\d+ dev eth0/);
  assert.match(out, /nameserver 172\.30\.\d+\.\d+/);
});

test("the guest pings the gateway", { skip }, () => {
  assert.equal(vhost.out.get("ping#status"), "0", ok(vhost, "ping"));
  assert.match(ok(vhost, "ping"), /2 packets received/);
});

test("the guest has its IPv6 address and route, pings the gateway and fetches over IPv6", { skip }, () => {
  const out = ok(vhost, "ipv6");
  assert.match(out, /inet6 fd6d:6f61:7400:[0-9a-f:]*::?2\/64/);
  assert.equal((out.match(/inet6 /g) ?? []).length, 1, "only moat's address: none made up from the router advert");
  assert.match(out, /1 packets received/);
  assert.match(out, new RegExp(streamHash(1 << 20)));
});

test("names resolve through moat's DNS; a blocked name is refused", { skip }, () => {
  assert.match(ok(vhost, "dns"), new RegExp(`Address: ${WORLD_IP4.replace(/\./g, "\\.")}`));
  assert.notEqual(vhost.out.get("blocked#status"), "0");
  assert.match(ok(vhost, "blocked"), /REFUSED|can't resolve|NXDOMAIN/i);
  assert.doesNotMatch(ok(vhost, "blocked"), new RegExp(`Address: ${WORLD_IP4.replace(/\./g, "\\.")}`));
});

test("64 MiB each way arrive intact", { skip }, () => {
  assert.match(ok(vhost, "download"), new RegExp(streamHash(MIB64)));
  const up = ok(vhost, "upload");
  const sent = /^([0-9a-f]{64}) {2}\/tmp\/up$/m.exec(up)?.[1];
  assert.ok(sent, up);
  assert.equal(up.match(new RegExp(sent!, "g"))?.length, 2, `the sink's hash must equal the guest's:\n${up}`);
});

test("the VM's NIC leaves checksums to moat and takes them from moat (CSUM, GUEST_CSUM), with no checksum errors", { skip }, () => {
  const out = ok(vhost, "offload");
  assert.match(out, /^features=11$/m, out);
  assert.match(out, /^tcp-csum-errors=0$/m, out);
});

test("public-only stops private and metadata addresses", { skip }, () => {
  assert.notEqual(vhost.out.get("private#status"), "0", ok(vhost, "private"));
  assert.notEqual(vhost.out.get("metadata#status"), "0", ok(vhost, "metadata"));
  const stats = World.stats(vhost.run.stderr);
  assert.ok((stats.DROP_POLICY ?? 0) >= 2, JSON.stringify(stats));
});

test("TLS interception and secrets work in a VM: the guest trusts moat's CA, the command sees a placeholder", { skip }, () => {
  assert.match(ok(vhost, "trust"), /-----BEGIN CERTIFICATE-----\nSSL_CERT_FILE=\/etc\/ssl\/certs\/ca-certificates\.crt/);
  // The bundle: the distribution's CA set and moat's CA (where the host has the set); moat's CA alone in its file.
  const count = (file: string) => Number(new RegExp(`${file}:(\\d+)`).exec(ok(vhost, "trust"))?.[1]);
  assert.ok(count("ca-certificates.crt") > (existsSync("/usr/share/ca-certificates/mozilla") ? 1 : 0), ok(vhost, "trust"));
  assert.equal(count("moat-interception-ca.pem"), 1);
  assert.match(ok(vhost, "secret"), /TOKEN=moat-ph-[A-Za-z0-9]+\n0\n/, "the value is nowhere in the guest's environment");
});

test("a VM's command gets a clean environment: the guest's PATH and HOME, moat's own variables, and what -e passed", { skip }, () => {
  const [names, passed] = ok(vhost, "env").trim().split("\n");
  const expected = ["CURL_CA_BUNDLE", "HOME", "MOAT_VM_PASSED", "MOAT_VM_TEST_TOKEN", "NODE_EXTRA_CA_CERTS", "PATH", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"];
  assert.deepEqual(names!.trim().split(" ").filter((n) => !["PWD", "SHLVL", "TERM", "LANG"].includes(n)), expected);
  assert.equal(passed, "PASSED=yes");
});

test("the stream link serves a VM too: ping, DNS, 8 MiB", { skip }, () => {
  assert.equal(stream.run.code, 0, stream.run.stderr);
  assert.equal(stream.out.get("ping#status"), "0", ok(stream, "ping"));
  assert.match(ok(stream, "dns"), new RegExp(`Address: ${WORLD_IP4.replace(/\./g, "\\.")}`));
  assert.match(ok(stream, "download"), new RegExp(streamHash(8 << 20)));
});

test("--net none: a VM with no NIC, whose commands still run", { skip }, async () => {
  const r = await world.moat(["run", "--vm", "--net", "none", "--", "sh", "-c", "ls /sys/class/net; echo done"], 300000);
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout, "lo\ndone\n");
});

test("moat serve --vhost-user: a QEMU the caller runs is served, and a second one after it (reconnect)", { skip }, async () => {
  const { ensureVmImage } = await import("../../orchestrator/src/vm/image.js");
  const { startVm } = await import("../../orchestrator/src/vm/qemu.js");
  const { PassThrough } = await import("node:stream");
  const { mkdtempSync, rmSync } = await import("node:fs");
  const dir = mkdtempSync("/tmp/moat-embed-");
  const sock = `${dir}/vm.sock`;
  const serve = world.spawnMoat(["serve", "--vhost-user", sock, "--dns-nameserver", WORLD_IP4, "--stats"]);
  let stderr = "";
  serve.stderr!.on("data", (d) => { stderr += d; });
  const exited = new Promise<number | null>((r) => serve.once("exit", (code) => r(code)));
  try {
    const start = Date.now();
    while (!/serving vhost-user/.test(stderr) && Date.now() - start < 20000) await new Promise((r) => setTimeout(r, 50));
    assert.match(stderr, /moat: serving vhost-user /, stderr);
    const gw = /gateway (172\.30\.\d+\.\d+)/.exec(stderr)![1]!;
    const image = await ensureVmImage({ onProgress: () => {} });
    // The caller's own QEMU: its MAC is its choice (moat learns it), its memory a shared memfd.
    const netdev = ["-chardev", `socket,id=c0,path=${sock}`, "-netdev", "vhost-user,id=n0,chardev=c0", "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:aa:bb:01,vectors=0"];
    for (const round of [1, 2]) {
      const vm = await startVm({ image, netdev });
      try {
        await vm.ready;
        let out = "";
        const sink = new PassThrough();
        sink.on("data", (d) => { out += d; });
        const code = await vm.exec(["sh", "-c", `ping -c 1 -W 3 ${gw} >/dev/null && echo ping-ok; nslookup allowed.test; echo ${4 << 20} | nc ${WORLD_IP4} 9001 | sha256sum`], { stdout: sink, stderr: sink });
        assert.equal(code, 0, out);
        assert.match(out, /ping-ok/, `round ${round}: ${out}`);
        assert.match(out, new RegExp(`Address: ${WORLD_IP4.replace(/\./g, "\\.")}`), `round ${round}: ${out}`);
        assert.match(out, new RegExp(streamHash(4 << 20)), `round ${round}: ${out}`);
      } finally {
        await vm.kill();
      }
    }
    serve.kill("SIGTERM");
    assert.equal(await exited, 0, stderr);
    assert.match(stderr, /"LINK_PEERS":2/, "two front-ends connected, one after the other");
  } finally {
    serve.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
});

test("block-and-terminate: a VM that sends a secret's placeholder away is killed at once, moat exits 125", { skip }, async () => {
  process.env.MOAT_VM_TEST_TOKEN = "vm-test-secret-value-0123456789";
  const start = Date.now();
  const r = await world.moat(["run", "--vm", "--dns-nameserver", WORLD_IP4, "--secret", "MOAT_VM_TEST_TOKEN@api.test", "--secret-violation", "block-and-terminate", "--",
    "sh", "-c", "nslookup $MOAT_VM_TEST_TOKEN.allowed.test; sleep 30; echo still-running"], 300000);
  assert.equal(r.code, 125, r.stderr);
  assert.match(r.stderr, /sandbox terminated: secret MOAT_VM_TEST_TOKEN's placeholder was sent to DNS/);
  assert.doesNotMatch(r.stdout, /still-running/);
  assert.ok(Date.now() - start < 25000, "the guest was not left to finish its sleep");
});
